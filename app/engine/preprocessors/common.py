"""What every preprocessor shares: its description (the sliders /controlnet/module_list shows) and
the extension's resolution rule."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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

# run(image RGB, resolution, threshold_a, threshold_b) -> the detected map (RGB), values already bounded
Runner = Callable[[Image.Image, int, float, float], Image.Image]


@dataclass(frozen=True)
class Module:
    name: str  # the extension's module name (what API clients send)
    label: str  # its UI label (the extension takes both)
    resolution: Slider | None = None  # None: no slider (invert keeps the size; shuffle: 512 by default)
    sliders: tuple[Slider, ...] = field(default_factory=tuple)  # threshold_a, threshold_b
    model_free: bool = False
    run: Runner | None = None


def resize_short_side(image: Image.Image, resolution: int) -> Image.Image:
    """The image scaled so its short side is ``resolution`` (the extension's rounding and filters)."""
    k = resolution / min(image.size)
    size = (int(np.round(image.width * k)), int(np.round(image.height * k)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC if k > 1 else Image.Resampling.BOX)


# --- helpers of the edge families (hed.py, pidinet.py, xdog.py): OpenCV's results without OpenCV ---------------

def detect_padded(image: Image.Image, resolution: int, detect: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``detect`` run as the extension runs its networks: on the image scaled to ``resolution`` on the short side,
    edge-padded right and bottom to multiples of 64 (its ``resize_image_with_pad``), the result cropped back."""
    array = np.asarray(resize_short_side(image, resolution))
    h, w = array.shape[:2]
    padded = np.pad(array, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")
    return np.ascontiguousarray(detect(padded)[:h, :w])


def gaussian_blur(array: np.ndarray, sigma: float, size: int | None = None) -> np.ndarray:
    """``cv2.GaussianBlur(array, (0, 0), sigma)`` of a float image (H, W) or (H, W, C), in float64: OpenCV's
    kernel (``size`` taps; by default its size for float images, 8 sigma + 1, odd) and its default border
    (reflect-101, scipy's ``mirror``)."""
    from scipy import ndimage

    size = size or int(np.round(sigma * 8 + 1)) | 1
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-x * x / (2 * sigma * sigma))
    kernel /= kernel.sum()
    out = np.asarray(array, dtype=np.float64)
    for axis in (0, 1):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="mirror")
    return out


def gaussian_blur_uint8(array: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(array, (0, 0), sigma)`` of a uint8 image, bit-exact: OpenCV blurs 8-bit images in
    fixed point: 6 sigma + 1 taps rounded to 256ths (each tap's rounding error carried to the next, the centre
    taking what makes 256), integer sums, one rounding at the end."""
    from scipy import ndimage

    size = int(np.round(sigma * 6 + 1)) | 1
    x = np.arange(size) - (size - 1) / 2
    weights = np.exp(-x * x / (2 * sigma * sigma))
    weights /= weights.sum()
    kernel, carried = np.zeros(size), 0.0
    for i in range(size // 2):
        exact = weights[i] * 256 + carried
        kernel[i] = kernel[size - 1 - i] = np.rint(exact)
        carried = exact - kernel[i]
    kernel[size // 2] = 256 - 2 * kernel[:size // 2].sum()
    out = np.asarray(array, dtype=np.float64)  # integers below 2**24 throughout: float64 sums are exact
    for axis in (0, 1):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="mirror")
    return ((out.astype(np.int64) + (1 << 15)) >> 16).clip(0, 255).astype(np.uint8)


def nms(edges: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """The annotators' thinning of a soft edge map (uint8, H x W): blurred, a pixel is kept where it is a
    maximum along any of the four directions (its two neighbours no higher) and above ``threshold``; 255/0."""
    x = gaussian_blur(edges, sigma).astype(np.float32)  # float32 as theirs: ties between neighbours alike
    h, w = x.shape
    p = np.pad(x, 1, constant_values=-np.inf)  # outside the image never wins, as OpenCV's dilate border

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    peak = np.zeros((h, w), dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        peak |= (x >= at(dy, dx)) & (x >= at(-dy, -dx))
    return np.where(peak & (x > threshold), 255, 0).astype(np.uint8)


def scribble(edges: np.ndarray) -> np.ndarray:
    """A soft edge map (uint8, H x W) as the extension's scribble_* modules draw it: thinned (``nms`` at 127,
    sigma 3), thickened again by an 8-bit blur (sigma 3), every pixel above 4 white: thick binary strokes."""
    return np.where(gaussian_blur_uint8(nms(edges, 127, 3.0), 3.0) > 4, 255, 0).astype(np.uint8)


def safe_step(edges: np.ndarray, step: int = 2) -> np.ndarray:
    """The annotators' "safe" quantization of a 0..1 edge map into ``step + 1`` levels (0, 1/step, ... ; float32
    truncation as theirs), which keeps hidden patterns out of the map."""
    levels = (edges.astype(np.float32) * float(step + 1)).astype(np.int32)
    return levels.astype(np.float32) / float(step)


def soft_edge_modules(names: tuple[str, str, str], labels: tuple[str, str, str],
                      probabilities: Callable[[np.ndarray], np.ndarray]) -> list[Module]:
    """A soft-edge network's three modules (its map, the map quantized "safe", a scribble from the map)
    from ``probabilities(rgb)``: the edge probability (float, 0..1, H x W) of an RGB uint8 array whose
    sides are multiples of 16."""
    def edges(rgb: np.ndarray, safe: bool = False) -> np.ndarray:
        found = probabilities(rgb)
        return ((safe_step(found) if safe else found) * 255.0).clip(0, 255).astype(np.uint8)

    def soft(safe: bool) -> Runner:
        return lambda image, res, a, b: Image.fromarray(
            detect_padded(image, res, lambda rgb: edges(rgb, safe))).convert("RGB")

    def scribbled(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
        return Image.fromarray(scribble(detect_padded(image, res, edges))).convert("RGB")

    return [Module(names[0], labels[0], RESOLUTION, run=soft(False)),
            Module(names[1], labels[1], RESOLUTION, run=soft(True)),
            Module(names[2], labels[2], RESOLUTION, run=scribbled)]
