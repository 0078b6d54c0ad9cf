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
