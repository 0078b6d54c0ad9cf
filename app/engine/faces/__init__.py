"""Faces: found (RetinaFace, as A1111 through facexlib), restored (GFPGAN or
CodeFormer through spandrel, as A1111) and detailed (ADetailer's core: each
face inpainted again at full resolution; see ``detail``).

The public calls: ``restore_faces`` (the Extras job and the txt2img/img2img
``restore_faces`` option use it) and ``detect_faces``.
"""
from __future__ import annotations

from app.engine.faces.detect import detect_faces
from app.engine.faces.restore import RESTORERS, find_restorer, restore_faces

__all__ = ["RESTORERS", "detect_faces", "find_restorer", "restore_faces"]
