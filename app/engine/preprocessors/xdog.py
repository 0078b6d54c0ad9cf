"""``scribble_xdog``: scribbles from a difference of Gaussians (no network), as the extension's: the image at
``processor_res`` blurred with sigma 0.5 and 5, white where some channel's wide blur exceeds its fine blur by
more than half the threshold slider."""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, Slider, detect_padded, gaussian_blur


def xdog(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """The XDoG scribble (uint8 RGB, 255/0) of an RGB uint8 array."""
    fine = gaussian_blur(rgb.astype(np.float32), 0.5).astype(np.float32)
    wide = gaussian_blur(rgb.astype(np.float32), 5.0).astype(np.float32)
    dog = (255 - np.min(wide - fine, axis=2)).clip(0, 255).astype(np.uint8)
    # uint8 arithmetic as the extension's: twice a darkening of 128 or more wraps around (mod 256), so the
    # darkest line cores can drop out; kept so the maps match the ones its users know.
    strength = (2 * (255 - dog.astype(np.int32))) % 256
    return np.where((strength > threshold)[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)


def _run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    return Image.fromarray(detect_padded(image, res, lambda rgb: xdog(rgb, a)))


# The slider's step is the extension's default (0.01): it sets none for this one.
MODULES = [Module("scribble_xdog", "scribble_xdog", RESOLUTION, (Slider("XDoG Threshold", 32, 1, 64, 0.01),),
                  run=_run)]
