"""``canny``: OpenCV's Canny (aperture 3, L1 gradient), reimplemented (no OpenCV at run time);
tests/test_controlnet.py compares it with ``cv2.Canny``."""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, Slider, resize_short_side


def _run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    edges = canny(np.asarray(resize_short_side(image, res)), int(a), int(b))
    return Image.fromarray(edges).convert("RGB")


MODULES = [Module("canny", "canny", RESOLUTION,
                  (Slider("Low Threshold", 100, 1, 255), Slider("High Threshold", 200, 1, 255)), run=_run)]

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


