"""``openpose``, ``openpose_hand``, ``openpose_face``, ``openpose_faceonly``, ``openpose_full``: the CMU
OpenPose body, hand and face networks with ControlNet's post-processing and drawing, as A1111's
ControlNet extension (and controlnet_aux 0.0.10, its annotator packaged) run them.

The image is scaled to ``processor_res`` on its short side; the skeleton is drawn on black at that size.
Weights: ``body_pose_model.pth``, ``hand_pose_model.pth`` and ``facenet.pth`` of ``lllyasviel/Annotators``
(app/models/annotators.py). OpenCV's resizing (INTER_AREA down, INTER_LANCZOS4 up), its Gaussian blur and
its drawing are reimplemented on numpy/scipy/PIL; tests/test_preprocessors_pose.py compares every stage
with controlnet_aux and OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from app.engine.preprocessors.common import RESOLUTION, Module, resize_short_side
from app.engine.preprocessors.openpose.cv import resize
from app.engine.preprocessors.openpose.draw import _disc, draw_body, draw_face, draw_hand, ellipse_polygon
from app.engine.preprocessors.openpose.keypoints import (
    LIMBS,
    PAF_CHANNELS,
    Keypoint,
    _crop_keypoints,
    associate,
    body_heatmaps,
    body_keypoints,
    face_box,
    face_heatmaps,
    face_peaks,
    find_peaks,
    hand_boxes,
    hand_heatmaps,
    hand_peaks,
)
from app.engine.preprocessors.openpose.networks import BODY_FILE, FACE_FILE, HAND_FILE, _load, body_net, face_net, hand_net

__all__ = ["BODY_FILE", "FACE_FILE", "HAND_FILE", "LIMBS", "MODULES", "PAF_CHANNELS", "Keypoint", "Pose", "_disc",
           "associate", "body_heatmaps", "body_net", "detect", "draw_poses", "ellipse_polygon",
           "face_box", "face_heatmaps", "face_net", "face_peaks", "find_peaks", "hand_boxes", "hand_heatmaps",
           "hand_net", "hand_peaks", "resize"]


# --- the modules --------------------------------------------------------------------------------------------

@dataclass
class Pose:
    body: list
    left_hand: list | None = None
    right_hand: list | None = None
    face: list | None = None


def detect(image_rgb: np.ndarray, hands: bool, face: bool) -> list[Pose]:
    """The people in the image, keypoints normalized to its size."""
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    h, w = bgr.shape[:2]
    heat, pafs = body_heatmaps(_load(BODY_FILE, body_net), bgr)
    candidates, people = associate(find_peaks(heat), pafs, h)
    poses = []
    for pixels in body_keypoints(candidates, people, 1, 1):  # in pixels first: the boxes are measured so
        pose = Pose([Keypoint(k.x / float(w), k.y / float(h)) if k else None for k in pixels])
        if hands:
            for x, y, side, is_left in hand_boxes(pixels, h, w):
                peaks = hand_peaks(hand_heatmaps(_load(HAND_FILE, hand_net), bgr[y:y + side, x:x + side]), side, side)
                found = _crop_keypoints(peaks, x, y, h, w)
                if is_left:
                    pose.left_hand = found
                else:
                    pose.right_hand = found
        if face:
            box = face_box(pixels, h, w)
            if box is not None:
                x, y, side = box
                crop = bgr[y:y + side, x:x + side]
                peaks = face_peaks(face_heatmaps(_load(FACE_FILE, face_net), crop))
                if peaks.ndim == 2 and peaks.shape[1] == 2:
                    pose.face = _crop_keypoints(peaks, x, y, h, w)
        poses.append(pose)
    return poses


def draw_poses(poses: Sequence[Pose], height: int, width: int, body: bool = True, hands: bool = True,
               face: bool = True) -> Image.Image:
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    for pose in poses:
        if body:
            draw_body(draw, pose.body, height, width)
        if hands:
            draw_hand(draw, pose.left_hand, height, width)
            draw_hand(draw, pose.right_hand, height, width)
        if face:
            draw_face(draw, pose.face, height, width)
    return canvas


def _module(name: str, body: bool, hands: bool, face: bool, with_resolution: bool) -> Module:
    def run(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
        array = np.asarray(resize_short_side(image, res).convert("RGB"))
        poses = detect(array, hands, face)
        return draw_poses(poses, array.shape[0], array.shape[1], body, hands, face)

    # The extension shows the resolution slider only on openpose and openpose_full (the others still use it).
    return Module(name, name, RESOLUTION if with_resolution else None, run=run)


MODULES = [
    _module("openpose", True, False, False, True),
    _module("openpose_face", True, False, True, False),
    _module("openpose_faceonly", False, False, True, False),
    _module("openpose_full", True, True, True, True),
    _module("openpose_hand", True, True, False, False),
]
