"""Running a model upscaler: load (download first for a built-in), then the
model over the image in tiles.

Tiles (A1111's "Tile size" and "Tile overlap" for ESRGAN-family upscalers):
the image is cut into ``tile`` x ``tile`` squares and each is upscaled with
``overlap`` pixels of its neighbours around it as context, of which only the
square's own part is kept. A convolutional model sees the same pixels it
would see in one pass wherever its reach is within the overlap, so tiled and
untiled results match and there are no seams to blend away, while memory stays
that of one tile (a 4x upscale of a 768 image fits a T4 beside the SD model).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from app.engine.base import ValidationError
from app.engine.upscalers import download, registry
from app.models.loading import ModelLoadError

Progress = Callable[[int, int], None]  # (tiles done, tiles in this pass)

CACHE_SIZE = 2
MAX_PASSES = 3  # A1111 runs the model at most three times to reach the size asked (a 1x model once)
_tiles = {"tile": 192, "overlap": 16}
_cache: OrderedDict[tuple, Any] = OrderedDict()
_lock = threading.Lock()


def configure_tiles(tile: int | None = None, overlap: int | None = None) -> None:
    """UPSCALER_TILE (0: the whole image at once) and UPSCALER_TILE_OVERLAP, in input pixels."""
    if tile is not None:
        _tiles["tile"] = max(0, int(tile))
    if overlap is not None:
        _tiles["overlap"] = max(0, int(overlap))


def load(entry: registry.Upscaler, device: str) -> Any:
    """The spandrel descriptor on ``device`` (fp16 on CUDA where the architecture allows), from
    the cache of the last two used; a built-in is downloaded first."""
    from app.models.spandrel_loader import load_descriptor

    assert entry.path is not None
    path: Path = download.fetch(entry.name, entry.url, entry.path) if entry.url else entry.path
    try:
        stat = path.stat()
    except OSError as exc:
        raise ValidationError("upscaler", entry.name, f"{path} is gone ({exc.strerror})") from exc
    key = (str(path), stat.st_mtime, stat.st_size, device)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        try:
            descriptor = registry.check_upscaler(load_descriptor(path), entry.name)
        except ModelLoadError as exc:  # UnsafeCheckpoint included: a pickle that would run code is not run
            raise ValidationError("upscaler", entry.name, str(exc)) from exc
        descriptor.to(device)
        if device.startswith("cuda") and descriptor.supports_half:
            descriptor.half()
        _cache[key] = descriptor
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return descriptor


def free() -> None:
    """Drop the cached models (the engine's free-memory hook calls this)."""
    with _lock:
        _cache.clear()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def upscale_to(name: str, image: Image.Image, size: tuple[int, int], progress: Progress | None = None,
               device: str | None = None) -> Image.Image:
    """``image`` at exactly ``size``: the model at its own scale as many times as it takes to
    reach the size (at most three), then a Lanczos resize to it, as A1111's ``Upscaler.upscale``."""
    entry = registry.require(name)
    if not entry.is_model:
        resample = Image.Resampling.NEAREST if entry.name == "Nearest" else Image.Resampling.LANCZOS
        return image.resize(size, resample)
    img = image.convert("RGB")
    descriptor = None
    for _ in range(MAX_PASSES):
        if img.width >= size[0] and img.height >= size[1]:
            break
        descriptor = descriptor or load(entry, device or default_device())
        before = img.size
        img = run_tiled(descriptor, img, _tiles["tile"], _tiles["overlap"], progress)
        if img.size == before:  # a 1x model (ScuNET): one pass restores, more would not grow it
            break
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def upscale_with(name: str, image: Image.Image, scale: float, progress: Progress | None = None) -> Image.Image:
    """``image`` upscaled ``scale`` times by the upscaler called ``name``."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return upscale_to(name, image, size, progress)


def run_tiled(descriptor: Any, image: Image.Image, tile: int, overlap: int,
              progress: Progress | None = None) -> Image.Image:
    """One pass of the model at its own scale, tile by tile (see the module's docstring);
    ``tile`` 0 or bigger than the image: in one piece."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).unsqueeze(0)
    height, width = pixels.shape[-2:]
    scale = int(descriptor.scale)
    step = tile if tile > 0 else max(height, width)
    param = next(descriptor.model.parameters())
    out = np.empty((height * scale, width * scale, 3), np.uint8)  # uint8: a quarter of a float result's memory
    boxes = [(top, left) for top in range(0, height, step) for left in range(0, width, step)]
    with torch.inference_mode():
        for done, (top, left) in enumerate(boxes, 1):
            bottom, right = min(top + step, height), min(left + step, width)
            y0, x0 = max(0, top - overlap), max(0, left - overlap)
            y1, x1 = min(height, bottom + overlap), min(width, right + overlap)
            piece = pixels[..., y0:y1, x0:x1].to(param.device, param.dtype) / 255
            result = descriptor(piece)[0, :, (top - y0) * scale:(bottom - y0) * scale,
                                       (left - x0) * scale:(right - x0) * scale]
            rgb = (result.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            out[top * scale:bottom * scale, left * scale:right * scale] = rgb.cpu().numpy()
            if progress is not None:
                progress(done, len(boxes))
    return Image.fromarray(out)
