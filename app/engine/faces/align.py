"""Faces cut out to the 512x512 FFHQ layout the restorers were trained on, and
pasted back (facexlib's FaceRestoreHelper, as A1111 uses it, without OpenCV).

1. A similarity transform (rotation, uniform scale, shift) maps the five
   detected landmarks onto facexlib's template, by least squares (Umeyama).
2. The face is warped out with that transform; outside the image it is
   filled with facexlib's border grey.
3. The restored face goes back through the inverse transform, shown through
   a mask of the warped square shrunk and blurred in proportion to the face's
   size (facexlib's soft mask without its face-parsing network).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

FACE_SIZE = 512
# facexlib's 5-point template for 512x512 faces: left eye, right eye, nose, mouth corners.
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
BORDER = (135, 133, 132)  # facexlib's warpAffine border value (BGR 132, 133, 135)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform taking ``src`` points nearest to ``dst`` (least squares)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def _warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill: int | tuple) -> Image.Image:
    """``image`` moved by ``matrix`` (output = matrix @ input) onto a canvas of ``size``. PIL asks for
    the inverse: for each output pixel, where to read in the input."""
    back = invert(matrix)
    return image.transform(size, Image.Transform.AFFINE, data=tuple(back.reshape(-1)),
                           resample=Image.Resampling.BILINEAR, fillcolor=fill)


def align(image: Image.Image, landmarks: tuple[tuple[float, float], ...]) -> tuple[Image.Image, np.ndarray]:
    """The face warped to FACE_SIZE x FACE_SIZE, and the transform used."""
    matrix = similarity(np.asarray(landmarks, dtype=np.float64), TEMPLATE)
    return _warp(image.convert("RGB"), matrix, (FACE_SIZE, FACE_SIZE), BORDER), matrix


def paste(image: Image.Image, face: Image.Image, matrix: np.ndarray) -> Image.Image:
    """``image`` with the restored ``face`` put back where ``align`` took it from, edges softened."""
    back = invert(matrix)
    size = image.size
    layer = _warp(face.convert("RGB"), back, size, 0)
    # facexlib erodes the warped square by 2 px and then by twice a twentieth of the face's side, and
    # blurs as wide. The square is convex, so eroding it is insetting it: done in face space (scaled).
    scale = float(np.sqrt(abs(np.linalg.det(back[:, :2]))))  # image pixels per face pixel
    edge = int(FACE_SIZE * scale) // 20
    inset = min(int(np.ceil((2 + 2 * edge) / max(scale, 1e-6))), FACE_SIZE // 2 - 1)
    square = Image.new("L", face.size, 0)
    square.paste(255, (inset, inset, face.size[0] - inset, face.size[1] - inset))
    mask = _warp(square, back, size, 0)
    if edge:
        mask = mask.filter(ImageFilter.GaussianBlur(edge))
    return Image.composite(layer, image.convert("RGB"), mask)
