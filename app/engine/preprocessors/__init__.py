"""ControlNet preprocessors ("modules"), with the names, sliders and
resolution rule of A1111's ControlNet extension
(``scripts/preprocessor/model_free_preprocessors.py``,
``scripts/preprocessor/legacy/processor.py``).

One file per family; each defines ``MODULES``, a list of ``Module`` with its
``run``. This file gathers them in the extension's order (none, invert, then by label):

- ``none``: the image is the control map already; ``invert``: white background
  and black lines to the black/white a ControlNet expects (basic.py);
- ``canny`` (canny.py), ``depth_anything`` (depth.py);
- ``lineart`` (lineart_realistic), ``lineart_coarse``, ``lineart_anime``, ``lineart_standard`` (lineart.py),
  ``shuffle`` and ``color`` (t2ia_color_grid) (shuffle.py);
- soft edges and scribbles: ``hed``, ``hed_safe``, ``scribble_hed`` (hed.py), ``pidinet``, ``pidinet_safe``,
  ``pidinet_scribble`` (pidinet.py), ``scribble_xdog`` (xdog.py); helpers shared in common.py;
- ``openpose``, ``openpose_face``, ``openpose_faceonly``, ``openpose_full``, ``openpose_hand`` (openpose/).
"""
from __future__ import annotations

import importlib
import pkgutil

from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, Slider, resize_short_side

__all__ = ["MODULES", "RESOLUTION", "Module", "Slider", "find_module", "module_detail", "resize_short_side",
           "resolved_params", "run_module"]

# The extension's order: none and invert first, then by UI label, so /controlnet/module_list reads as it does.
FIRST = ("none", "invert")


def _gather() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name != "common":
            for module in importlib.import_module(f"{__name__}.{info.name}").MODULES:
                found[module.name] = module
    rank = {name: i for i, name in enumerate(FIRST)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[1].label)))


MODULES: dict[str, Module] = _gather()


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
    if module not in MODULES:
        raise ValueError(f"unknown module {module!r}")
    res, a, b = resolved_params(module, res, a, b)
    runner = MODULES[module].run
    assert runner is not None, module
    return runner(image.convert("RGB"), res, a, b)
