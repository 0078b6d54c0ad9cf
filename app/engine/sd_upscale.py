"""SD upscale (issue #24), A1111's img2img script ``scripts/sd_upscale.py``:
upscale the init image by ``scale_factor`` with an upscaler, cut it into
overlapping tiles of the request's width x height, run img2img on every tile,
and put the tiles back with the overlaps blended (A1111's
``images.split_grid``/``combine_grid``: a linear ramp across each overlap).

Seeds as A1111's: the tiles run in batches of ``batch_size``; batch k starts
at seed + k (A1111 sets ``p.seed = processed.seed + 1`` after each batch), and
image j of a batch adds j. Each of ``num_images`` results (A1111's n_iter)
starts at seed + n. The infotext is the first tile's, with A1111's
``SD upscale overlap`` and ``SD upscale upscaler``, for every result.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image

from app.engine.base import MAX_SEED, GenerationResult, Limits, StepInfo, ValidationError, floor_size

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.engine.types import GenerationRequest

SD_UPSCALE_DEFAULTS: dict[str, Any] = {"overlap": 64, "upscaler": "Lanczos", "scale_factor": 2, "batch_size": 1}
MAX_OVERLAP = 256  # A1111's slider
MAX_SCALE = 4


@dataclass
class Grid:
    """A1111's ``images.Grid``: rows of (y, height, [(x, width, tile)])."""

    tiles: list = field(default_factory=list)
    tile_w: int = 512
    tile_h: int = 512
    image_w: int = 0
    image_h: int = 0
    overlap: int = 0


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Grid:
    """Tiles spread evenly so that neighbours overlap by at least ``overlap`` and the last
    one ends at the image's edge (A1111's split_grid)."""
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        cells = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            cells.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, cells])
    return grid


def _ramp(width: int, height: int, horizontal: bool) -> Image.Image:
    """The blend mask of an overlap: 0 to 255 across it (A1111's ``arange(overlap) * 255 / overlap``)."""
    steps = width if horizontal else height
    line = bytes(int(i * 255 / steps) for i in range(steps))
    strip = Image.frombytes("L", (steps, 1) if horizontal else (1, steps), line)
    return strip.resize((width, height), Image.Resampling.NEAREST)


def combine_grid(grid: Grid) -> Image.Image:
    """The tiles pasted back: each tile's overlap with its left (then upper) neighbour blended over a ramp."""
    o = grid.overlap
    out = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or o == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, o, h)), (x, 0), mask=_ramp(o, h, horizontal=True))
            line.paste(tile.crop((o, 0, w, h)), (x + o, 0))
        if y == 0 or o == 0:
            out.paste(line, (0, y))
            continue
        out.paste(line.crop((0, 0, grid.image_w, o)), (0, y), mask=_ramp(grid.image_w, o, horizontal=False))
        out.paste(line.crop((0, o, grid.image_w, h)), (0, y + o))
    return out


def settings(request: "GenerationRequest") -> dict:
    return {**SD_UPSCALE_DEFAULTS, **(request.sd_upscale or {})}


def check(request: GenerationRequest, limits: Limits) -> None:
    """The script's settings (its upscaler made canonical) and what it cannot run with; None: no script."""
    from app.engine.extras import check_upscaler
    from app.engine.upscale import upscale_size

    if request.sd_upscale is None:
        return
    if not isinstance(request.sd_upscale, dict):
        raise ValidationError("sd_upscale", request.sd_upscale,
                              'must be an object: {"overlap": 64, "upscaler": "Lanczos", "scale_factor": 2}')
    for key in request.sd_upscale:
        if key not in SD_UPSCALE_DEFAULTS:
            raise ValidationError(f"sd_upscale.{key}", request.sd_upscale[key],
                                  "unknown field; the fields are " + ", ".join(SD_UPSCALE_DEFAULTS))
    s = settings(request)
    if request.init_image is None:
        raise ValidationError("sd_upscale", s, "is an img2img script: send an init image")
    for name, on in (("mask", request.mask is not None), ("outpaint", bool(request.outpaint)),
                     ("enable_hr", request.enable_hr)):
        if on:
            raise ValidationError(name, getattr(request, name) if name != "mask" else "mask",
                                  "cannot be combined with SD upscale")
    request.sd_upscale["upscaler"] = s["upscaler"] = check_upscaler("sd_upscale.upscaler", s["upscaler"])
    factor, overlap, batch = s["scale_factor"], s["overlap"], s["batch_size"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor <= MAX_SCALE:
        raise ValidationError("sd_upscale.scale_factor", factor, f"must be between 1 and {MAX_SCALE}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= limits.max_images:
        raise ValidationError("sd_upscale.batch_size", batch, f"must be between 1 and {limits.max_images}")
    size, _ = upscale_size(request.init_image.size, factor, None, None, True, limits)
    tile_w, tile_h = tile_size(request, size)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= MAX_OVERLAP:
        raise ValidationError("sd_upscale.overlap", overlap, f"must be between 0 and {MAX_OVERLAP} pixels")
    if overlap >= min(tile_w, tile_h):
        raise ValidationError("sd_upscale.overlap", overlap, f"must be less than the tile size ({tile_w}x{tile_h})")


def tile_size(request: "GenerationRequest", upscaled: tuple[int, int]) -> tuple[int, int]:
    """The request's width x height, at most the upscaled image's (A1111 would crop outside it)."""
    w, h = upscaled
    return (min(request.width or floor_size(w), floor_size(w)), min(request.height or floor_size(h), floor_size(h)))


def run_sd_upscale(engine: "Engine", request: "GenerationRequest", on_step: Callable[[StepInfo], None] | None,
                   cancel: threading.Event | None) -> "GenerationResult":
    """``request``: validated, with its seed drawn. Each tile is one ``engine.generate`` img2img run."""
    from app.engine.base import GenerationCancelled
    from app.engine.upscale import upscale

    started = time.perf_counter()
    s = settings(request)
    image = request.init_image.convert("RGB")
    if s["upscaler"] != "None":
        image = upscale(image, scale=s["scale_factor"], upscaler=s["upscaler"], limits=engine.limits)
    tile_w, tile_h = tile_size(request, image.size)
    assert request.seed is not None
    results: list[Image.Image] = []
    texts: list[str] = []
    runs = request.num_images
    tiles_per_run = sum(len(row) for _, _, row in split_grid(image, tile_w, tile_h, s["overlap"]).tiles)
    done = {"steps": 0, "total": 0, "tile": 0}  # steps of the finished tiles, of all, of one tile

    def step(info: StepInfo) -> None:
        done["tile"] = info.total
        if not done["total"]:  # known from the first tile's first step: every tile runs alike
            done["total"] = info.total * tiles_per_run * runs
        if on_step is not None:
            at = done["steps"] + info.step
            on_step(StepInfo(at, max(done["total"], at), info.latents))

    for n in range(runs):
        grid = split_grid(image, tile_w, tile_h, s["overlap"])
        cells = [cell for _, _, row in grid.tiles for cell in row]
        for i, cell in enumerate(cells):
            batch, j = divmod(i, s["batch_size"])
            tile_request = replace(
                request, init_image=cell[2], width=tile_w, height=tile_h, num_images=1, sd_upscale=None,
                seed=(request.seed + n + batch + j) % (MAX_SEED + 1),
                subseed=None if request.subseed is None else (request.subseed + j) % (MAX_SEED + 1))
            try:
                tile = engine.generate(tile_request, on_step=step, cancel=cancel)
            except GenerationCancelled as exc:
                raise GenerationCancelled(done["steps"] + exc.step, done["total"] or exc.total) from None
            done["steps"] += done["tile"]
            cell[2] = tile.images[0]
            if not texts:
                texts.append(f"{tile.infotexts[0]}, SD upscale overlap: {s['overlap']}, "
                             f"SD upscale upscaler: {s['upscaler']}")
        results.append(combine_grid(grid))
    return GenerationResult(images=results, seeds=[(request.seed + n) % (MAX_SEED + 1) for n in range(runs)],
                            infotexts=texts * runs, request=request, model=engine.model_name,
                            width=image.width, height=image.height, seconds=time.perf_counter() - started)
