"""ControlNet units in our own sampling loop, with the semantics of A1111's
ControlNet extension (sd-webui-controlnet ``scripts/hook.py``,
``scripts/controlnet.py``, ``internal_controlnet/args.py``).

1. A unit: a control image, a preprocessor (``module``, app/engine/preprocessors/),
   a ControlNet (``model``, app/models/controlnet.py), ``weight``,
   ``guidance_start``/``guidance_end``, ``control_mode``, ``resize_mode``.
2. The control map is fitted to each pass's size (the hires pass gets its
   own, as the extension's ``hr_hint_cond``) by the resize mode: "Just Resize"
   stretches, "Crop and Resize" covers and crops the middle, "Resize and Fill"
   fits and pads with the border's median colour.
3. At every UNet call each active unit's ControlNet runs on the same latents,
   timestep and text conditioning; its 13 residuals (12 down blocks and the
   middle block on SD) are scaled and summed over the units (diffusers'
   MultiControlNet sums too) and handed to the UNet as
   ``down_block_additional_residuals``/``mid_block_additional_residual``.
   There is no second UNet, VAE or text encoder: the ControlNet is the only
   extra model.
4. A unit is active while ``guidance_start <= step / steps <= guidance_end``,
   where ``step`` is the index of the sampler's last finished step (0 before
   the first) and ``steps`` the pass's sampling steps, as the extension reads
   A1111's ``state.sampling_step``/``sampling_steps``.
5. Control modes: "Balanced" scales every residual by the weight; "My prompt
   is more important" scales residual i of 13 by ``weight * 0.825 ** (12 - i)``
   (soft injection); "ControlNet is more important" does the same and gives
   the residuals to the conditional half of the batch only (the unconditional
   half gets none, so guidance pushes towards the control). In the hires pass
   canny units get the soft scales too, as the extension does.
6. ``effective_region_mask`` (an image; its first channel / 255) limits where
   a unit acts: each residual is multiplied by it, resized bilinearly to the
   residual's size, as the extension's ``apply_effective_region_mask``.
7. A unit's ``mask`` is the extension's alpha for its input image. Our
   preprocessors are none of its inpaint ones, so it reads it as the
   extension does for the others: a mask neither all black nor all white
   ("canvas scribble") becomes the input image itself, grey.
8. "Only masked" inpainting: the input image is fitted to the init image's
   size, cropped to the inpaint crop box and resized to the pass's size
   before the preprocessor runs (the extension's
   ``try_crop_image_with_a1111_mask``; ``inpaint_crop_input_image`` off
   keeps the whole image).
9. Each unit's fitted maps (the hires pass's first, then the first pass's)
   are the result's ``control_maps`` unless ``save_detected_map`` is off:
   the extension appends them after the images of an API response.
"""
from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from app.engine.base import Limits
    from app.engine.types import GenerationRequest

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
HR_OPTIONS = ("Both", "Low res only", "High res only")  # which passes of a hires-fix run a unit guides
# The extension's old names for the resize modes (internal_controlnet/args.py), still sent by clients.
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Envelope (Outer Fit)": "Resize and Fill",
}
SOFT_INJECTION_BASE = 0.825  # the extension's per-block decay for "My prompt is more important"
# Modules whose hires pass uses the soft scales whatever the mode (the extension's canny/mlsd rule).
_HIRES_SOFT = ("canny", "mlsd")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit as a request carries it (JSON values; the image a base64 PNG, None: the
    img2img init image, as the extension falls back to it)."""

    image: str | None = None
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    processor_res: int = -1  # -1: the preprocessor's default (512 where it takes one)
    threshold_a: float = -1  # -1: the preprocessor's default
    threshold_b: float = -1
    control_mode: str = "Balanced"
    resize_mode: str = "Crop and Resize"
    pixel_perfect: bool = False
    hr_option: str = "Both"
    mask: str | None = None  # base64 PNG: the input image's alpha (section 7)
    effective_region_mask: str | None = None  # base64 PNG: where the unit acts (section 6)
    inpaint_crop_input_image: bool = True  # only-masked inpainting crops the input (section 8)
    save_detected_map: bool = True  # its maps in the result (section 9)

    def pil_image(self) -> Image.Image | None:
        return _decode(self.image, "RGB")

    def pil_mask(self) -> Image.Image | None:
        return _decode(self.mask, "RGB")

    def pil_region(self) -> Image.Image | None:
        return _decode(self.effective_region_mask, "RGB")

    def infotext(self, model_label: str) -> str:
        """The extension's ``ControlNetUnit.serialize``: ``Module: canny, Model: ..., Weight: 1.0, ...``."""
        from app.engine.preprocessors import resolved_params

        res, a, b = resolved_params(self.module, self.processor_res, self.threshold_a, self.threshold_b)
        values = {"Module": self.module, "Model": model_label, "Weight": float(self.weight),
                  "Resize Mode": self.resize_mode, "Processor Res": res, "Threshold A": float(a),
                  "Threshold B": float(b), "Guidance Start": float(self.guidance_start),
                  "Guidance End": float(self.guidance_end), "Pixel Perfect": self.pixel_perfect,
                  "Control Mode": self.control_mode}
        return ", ".join(f"{k}: {v}" for k, v in values.items())


UNIT_FIELDS = tuple(f.name for f in fields(ControlUnit))
UNIT_IMAGES = ("image", "mask", "effective_region_mask")  # a unit's images (base64 PNG)
_FLAGS = ("pixel_perfect", "inpaint_crop_input_image", "save_detected_map")


def _decode(data: str | None, mode: str) -> Image.Image | None:
    return None if data is None else _open(data, mode)


def _open(data: str, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return im.convert(mode)


def encode_png(image: Image.Image) -> str:
    """A control image as the request keeps it: base64 PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def check(request: GenerationRequest, limits: Limits) -> None:
    """The request's units (normalized in place), each with an image to control by, and none with
    SD upscale, which runs its tiles without ControlNet."""
    from app.engine.base import ValidationError

    request.controlnet = check_units(request.controlnet)
    for i, unit in enumerate(request.controlnet):  # img2img's units may use the init image (the extension's rule)
        if unit.get("image") is None and request.init_image is None and unit.get("enabled", True):
            raise ValidationError(f"controlnet[{i}].image", None, "is required without an init image")
    if request.controlnet and request.sd_upscale is not None:  # each tile would get the whole image's map
        raise ValidationError("controlnet", f"{len(request.controlnet)} unit(s)",
                              "SD upscale runs its tiles without ControlNet: leave out one or the other")


def check_units(value: Any) -> list[dict]:
    """The request's ``controlnet`` list, checked and normalized (mode names canonical, numbers as numbers);
    ValidationError naming ``controlnet[i].field`` otherwise."""
    from app.engine.base import ValidationError
    from app.engine.preprocessors import find_module

    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError("controlnet", value, "must be a list of units")
    out = []
    for i, unit in enumerate(value):
        where = f"controlnet[{i}]"
        if not isinstance(unit, dict):
            raise ValidationError(where, unit, "must be an object")
        for key in unit:
            if key not in UNIT_FIELDS:
                raise ValidationError(f"{where}.{key}", unit[key], "unknown field; the fields are "
                                      + ", ".join(UNIT_FIELDS))
        data = {**asdict(ControlUnit()), **unit}
        for name, low, high in (("weight", 0.0, 2.0), ("guidance_start", 0.0, 1.0), ("guidance_end", 0.0, 1.0),
                                ("processor_res", -1, 2048), ("threshold_a", -1, 1e6), ("threshold_b", -1, 1e6)):
            data[name] = _number(f"{where}.{name}", data[name], low, high, integer=name == "processor_res")
        if data["guidance_start"] > data["guidance_end"]:
            raise ValidationError(f"{where}.guidance_start", data["guidance_start"],
                                  f"must not be above guidance_end ({data['guidance_end']:g})")
        module = find_module(data["module"]) if isinstance(data["module"], str) else None
        if module is None:
            from app.engine.preprocessors import MODULES

            raise ValidationError(f"{where}.module", data["module"], "must be one of " + ", ".join(MODULES))
        data["module"] = module
        data["control_mode"] = _choice(where, "control_mode", data["control_mode"], CONTROL_MODES, {})
        data["resize_mode"] = _choice(where, "resize_mode", data["resize_mode"], RESIZE_MODES, RESIZE_ALIASES)
        data["hr_option"] = _choice(where, "hr_option", data["hr_option"], HR_OPTIONS, {})
        for flag in _FLAGS:
            if not isinstance(data[flag], bool):
                raise ValidationError(f"{where}.{flag}", data[flag], "must be true or false")
        if not isinstance(data["model"], str) or data["model"] in ("", "None"):
            raise ValidationError(f"{where}.model", data["model"], "must name a ControlNet (see /controlnet/model_list)")
        images: dict[str, Image.Image] = {}
        for name in UNIT_IMAGES:
            if data[name] is None:
                continue
            if not isinstance(data[name], str):
                raise ValidationError(f"{where}.{name}", data[name], "must be a base64 PNG")
            try:
                images[name] = _open(data[name], "RGB")
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the caller's bad image
                raise ValidationError(f"{where}.{name}", data[name], f"is not an image ({exc})") from None
        if "mask" in images and "image" not in images:  # the extension asserts the same
            raise ValidationError(f"{where}.mask", "a mask", "needs the unit's own image (the init image takes none)")
        if "mask" in images and images["mask"].size != images["image"].size:
            raise ValidationError(f"{where}.mask", "x".join(map(str, images["mask"].size)),
                                  "must be the size of the unit's image ("
                                  + "x".join(map(str, images["image"].size)) + ")")
        out.append(data)
    return out


def _number(field: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    """A unit's number within the extension's bounds (weight 0..2, guidance 0..1)."""
    from app.engine.base import ValidationError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValidationError(field, value, "must be " + ("an integer" if integer else "a number"))
    if not low <= value <= high:
        raise ValidationError(field, value, f"must be between {low:g} and {high:g}")
    return int(value) if integer else float(value)


def _choice(where: str, name: str, value: Any, names: tuple[str, ...], aliases: dict[str, str]) -> str:
    """A mode by its name (case-insensitive, old aliases too) or its index, as the extension takes both."""
    from app.engine.base import ValidationError

    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return names[value]
        if name == "resize_mode" and value == 3:  # "Just Resize (Latent upscale)": the extension maps it so
            return names[0]
    elif isinstance(value, str):
        value = aliases.get(value, value)
        for known in names:
            if known.lower() == value.strip().lower():
                return known
    raise ValidationError(f"{where}.{name}", value, "must be one of " + ", ".join(names)
                          + f" (or 0..{len(names) - 1})")


def units_of(request: Any) -> list[ControlUnit]:
    return [ControlUnit(**u) for u in request.controlnet or []]


# --- control maps ------------------------------------------------------------------------

def fit(detected: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """The detected map at the pass's size by the resize mode (the extension's ``detectmap_proc``,
    with PIL's filters standing in for OpenCV's: nearest for maps of few colours, area when
    shrinking, bicubic when growing)."""
    detected = detected.convert("RGB")
    if mode == "Just Resize":
        return _resize(detected, (width, height))
    w0, h0 = detected.size
    k0, k1 = height / h0, width / w0
    if mode == "Resize and Fill":
        k = min(k0, k1)
        array = np.asarray(detected)
        borders = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]], axis=0)
        colour = tuple(int(c) for c in np.median(borders, axis=0).astype(np.uint8))
        inner = _resize(detected, (int(round(w0 * k)), int(round(h0 * k))))
        canvas = Image.new("RGB", (width, height), colour)
        canvas.paste(inner, (max(0, (width - inner.width) // 2), max(0, (height - inner.height) // 2)))
        return canvas
    k = max(k0, k1)  # Crop and Resize
    big = _resize(detected, (int(round(w0 * k)), int(round(h0 * k))))
    left, top = max(0, (big.width - width) // 2), max(0, (big.height - height) // 2)
    return big.crop((left, top, left + width, top + height))


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    colours = image.getcolors(200)
    if colours is not None and 2 < len(colours) < 200:  # segmentation-like maps keep their colours
        return image.resize(size, Image.Resampling.NEAREST)
    smaller = size[0] * size[1] < image.width * image.height
    return image.resize(size, Image.Resampling.BOX if smaller else Image.Resampling.BICUBIC)


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: str) -> int:
    """The extension's pixel-perfect preprocessor resolution: the image's short side scaled as the
    resize mode will scale it."""
    k0, k1 = height / image.height, width / image.width
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(image.height, image.width)))


def detect(unit: ControlUnit, image: Image.Image, width: int, height: int) -> Image.Image:
    """The unit's detected map (before fitting) for a generation of width x height."""
    from app.engine.preprocessors import run_module

    res = unit.processor_res
    if unit.pixel_perfect:
        res = pixel_perfect_resolution(image, width, height, unit.resize_mode)
    return run_module(unit.module, image, res, unit.threshold_a, unit.threshold_b)


# --- the per-call hook ----------------------------------------------------------------------

@dataclass
class ActiveUnit:
    model: Any  # diffusers ControlNetModel
    hint: Any  # torch (1, 3, H, W) in 0..1 at the pass's pixel size
    weight: float
    start: float
    end: float
    mode: str
    module: str
    region: Any = None  # torch (1, 1, h, w) in 0..1: where the unit acts (None: everywhere)


class ControlSet:
    """The units of one pass. ``step``/``steps`` are the sampler's progress (set by the sampling loop)."""

    def __init__(self, units: list[ActiveUnit], hires: bool = False):
        self.units, self.hires = units, hires
        self.step, self.steps = 0, 1
        self.calls: list[tuple[int, list[bool]]] = []  # (step, which units ran): what a run did, for tests

    def active(self, unit: ActiveUnit) -> bool:
        fraction = self.step / max(self.steps, 1)
        return unit.start <= fraction <= unit.end

    def residuals(self, x: Any, t: Any, cond: Any, cond_rows: Any) -> tuple[list, Any] | None:
        """The summed residuals for one UNet call on latents ``x`` (4 channels), or None when no unit
        is active. ``cond_rows`` (bool per batch row): which rows carry the prompt (cond) rather than
        the negative prompt."""
        import torch

        ran = [self.active(u) and u.weight > 0 for u in self.units]
        self.calls.append((self.step, ran))
        down: list | None = None
        mid = None
        for unit, on in zip(self.units, ran):
            if not on:
                continue
            model = unit.model
            hint = unit.hint.to(x.device, model.dtype).expand(x.shape[0], -1, -1, -1)
            d, m = model(x.to(model.dtype), t.to(x.device, torch.float32),
                         encoder_hidden_states=cond.to(x.device, model.dtype), controlnet_cond=hint,
                         conditioning_scale=1.0, return_dict=False)
            scales = self.scales(unit, len(d) + 1)
            mark = cond_rows.to(x.device, model.dtype)[:, None, None, None]
            cfg_only = unit.mode == CONTROL_MODES[2]
            d = [_in_region(r * s * (mark if cfg_only else 1), unit.region) for r, s in zip(d, scales)]
            m = _in_region(m * scales[-1] * (mark if cfg_only else 1), unit.region)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return None if down is None else (down, mid)

    def scales(self, unit: ActiveUnit, count: int) -> list[float]:
        """Per-residual scales, the middle block's last: 13 on SD (12 down blocks, 1 middle)."""
        soft = unit.mode != CONTROL_MODES[0] or (self.hires and any(k in unit.module for k in _HIRES_SOFT))
        if soft:
            return [unit.weight * SOFT_INJECTION_BASE ** float(count - 1 - i) for i in range(count)]
        return [unit.weight] * count


def _in_region(residual: Any, region: Any) -> Any:
    """A residual limited to the unit's effective region, the mask resized bilinearly to its size."""
    if region is None:
        return residual
    import torch.nn.functional as F

    mask = F.interpolate(region.to(residual.device, residual.dtype), size=residual.shape[-2:], mode="bilinear")
    return residual * mask


def input_image(unit: ControlUnit, fallback: Image.Image | None) -> Image.Image | None:
    """What the unit's preprocessor reads: its image (or the init image); its mask instead where the
    mask is neither all black nor all white (the extension's canvas scribble, its alpha <= 5 or >= 250)."""
    image = unit.pil_image()
    mask = unit.pil_mask()
    if image is None:
        return fallback
    if mask is not None:
        alpha = np.asarray(mask)[..., 0]
        if not ((alpha <= 5).all() or (alpha >= 250).all()):
            return Image.fromarray(alpha).convert("RGB")
    return image


@dataclass(frozen=True)
class Crop:
    """Only-masked inpainting's crop (app/engine/inpaint.py): ``box`` of an image of ``size``."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]


def crop_input(image: Image.Image, mode: str, crop: Crop, width: int, height: int) -> Image.Image:
    """The input image as the only-masked pass sees the init image: fitted to the init image's size by
    the resize mode, cropped to the box, resized to the pass's size."""
    whole = image if image.size == crop.size else fit(image, mode, *crop.size)
    return whole.crop(crop.box).resize((width, height), Image.Resampling.LANCZOS)


ModelLoader = Callable[[str], Any]  # model name -> a loaded ControlNetModel on the engine's device


class ControlPlan:
    """A request's units, their detected maps computed once, and each pass's ControlSet on demand."""

    def __init__(self, units: list[ControlUnit], maps: list[Image.Image], models: list[Any], hires_run: bool = False):
        self.units, self.maps, self.models = units, maps, models
        self.hires_run = hires_run  # a hires-fix run: hr_option picks the passes (else every unit runs)
        self.regions = [_region_tensor(u.pil_region()) for u in units]
        self.fitted: dict[tuple[int, bool], Image.Image] = {}  # (unit, hires pass) -> the map the pass used

    @classmethod
    def build(cls, request: Any, width: int, height: int, load: ModelLoader,
              init_image: Image.Image | None = None, crop: Crop | None = None) -> "ControlPlan | None":
        from app.engine.base import ValidationError
        from app.models.loading import ModelLoadError

        units = units_of(request)
        if not units:
            return None
        maps, models = [], []
        for i, unit in enumerate(units):
            image = input_image(unit, init_image)
            if image is None:
                raise ValidationError(f"controlnet[{i}].image", None, "is required without an init image")
            if crop is not None and unit.inpaint_crop_input_image:
                image = crop_input(image, unit.resize_mode, crop, width, height)
            try:
                maps.append(detect(unit, image, width, height))
            except ModelLoadError as exc:  # the depth preprocessor's weights, offline
                raise ValidationError(f"controlnet[{i}].module", unit.module, str(exc)) from None
            models.append(load(unit.model))
        return cls(units, maps, models, hires_run=bool(getattr(request, "enable_hr", False)))

    def for_pass(self, width: int, height: int, hires: bool = False) -> ControlSet:
        import torch

        active = []
        for i, (unit, detected, model) in enumerate(zip(self.units, self.maps, self.models)):
            # Fitted for every unit, as the extension fits (and shows) both passes' maps whatever hr_option.
            fitted = self.fitted[(i, hires)] = fit(detected, unit.resize_mode, width, height)
            if self.hires_run and unit.hr_option == HR_OPTIONS[1 if hires else 2]:
                continue  # the extension's disabled_by_hr_option: "Low res only" in the hires pass, and back
            hint = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            active.append(ActiveUnit(model, hint, unit.weight, unit.guidance_start, unit.guidance_end,
                                     unit.control_mode, unit.module, self.regions[i]))
        return ControlSet(active, hires)

    def detected_maps(self) -> list[Image.Image]:
        """The maps the passes used, per unit (the hires pass's first, as the extension lists them),
        leaving out the units with ``save_detected_map`` off."""
        return [self.fitted[(i, hires)] for i, unit in enumerate(self.units) if unit.save_detected_map
                for hires in (True, False) if (i, hires) in self.fitted]

    def infotext_entries(self, labels: list[str]) -> dict:
        """``ControlNet 0: "Module: ..., Model: ..."`` per unit, as the extension writes them (quoted, as A1111
        quotes a value holding commas)."""
        from app.engine.base import Quoted

        return {f"ControlNet {i}": Quoted(unit.infotext(label))
                for i, (unit, label) in enumerate(zip(self.units, labels))}


def _region_tensor(image: Image.Image | None) -> Any:
    """An effective region mask as the extension takes it: its first channel, 0..1, (1, 1, h, w)."""
    if image is None:
        return None
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32)[..., 0] / 255.0)[None, None]


def parse_infotext_unit(text: str) -> dict:
    """A ``ControlNet N`` infotext value back to unit fields (the extension's ``ControlNetUnit.parse``)."""
    out: dict = {}
    for item in text.split(","):
        key, _, value = item.strip().partition(": ")
        out["_".join(word.lower() for word in key.split(" "))] = parse_value(value)
    return out


def units_from_infotext(params: dict) -> list[dict]:
    """The units an infotext records (``ControlNet 0``, ``ControlNet 1`` ...), their settings without the
    image, as the extension's paste restores them; entries that do not parse are left out."""
    units = []
    for i in range(len(params)):
        text = params.get(f"ControlNet {i}")
        if not isinstance(text, str):
            break
        unit = {k: v for k, v in parse_infotext_unit(text).items() if k in UNIT_FIELDS and k != "image"}
        if "model" in unit:
            units.append(unit)
    return units


def parse_value(text: str) -> Any:
    """A unit value written as text (infotext, the CLI): true/false, an int, a float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
