"""``none`` (the image is the map already) and ``invert`` (white background and black lines to the
black background and white lines a ControlNet expects; no resolution, as the extension)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import Module

MODULES = [
    Module("none", "none", run=lambda image, res, a, b: image),
    Module("invert", "invert (from white bg & black line)",
           run=lambda image, res, a, b: Image.fromarray(255 - np.asarray(image))),
]
