"""The face detector as A1111 runs it (facexlib's FaceRestoreHelper with
``get_face_landmarks_5(resize=640, eye_dist_threshold=5)``): the image scaled
so its short side is 640 pixels, RetinaFace at a 0.97 score threshold, faces
whose eyes are under 5 pixels apart skipped."""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from app.engine.faces import weights
from app.engine.faces.retinaface import Face, RetinaFace, load_retinaface, run_detector
from app.models.loading import ModelLoadError, read_weights

DETECT_SIZE = 640  # facexlib's resize: the short side the detector sees
RESTORE_CONFIDENCE = 0.97  # FaceRestoreHelper's score threshold
MIN_EYE_DISTANCE = 5.0  # pixels, A1111's eye_dist_threshold

_lock = threading.Lock()
_model: RetinaFace | None = None


def detector() -> RetinaFace:
    """The RetinaFace network, loaded (downloaded on first use) once per process."""
    global _model
    with _lock:
        if _model is None:
            import torch

            path = weights.ensure(weights.DETECTOR)
            try:
                model = load_retinaface(read_weights(path))
            except ValueError as exc:
                raise ModelLoadError(f"{path.name}: {exc}") from exc
            _model = model.to("cuda") if torch.cuda.is_available() else model
        return _model


def detect_faces(image: Image.Image, confidence: float = RESTORE_CONFIDENCE) -> list[Face]:
    """The faces in ``image`` (in its pixels), best first: the detector's one entry point."""
    rgb = image.convert("RGB")
    scale = min(rgb.size) / DETECT_SIZE
    if scale != 1:
        rgb = rgb.resize((max(1, int(rgb.width / scale)), max(1, int(rgb.height / scale))),
                         Image.Resampling.LANCZOS)
    found = run_detector(detector(), np.asarray(rgb), confidence)
    faces = []
    for face in found:
        box = tuple(v * scale for v in face.box)
        marks = tuple((x * scale, y * scale) for x, y in face.landmarks)
        (lx, ly), (rx, ry) = marks[0], marks[1]
        if np.hypot(lx - rx, ly - ry) < MIN_EYE_DISTANCE:
            continue  # a side view or a tiny face: facexlib skips them
        faces.append(Face(box=box, score=face.score, landmarks=marks))
    return faces
