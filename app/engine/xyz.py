"""The X/Y/Z plot (A1111's ``scripts/xyz_grid.py``): axes of values, one
request per cell, and the grid image with its legends.

What carries over from A1111 1.10 (facts, not code): the axis labels and their
order in the txt2img list (``script_args`` name an axis by its index there),
the value syntax (comma-separated, CSV quoting, ``1-5``, ``1-5 (+2)``,
``1-10 [5]``, the same for decimals), the legends (``"Steps: 20"``; the
value alone for Prompt S/R and Sampler; the file name for a checkpoint), "Keep
-1 for seeds" (else a -1 seed is drawn once for the whole plot), the cells'
order (``ix + iy * nx + iz * nx * ny``) and the grid's look
(``draw_grid_annotations``: the font size ``(w + h) // 25``, legends on top
and on the left, one sub-grid per Z value with its title on top).

Each cell is an ordinary request; the jobs layer queues them as one group and
composes the grid from their images (``draw_plot``). A LoRA weight is plotted
as A1111 users do it, with Prompt S/R on the tag: ``<lora:x:0.5>,<lora:x:1>``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from app.engine.fields import kind as field_kind
from app.engine.fields import parse_value
from app.engine.schedulers import AUTOMATIC, find_schedule_type, find_scheduler, with_schedule
from app.engine.types import MAX_SEED, GenerationRequest, ValidationError, described

SCRIPT_TITLE = "x/y/z plot"  # A1111's title as /sdapi/v1/scripts lists it
MAX_CELLS = 64  # the default cap on cells per plot (the app's XYZ_MAX_CELLS)

# A1111 1.10's axis list as its txt2img tab shows it: ``x_type`` in script_args is an index here.
AXIS_LABELS = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma",
    "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma",
    "Schedule max sigma", "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip",
    "Denoising", "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order",
    "Face restore", "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
    "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
)
# The img2img tab's list, which script_args index on /sdapi/v1/img2img: no hires axes, and A1111's
# img2img-only "Image CFG Scale" and "Cond. Image Mask Weight" in their places.
IMG2IMG_AXIS_LABELS = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
    "Extra noise", "Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier",
    "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
)

Apply = Callable[[GenerationRequest, Any, list], GenerationRequest]


def _setter(name: str) -> Apply:
    return lambda request, value, values: replace(request, **{name: value})


def _prompt_sr(request: GenerationRequest, value: str, values: list) -> GenerationRequest:
    # The first value is the text searched for; every value (the first too) replaces it.
    return replace(request, prompt=request.prompt.replace(values[0], value),
                   negative_prompt=request.negative_prompt.replace(values[0], value))


def _sampler(request: GenerationRequest, value: str, values: list) -> GenerationRequest:
    current = find_scheduler(request.scheduler)
    schedule = current.schedule if current is not None else AUTOMATIC
    chosen = find_scheduler(value) if schedule is AUTOMATIC else with_schedule(value, schedule)
    assert chosen is not None  # checked by ``_check_sampler``
    return replace(request, scheduler=chosen.name)


def _schedule(request: GenerationRequest, value: str, values: list) -> GenerationRequest:
    current = find_scheduler(request.scheduler)
    schedule = find_schedule_type(value)
    assert current is not None and schedule is not None
    chosen = with_schedule(current.sampler.name, schedule)
    assert chosen is not None
    return replace(request, scheduler=chosen.name if schedule is not AUTOMATIC else current.sampler.name)


def _size(request: GenerationRequest, value: str, values: list) -> GenerationRequest:
    width, height = _parse_size(value)
    return replace(request, width=width, height=height)


def _parse_size(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", value)
    if match is None:
        raise ValueError(value)
    return int(match.group(1)), int(match.group(2))


def _keep(request: GenerationRequest, value: Any, values: list) -> GenerationRequest:
    return request  # the checkpoint: the cell's model, chosen by the jobs layer


def _with_label(label: str, value: Any) -> str:
    return f"{label}: {_shown(value)}"


def _shown(value: Any) -> str:
    return str(round(value, 8) if isinstance(value, float) else value)


@dataclass(frozen=True)
class AxisKind:
    label: str
    type: type
    apply: Apply
    legend: Callable[[str, Any], str] = _with_label
    check: Callable[[Any], bool] | None = None  # a value this server knows (a sampler's name ...)


def _known_sampler(value: str) -> bool:
    return find_scheduler(value) is not None


def _known_schedule(value: str) -> bool:
    return find_schedule_type(value) is not None


def _a_size(value: str) -> bool:
    try:
        _parse_size(value)
        return True
    except ValueError:
        return False


# The axes with their own code; every other offered axis sets one request field to its values as they are,
# named by the field's facts (``about(xyz=...)`` in app/engine/types.py).
_OWN_AXES = (
    AxisKind("Nothing", str, _keep, lambda label, value: ""),
    AxisKind("Prompt S/R", str, _prompt_sr, lambda label, value: _shown(value)),
    AxisKind("Sampler", str, _sampler, lambda label, value: _shown(value), _known_sampler),
    AxisKind("Checkpoint name", str, _keep, lambda label, value: os.path.basename(value)),
    AxisKind("Schedule type", str, _schedule, check=_known_schedule),
    AxisKind("Size", str, _size, check=_a_size),
)
_FIELD_AXES = tuple(AxisKind(about.xyz, field_kind(f), _setter(name)) for name, (f, about) in described().items() if about.xyz)
AXES: dict[str, AxisKind] = {axis.label: axis for axis in sorted(
    (*_OWN_AXES, *_FIELD_AXES), key=lambda axis: AXIS_LABELS.index(axis.label))}


# The page's axis list: the most used first, then every other axis offered here in A1111's order.
_PAGE_FIRST = ("Nothing", "Seed", "Steps", "CFG Scale", "Prompt S/R", "Sampler", "Schedule type", "Checkpoint name",
               "Denoising", "Hires steps", "Var. seed", "Var. strength", "Clip skip", "Eta", "Size")
PAGE_AXES = (*_PAGE_FIRST, *(label for label in AXES if label not in _PAGE_FIRST))


def axis_kind(value: Any, field_name: str, img2img: bool = False) -> AxisKind:
    """An axis by A1111's index (script_args: in the txt2img or the img2img tab's list) or its label (any case)."""
    labels = IMG2IMG_AXIS_LABELS if img2img else AXIS_LABELS
    offered = [label for label in AXES if label in labels]
    label = None
    if isinstance(value, bool):
        label = None
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        label = labels[int(value)] if 0 <= int(value) < len(labels) else None
    elif isinstance(value, str):
        label = next((known for known in (*AXIS_LABELS, *IMG2IMG_AXIS_LABELS)
                      if known.lower() == value.strip().lower()), None)
        if label is None:
            raise ValidationError(field_name, value, "unknown axis type; one of " + ", ".join(offered))
        if label not in labels:
            tab, other = ("img2img", "txt2img") if img2img else ("txt2img", "img2img")
            raise ValidationError(field_name, value, f"the {label!r} axis is for {other} only; on {tab} one of "
                                                     + ", ".join(offered))
    if label is None:
        raise ValidationError(field_name, value, f"must be an axis index 0-{len(labels) - 1} or an axis name")
    if label not in AXES:
        raise ValidationError(field_name, value, f"the {label!r} axis is not supported here; one of "
                                                 + ", ".join(offered))
    return AXES[label]


# --- values -------------------------------------------------------------------------------

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
_FLOAT_RANGE = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")


def split_values(text: str) -> list[str]:
    """Comma-separated, CSV quoting (``"a, b", c``), each value stripped."""
    return [value.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for value in row]


def _number(text: str) -> str:
    return text.replace(" ", "")


def _linspace(start: float, stop: float, num: int) -> list[float]:
    if num == 1:
        return [start]
    return [start + (stop - start) * i / (num - 1) for i in range(num - 1)] + [stop]


def _expand_int(value: str) -> list[Any]:
    ranged, counted = _INT_RANGE.fullmatch(value), _INT_COUNT.fullmatch(value)
    if ranged is not None:
        start, end = int(_number(ranged.group(1))), int(_number(ranged.group(2)))
        step = int(ranged.group(3)) if ranged.group(3) is not None else 1
        return list(range(start, end + 1, step))
    if counted is not None:
        start, end = int(_number(counted.group(1))), int(_number(counted.group(2)))
        return [int(x) for x in _linspace(start, end, int(counted.group(3)))]
    return [value]


def _expand_float(value: str) -> list[Any]:
    ranged, counted = _FLOAT_RANGE.fullmatch(value), _FLOAT_COUNT.fullmatch(value)
    if ranged is not None:
        start, end = float(_number(ranged.group(1))), float(_number(ranged.group(2)))
        step = float(ranged.group(3)) if ranged.group(3) is not None else 1.0
        if step == 0:
            return [value]  # refused below, by name
        count = math.ceil((end + step - start) / step)  # numpy.arange(start, end + step, step)
        return [start + i * step for i in range(max(0, count))]
    if counted is not None:
        start, end = float(_number(counted.group(1))), float(_number(counted.group(2)))
        return _linspace(start, end, int(float(counted.group(3))))
    return [value]


def parse_values(kind: AxisKind, text: Any, field_name: str) -> list[Any]:
    """The axis's values from its text, ranges expanded, typed and checked."""
    if kind.label == "Nothing":
        return [0]
    if isinstance(text, list):  # A1111's dropdown values: already one value each
        raw = [str(v).strip() for v in text]
    elif isinstance(text, str):
        raw = split_values(text)
    else:
        raise ValidationError(field_name, text, "must be a text of comma-separated values")
    raw = [v for v in raw if v != ""] if kind.type is not str else raw
    expanded: list[Any] = []
    for value in raw:
        expanded += _expand_int(value) if kind.type is int else _expand_float(value) if kind.type is float else [value]
    values: list[Any] = []
    for value in expanded:
        if kind.type is bool:  # A1111 offers "True" and "False"
            switch = parse_value(bool, value)
            if switch is None:
                raise ValidationError(field_name, value, f"{value!r} is not a valid {kind.label} value (True or False)")
            values.append(switch)
            continue
        try:
            values.append(kind.type(value))
        except (TypeError, ValueError) as exc:
            raise ValidationError(field_name, value, f"{value!r} is not a valid {kind.label} value "
                                                     f"({'a whole number' if kind.type is int else 'a number'})") from exc
        if kind.check is not None and not kind.check(values[-1]):
            raise ValidationError(field_name, value, f"{value!r} is not a known {kind.label}")
    if not values:
        raise ValidationError(field_name, text, f"gives no {kind.label} values")
    return values


# --- the plot -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    kind: AxisKind
    values: list
    field: str  # the field that named its values, for errors

    @property
    def labels(self) -> list[str]:
        return [self.kind.legend(self.kind.label, value) for value in self.values]


@dataclass(frozen=True)
class Cell:
    index: int  # ix + iy * nx + iz * nx * ny
    request: GenerationRequest
    checkpoint: str | None = None  # the Checkpoint name axis's value, for the jobs layer to resolve


@dataclass(frozen=True)
class Plot:
    x: Axis
    y: Axis
    z: Axis
    draw_legend: bool = True
    include_lone_images: bool = False  # A1111's "Include Sub Images": the cells after the grid
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False  # "Keep -1 for seeds"
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin_size: int = 0
    cells: list[Cell] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x.values), len(self.y.values), len(self.z.values)

    def grid_spec(self) -> dict:
        """What the jobs layer keeps to draw the grid once the cells are done."""
        return {"shape": list(self.shape), "x_labels": self.x.labels, "y_labels": self.y.labels,
                "z_labels": self.z.labels, "draw_legend": self.draw_legend, "margin_size": self.margin_size,
                "include_sub_grids": self.include_sub_grids, "include_lone_images": self.include_lone_images,
                "axes": [self.x.kind.label, self.y.kind.label, self.z.kind.label]}


def _fixed_seeds(axis: Axis) -> Axis:
    if axis.kind.label not in ("Seed", "Var. seed"):
        return axis
    return replace(axis, values=[random.randrange(MAX_SEED) if v == -1 else v for v in axis.values])


def make_plot(base: GenerationRequest, axes: list[tuple[Any, Any, str, str]], *, draw_legend: bool = True,
              include_lone_images: bool = False, include_sub_grids: bool = False, no_fixed_seeds: bool = False,
              vary_seeds: tuple[bool, bool, bool] = (False, False, False), margin_size: int = 0,
              max_cells: int = MAX_CELLS, validate: Callable[[GenerationRequest], GenerationRequest] | None = None
              ) -> Plot:
    """The plot of ``base`` over three axes, each (type, values, type field, values field).
    ``validate``: checks each cell's request (the server's limits). With an init image the
    axes are the img2img tab's (A1111 shows each tab its own list; an index names an axis there)."""
    if base.num_images != 1:
        raise ValidationError("batch_size", base.num_images, "must be 1 for an X/Y/Z plot (one image per cell)")
    built = []
    for kind_value, text, type_field, values_field in axes:
        kind = axis_kind(kind_value, type_field, img2img=base.init_image is not None)
        axis = Axis(kind, parse_values(kind, text, values_field), values_field)
        built.append(axis if no_fixed_seeds else _fixed_seeds(axis))
    x, y, z = built
    count = len(x.values) * len(y.values) * len(z.values)
    if count > max_cells:
        raise ValidationError(x.field, f"{len(x.values)}x{len(y.values)}x{len(z.values)}",
                              f"the plot has {count} cells; the limit is {max_cells}")
    if not isinstance(margin_size, int) or isinstance(margin_size, bool) or not 0 <= margin_size <= 500:
        raise ValidationError("margin_size", margin_size, "must be a whole number of pixels from 0 to 500")
    if not no_fixed_seeds:
        base = base.with_seed()  # one seed for every cell, as A1111 fixes p.seed before the cells
    for axis in built:
        if axis.kind.label == "Prompt S/R" and axis.values[0] not in base.prompt \
                and axis.values[0] not in base.negative_prompt:
            raise ValidationError(axis.field, axis.values[0], "Prompt S/R did not find it in the prompt or "
                                                              "negative prompt")
    plot = Plot(x, y, z, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds,
                margin_size)
    nx, ny, _ = plot.shape
    for iz, zv in enumerate(z.values):
        for iy, yv in enumerate(y.values):
            for ix, xv in enumerate(x.values):
                request, checkpoint = base, None
                for axis, value in ((x, xv), (y, yv), (z, zv)):
                    request = axis.kind.apply(request, value, axis.values)
                    if axis.kind.label == "Checkpoint name":
                        checkpoint = value
                    if axis.kind.label == "Seed" and value == -1:
                        request = replace(request, seed=None)
                offset = (ix if vary_seeds[0] else 0) + (iy * nx if vary_seeds[1] else 0) \
                    + (iz * nx * ny if vary_seeds[2] else 0)
                if offset and request.seed is not None and request.seed != -1:
                    request = replace(request, seed=(request.seed + offset) % (MAX_SEED + 1))
                if validate is not None:
                    try:
                        request = validate(request)
                    except ValidationError as exc:  # named as the axis that made the cell's value
                        raise ValidationError(_axis_of(exc.field, built), exc.value, exc.message) from exc
                plot.cells.append(Cell(ix + iy * nx + iz * nx * ny, request, checkpoint))
    return plot


def _axis_of(field_name: str, axes: list[Axis]) -> str:
    fields_of = {"Steps": "steps", "CFG Scale": "guidance_scale", "Seed": "seed", "Denoising": "strength",
                 "Size": "width", "Hires steps": "hr_second_pass_steps", "Clip skip": "clip_skip"}
    for axis in axes:
        if fields_of.get(axis.kind.label) == field_name or axis.kind.label == "Prompt S/R" and field_name == "prompt":
            return axis.field
    return field_name


# --- the grid image -----------------------------------------------------------------------

def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:  # matplotlib ships DejaVu Sans (Colab has it)
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """Images of one size, left to right then top to bottom."""
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, (i % cols * w, i // cols * h))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def annotate(grid: Image.Image, width: int, height: int, top: list[str], left: list[str],
             margin: int = 0) -> Image.Image:
    """Legends on top of each column and left of each row of ``grid`` (cells of
    ``width`` x ``height``), cells ``margin`` pixels apart; no band for empty legends."""
    fontsize = (width + height) // 25
    spacing = fontsize // 2
    font = _font(fontsize)
    cols, rows = grid.width // width, grid.height // height
    pad_left = width * 3 // 4 if any(left) else 0
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lines_of(texts: list[str], allowed: int) -> list[list[tuple[str, float, float]]]:
        out = []
        for text in texts:
            wrapped = []
            for line in _wrap(draw, text, font, allowed) if text else []:
                box = draw.textbbox((0, 0), line, font=font)
                wrapped.append((line, box[2] - box[0], box[3] - box[1]))
            out.append(wrapped)
        return out

    top_lines, left_lines = lines_of(top, width), lines_of(left, pad_left)
    top_heights = [sum(h + spacing for _, _, h in lines) - spacing if lines else 0 for lines in top_lines]
    left_heights = [sum(h for _, _, h in lines) for lines in left_lines]
    pad_top = int(max(top_heights) + spacing * 2) if any(top_heights) else 0
    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                       "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    canvas = ImageDraw.Draw(result)

    def write(x: float, y: float, lines: list[tuple[str, float, float]], allowed: int) -> None:
        for line, w, h in lines:
            size, f = fontsize, font
            while w > allowed and size > 1:  # a word longer than the band: a smaller font
                size -= 1
                f = _font(size)
                w = canvas.textlength(line, font=f)
            canvas.text((x, y + h / 2), line, font=f, fill=(0, 0, 0), anchor="mm")
            y += h + spacing

    for col, lines in enumerate(top_lines[:cols]):
        write(pad_left + (width + margin) * col + width / 2, pad_top / 2 - top_heights[col] / 2, lines, width)
    for row, lines in enumerate(left_lines[:rows]):
        write(pad_left / 2, pad_top + (height + margin) * row + height / 2 - left_heights[row] / 2, lines, pad_left)
    return result


def draw_plot(cells: list[Image.Image | None], spec: dict) -> list[Image.Image]:
    """The plot's grid, then (``include_sub_grids``) one sub-grid per Z value, from the
    cells' images in index order (a missing cell, failed or cancelled, is black)."""
    nx, ny, nz = spec["shape"]
    size = next((im.size for im in cells if im is not None), (64, 64))
    filled = [im.convert("RGB") if im is not None else Image.new("RGB", size, "black") for im in cells]
    sub_grids = []
    for iz in range(nz):
        sub = image_grid(filled[iz * nx * ny:(iz + 1) * nx * ny], rows=ny)
        if spec.get("draw_legend", True):
            sub = annotate(sub, size[0], size[1], spec["x_labels"], spec["y_labels"], spec.get("margin_size", 0))
        sub_grids.append(sub)
    sub_size = sub_grids[0].size
    grid = image_grid(sub_grids, rows=1)
    if spec.get("draw_legend", True):
        grid = annotate(grid, sub_size[0], sub_size[1], spec["z_labels"], [""])
    return [grid] + (sub_grids if spec.get("include_sub_grids") else [])
