"""OpenCV's resize (INTER_AREA down, INTER_LANCZOS4 up) and padding as the pose
networks' pre- and post-processing uses them, on numpy (no OpenCV at run time)."""
from __future__ import annotations

import math

import numpy as np

# --- OpenCV's resize, separable: out = Ay @ x @ Ax^T per channel ------------------------------------------

def _lanczos4_matrix(src: int, dst: int) -> np.ndarray:
    """INTER_LANCZOS4 weights (dst, src): 8 taps around the pixel-centre mapped position, border replicated."""
    scale = src / dst
    fx = (np.arange(dst) + 0.5) * scale - 0.5
    sx = np.floor(fx).astype(int)
    frac = fx - sx
    taps = np.arange(8)
    d = frac[:, None] + 3 - taps[None, :]
    weights = np.sinc(d) * np.sinc(d / 4)
    weights /= weights.sum(axis=1, keepdims=True)
    exact = frac < np.finfo(np.float32).eps  # on a source pixel: that pixel alone
    weights[exact] = (taps == 3).astype(float)
    cols = np.clip(sx[:, None] - 3 + taps[None, :], 0, src - 1)
    matrix = np.zeros((dst, src))
    np.add.at(matrix, (np.repeat(np.arange(dst), 8), cols.ravel()), weights.ravel())
    return matrix


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """INTER_AREA weights (dst, src) for shrinking: each output pixel averages the source area it covers."""
    scale = src / dst
    matrix = np.zeros((dst, src))
    for dx in range(dst):
        start, end = dx * scale, (dx + 1) * scale
        cell = min(scale, src - start)
        first, last = math.ceil(start), min(math.floor(end), src - 1)
        first = min(first, last)
        if first - start > 1e-3:
            matrix[dx, first - 1] += (first - start) / cell
        matrix[dx, first:last] += 1 / cell
        if end - last > 1e-3:
            matrix[dx, last] += min(min(end - last, 1.0), cell) / cell
    return matrix


def resize(x: np.ndarray, height: int, width: int, factor: float | None = None) -> np.ndarray:
    """``cv2.resize`` to (height, width) as the annotator's ``smart_resize`` picks it: INTER_AREA when the
    size shrinks (by the sum of the sides, or by ``factor`` where the annotator scaled by one), else
    INTER_LANCZOS4. uint8 in, uint8 out (rounded)."""
    h, w = x.shape[:2]
    if (h, w) == (height, width):
        return x.copy()
    shrink = (factor if factor is not None else (height + width) / (h + w)) < 1
    build = _area_matrix if shrink else _lanczos4_matrix
    from scipy.sparse import csr_matrix

    # A handful of taps per output pixel: sparse matrices, rows first, then columns.
    ay, ax = csr_matrix(build(h, height).astype(np.float32)), csr_matrix(build(w, width).astype(np.float32))
    rows = (ay @ x.astype(np.float32).reshape(h, -1)).reshape(height, w, -1)
    cols = ax @ np.ascontiguousarray(rows.transpose(1, 0, 2)).reshape(w, -1)
    out = np.ascontiguousarray(cols.reshape(width, height, -1).transpose(1, 0, 2)).reshape((height, width) + x.shape[2:])
    if x.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(x.dtype)


def _pad_right_down(image: np.ndarray, stride: int, value: int) -> tuple[np.ndarray, int, int]:
    """The image padded with ``value`` at the bottom and right to multiples of ``stride``."""
    h, w = image.shape[:2]
    pad_h, pad_w = -h % stride, -w % stride
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=value)
    return padded, pad_h, pad_w
