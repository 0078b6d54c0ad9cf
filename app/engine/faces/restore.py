"""Face restoration as A1111 does it (``modules/face_restoration_utils.py``):
every face found is aligned to 512x512, run through GFPGAN or CodeFormer in
[-1, 1], and pasted back; the result is blended with the original by
``visibility`` (A1111's Extras sliders; 1 on txt2img/img2img)."""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
from PIL import Image

from app.engine.faces import align, detect, weights
from app.models.loading import ModelLoadError
from app.models.spandrel_loader import load_descriptor

RESTORERS = ("CodeFormer", "GFPGAN")  # A1111's names (its face_restorers list and Face restoration infotext)
_FILES = {"CodeFormer": weights.CODEFORMER, "GFPGAN": weights.GFPGAN}

Progress = Callable[[int, int], None]  # (faces done, faces in all)


def weights_needed(restore: bool, restorer: str, detail: bool) -> list[weights.WeightsFile]:
    """The files a run with these options loads: the detector for either, the restorer's own."""
    needed = [weights.DETECTOR] if restore or detail else []
    return needed + [_FILES[restorer]] if restore else needed

_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def find_restorer(name: Any) -> str | None:
    """The canonical restorer name, case-insensitive; None if there is no such restorer."""
    if not isinstance(name, str):
        return None
    return next((known for known in RESTORERS if known.lower() == name.strip().lower()), None)


def load_restorer(name: str) -> Any:
    """The restorer's network (spandrel's ModelDescriptor), loaded once per process; ModelLoadError
    when the file in FACE_DIR is not that architecture."""
    with _lock:
        if name not in _loaded:
            import torch

            path = weights.ensure(_FILES[name])
            descriptor = load_descriptor(path)
            if descriptor.architecture.id != name:
                raise ModelLoadError(f"{path.name}: is a {descriptor.architecture.id} model, not {name}")
            if torch.cuda.is_available():
                descriptor.to("cuda")
            _loaded[name] = descriptor
        return _loaded[name]


def _run(descriptor: Any, face: Image.Image, codeformer_weight: float) -> Image.Image:
    import torch

    param = next(descriptor.model.parameters())
    x = torch.from_numpy(np.asarray(face, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None].to(param)
    with torch.no_grad():
        if descriptor.architecture.id == "CodeFormer":
            out = descriptor.model(x, weight=codeformer_weight, adain=True)[0]
        else:
            out = descriptor.model(x, return_rgb=False)[0]
    pixels = ((out[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels)


def restore_faces(image: Image.Image, restorer: str = "CodeFormer", visibility: float = 1.0,
                  codeformer_weight: float = 0.5, progress: Progress | None = None) -> Image.Image:
    """``image`` with every face found restored. ``codeformer_weight`` is CodeFormer's w (0: the
    strongest restoration, 1: the most faithful to the input); ``visibility`` blends the result over
    the original (1: the result only). ``progress(done, total)`` is called after each face.
    ValueError names a bad argument; ModelLoadError says which weights file is missing and where."""
    name = find_restorer(restorer)
    if name is None:
        raise ValueError(f"restorer: must be one of {', '.join(RESTORERS)} (got {restorer!r})")
    for arg, value in (("visibility", visibility), ("codeformer_weight", codeformer_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{arg}: must be a number between 0 and 1 (got {value!r})")
    original = image.convert("RGB")
    if visibility == 0:
        return original
    model = load_restorer(name)
    faces = detect.detect_faces(original)  # one module attribute: the tests fake the detector there
    result = original
    for done, face in enumerate(faces, 1):
        cropped, matrix = align.align(original, face.landmarks)
        result = align.paste(result, _run(model, cropped, float(codeformer_weight)), matrix)
        if progress is not None:
            progress(done, len(faces))
    if visibility < 1:
        result = Image.blend(original, result, float(visibility))
    return result
