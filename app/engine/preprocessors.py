"""ControlNet preprocessors ("modules"), with the names, sliders and
resolution rule of A1111's ControlNet extension
(``scripts/preprocessor/model_free_preprocessors.py``,
``scripts/preprocessor/legacy/processor.py``).

- ``none``: the image is the control map already;
- ``invert``: white background and black lines to the black/white a
  ControlNet expects (no resolution, as the extension);
- ``canny``: the image scaled so its short side is ``processor_res``
  (the extension's ``resize_image_with_pad``: bicubic up, area down), then
  OpenCV's Canny with the L1 gradient (``cv2.Canny``'s default), thresholds
  ``threshold_a``/``threshold_b``, reimplemented here (no OpenCV at run time);
- ``depth_anything``: Depth Anything (transformers' AutoModelForDepthEstimation,
  weights from the Hub on first use: app/models/controlnet.py ``DEPTH_MODEL``) at
  ``processor_res`` on the short side, its relative depth scaled to 0..255 (near
  is bright), as the extension's ``depth_anything``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Slider:
    """A preprocessor parameter as /controlnet/module_list describes it."""

    name: str
    value: float
    min: float
    max: float
    step: float = 1

    def api_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Module:
    name: str
    label: str
    resolution: Slider | None = None
    sliders: tuple[Slider, ...] = field(default_factory=tuple)
    model_free: bool = False


MODULES: dict[str, Module] = {
    "none": Module("none", "none", model_free=False),
    "canny": Module("canny", "canny", RESOLUTION,
                    (Slider("Low Threshold", 100, 1, 255), Slider("High Threshold", 200, 1, 255))),
    "invert": Module("invert", "invert (from white bg & black line)"),
    "depth_anything": Module("depth_anything", "depth_anything", RESOLUTION),
}


def find_module(name: str) -> str | None:
    """The module's name from its name or its UI label (the extension takes both)."""
    for module in MODULES.values():
        if name in (module.name, module.label):
            return module.name
    return None


def module_detail(alias_names: bool = False) -> dict:
    """/controlnet/module_list's ``module_detail``: model_free and the visible sliders per module."""
    out = {}
    for module in MODULES.values():
        sliders = ([module.resolution] if module.resolution else []) + list(module.sliders)
        out[module.label if alias_names else module.name] = {
            "model_free": module.model_free, "sliders": [s.api_json() for s in sliders]}
    return out


def resolved_params(module: str, res: float, a: float, b: float) -> tuple[int, float, float]:
    """The unit's resolution and thresholds with out-of-range values (-1 included) replaced by the
    slider's default, as the extension's ``bound_check_params`` does."""
    m = MODULES[module]
    slots = (m.resolution or RESOLUTION, *m.sliders, Slider("", -1, -1, -1), Slider("", -1, -1, -1))
    values = []
    for value, slider in zip((res, a, b), slots):
        values.append(value if slider.min <= value <= slider.max else slider.value)
    return int(values[0]), float(values[1]), float(values[2])


def run_module(module: str, image: Image.Image, res: float = -1, a: float = -1, b: float = -1) -> Image.Image:
    """The detected map of ``image`` (RGB out)."""
    res, a, b = resolved_params(module, res, a, b)
    image = image.convert("RGB")
    if module == "none":
        return image
    if module == "invert":
        return Image.fromarray(255 - np.asarray(image))
    if module == "canny":
        scaled = resize_short_side(image, res)
        edges = canny(np.asarray(scaled), int(a), int(b))
        return Image.fromarray(edges).convert("RGB")
    if module == "depth_anything":
        return depth(resize_short_side(image, res))
    raise ValueError(f"unknown module {module!r}")


def resize_short_side(image: Image.Image, resolution: int) -> Image.Image:
    """The image scaled so its short side is ``resolution`` (the extension's rounding and filters)."""
    k = resolution / min(image.size)
    size = (int(np.round(image.width * k)), int(np.round(image.height * k)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC if k > 1 else Image.Resampling.BOX)


# --- Canny ------------------------------------------------------------------------------

_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan(22.5°) in OpenCV's fixed point


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's 3x3 Sobel dx, dy (BORDER_REPLICATE, as its Canny asks), integers."""
    p = np.pad(channel.astype(np.int32), 1, mode="edge")
    smooth_y = p[:-2] + 2 * p[1:-1] + p[2:]  # (h, w+2): vertical smoothing for dx
    dx = smooth_y[:, 2:] - smooth_y[:, :-2]
    smooth_x = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # (h+2, w)
    dy = smooth_x[2:] - smooth_x[:-2]
    return dx, dy


def canny(image: np.ndarray, low: int, high: int) -> np.ndarray:
    """``cv2.Canny(image, low, high)`` (aperture 3, L1 gradient) for a uint8 grey or RGB array: 255 on
    edges. Colour images take, per pixel, the gradient of the channel with the largest magnitude (first
    on ties), as OpenCV does."""
    from scipy import ndimage

    if low > high:
        low, high = high, low
    channels = image[..., None] if image.ndim == 2 else image
    grads = [_sobel(channels[..., c]) for c in range(channels.shape[-1])]
    dx, dy = grads[0]
    mag = np.abs(dx) + np.abs(dy)
    for cdx, cdy in grads[1:]:
        cmag = np.abs(cdx) + np.abs(cdy)
        better = cmag > mag
        dx, dy, mag = np.where(better, cdx, dx), np.where(better, cdy, dy), np.where(better, cmag, mag)
    h, w = mag.shape
    m = np.pad(mag, 1)  # magnitudes outside the image are 0

    def at(oy: int, ox: int) -> np.ndarray:
        return m[1 + oy:1 + oy + h, 1 + ox:1 + ox + w]

    ax, ay = np.abs(dx).astype(np.int64), np.abs(dy).astype(np.int64) << 15
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    s_neg = (dx ^ dy) < 0  # opposite signs: the other diagonal
    keep = np.zeros((h, w), dtype=bool)
    keep |= horizontal & (mag > at(0, -1)) & (mag >= at(0, 1))
    keep |= vertical & (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep |= diagonal & ~s_neg & (mag > at(-1, -1)) & (mag > at(1, 1))
    keep |= diagonal & s_neg & (mag > at(-1, 1)) & (mag > at(1, -1))
    candidate = keep & (mag > low)
    strong = candidate & (mag > high)
    # Hysteresis: candidates 8-connected to a strong pixel are edges.
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3), dtype=int))
    on = np.zeros(count + 1, dtype=bool)
    on[np.unique(labels[strong])] = True
    on[0] = False
    return np.where(on[labels], 255, 0).astype(np.uint8)


# --- depth --------------------------------------------------------------------------------

_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet, as DPT's processor


def depth(image: Image.Image) -> Image.Image:
    """Depth Anything's relative depth of ``image`` at its own size, min-max scaled to 0..255 (grey RGB).
    The network sees the image at the nearest multiple of its patch size (14), bicubic, ImageNet-normalized."""
    import torch

    from app.models.controlnet import depth_model

    model = depth_model()
    patch = int(getattr(model.config, "patch_size", 14))
    w, h = (max(patch, int(round(v / patch)) * patch) for v in image.size)
    array = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(((array - _MEAN) / _STD).astype(np.float32)).permute(2, 0, 1)[None]
    param = next(model.parameters())
    with torch.no_grad():
        predicted = model(pixel_values=pixels.to(param.device, param.dtype)).predicted_depth
    predicted = torch.nn.functional.interpolate(predicted[:, None].float(), size=(image.height, image.width),
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    low, high = float(predicted.min()), float(predicted.max())
    scaled = (predicted - low) / (high - low) * 255.0 if high > low else np.zeros_like(predicted)
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8)).convert("RGB")
