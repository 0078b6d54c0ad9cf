"""``shuffle`` (content shuffle) and ``color`` (UI label ``t2ia_color_grid``), the extension's two
network-free colour maps, and the OpenCV resampling they rest on (reimplemented: no OpenCV at run time;
tests/test_preprocessors_lineart.py compares both with the extension's OpenCV calls).

- ``shuffle`` moves each pixel by a smooth random flow field (two noise "disks": uniform noise on a grid
  256 pixels apart, bicubic in between), so the map keeps the image's colours and textures but not its
  layout. The extension draws the noise from numpy's global generator, unseeded, so each run differs; here
  the generator is seeded from the request (``shuffle_seed``: the scaled image's pixels and size), so the
  same request gives the same map. Like the extension it shows no resolution slider (512 by default, or the
  pixel-perfect resolution); a processor_res sent through the API is honoured, where the extension's bound
  check puts it back to 512.
- ``color``: the image shrunk 64 times with bicubic, then blown back up with nearest neighbour: a grid of
  64-pixel colour blocks.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from app.engine.preprocessors.common import RESOLUTION, Module, resize_short_side

_A = np.float32(-0.75)  # OpenCV's bicubic parameter (PIL's is -0.5)


def _cubic_weights(src: int, dst: int) -> np.ndarray:
    """The (dst, src) matrix of OpenCV's INTER_CUBIC along one axis: 4 taps around (d + 0.5) * scale - 0.5,
    coefficients in float32 as OpenCV computes them, out-of-range taps on the edge pixel."""
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos)
    t = pos - start
    one = np.float32(1)
    c0 = ((_A * (t + one) - 5 * _A) * (t + one) + 8 * _A) * (t + one) - 4 * _A
    c1 = ((_A + 2) * t - (_A + 3)) * t * t + one
    c2 = ((_A + 2) * (one - t) - (_A + 3)) * (one - t) * (one - t) + one
    coeffs = np.stack([c0, c1, c2, one - c0 - c1 - c2], axis=1).astype(np.float64)
    taps = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
    matrix = np.zeros((dst, src))
    np.add.at(matrix, (np.repeat(np.arange(dst), 4), taps.ravel()), coeffs.ravel())
    return matrix


def resize_cubic(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(array, size, interpolation=cv2.INTER_CUBIC)`` for an HW or HWC array, ``size`` (w, h).
    Floats come back float64; uint8 rounds back to uint8 (OpenCV's float32 sums can differ by 1 level)."""
    w, h = size
    is_bytes = array.dtype == np.uint8
    rows, cols = _cubic_weights(array.shape[0], h), _cubic_weights(array.shape[1], w)
    out = np.einsum("ys,sx...->yx...", rows, np.einsum("xs,ys...->yx...", cols, array.astype(np.float64)))
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8) if is_bytes else out


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(array, size, interpolation=cv2.INTER_NEAREST)``: pixel floor(d * src / dst)."""
    w, h = size
    ys = np.minimum(np.floor(np.arange(h) * (1.0 / (h / array.shape[0]))).astype(int), array.shape[0] - 1)
    xs = np.minimum(np.floor(np.arange(w) * (1.0 / (w / array.shape[1]))).astype(int), array.shape[1] - 1)
    return array[ys][:, xs]


def noise_disk(rng: np.random.RandomState, h: int, w: int, spacing: int = 256) -> np.ndarray:
    """The extension's ``make_noise_disk`` (one channel): uniform noise every ``spacing`` pixels, bicubic
    in between, cropped to (h, w) and scaled to 0..1."""
    noise = rng.uniform(low=0, high=1, size=(h // spacing + 2, w // spacing + 2))
    noise = resize_cubic(noise, (w + 2 * spacing, h + 2 * spacing))[spacing:spacing + h, spacing:spacing + w]
    noise -= noise.min()
    return noise / noise.max()


def remap_linear(array: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """``cv2.remap(array, map, None, cv2.INTER_LINEAR)`` (OpenCV 5: exact positions; 4.x rounded them to
    1/32 pixel) for a uint8 HWC array and maps inside it; neighbours past the last row or column are black
    (they only ever get weight 0 here)."""
    h, w = array.shape[:2]
    x0, y0 = np.floor(map_x).astype(np.int64), np.floor(map_y).astype(np.int64)
    fx, fy = (map_x - x0).astype(np.float64), (map_y - y0).astype(np.float64)
    source = np.pad(array.astype(np.float64), ((0, 1), (0, 1), (0, 0)))  # the constant (0) border
    total = np.zeros(map_x.shape + array.shape[2:])
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            total += (wy * wx)[..., None] * source[np.clip(y0 + dy, 0, h), np.clip(x0 + dx, 0, w)]
    return np.floor(total + 0.5).clip(0, 255).astype(np.uint8)


def shuffle_seed(array: np.ndarray) -> int:
    """The seed of a shuffle: the first 4 bytes of the SHA-256 of the scaled image's size and pixels."""
    digest = hashlib.sha256(repr(array.shape).encode() + np.ascontiguousarray(array).tobytes()).digest()
    return int.from_bytes(digest[:4], "little")


def content_shuffle(array: np.ndarray, seed: int) -> np.ndarray:
    """The extension's ContentShuffleDetector with numpy's generator seeded by ``seed`` (the x noise
    drawn first): each pixel comes from (x noise * (w-1), y noise * (h-1))."""
    h, w = array.shape[:2]
    rng = np.random.RandomState(seed)
    map_x = (noise_disk(rng, h, w) * float(w - 1)).astype(np.float32)
    map_y = (noise_disk(rng, h, w) * float(h - 1)).astype(np.float32)
    return remap_linear(array, map_x, map_y)


def color_grid(array: np.ndarray) -> np.ndarray:
    """The extension's ``apply_color`` on an already scaled image: bicubic down to (w // 64, h // 64),
    nearest neighbour back up."""
    h, w = array.shape[:2]
    return resize_nearest(resize_cubic(array, (max(1, w // 64), max(1, h // 64))), (w, h))


def _run_shuffle(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    array = np.asarray(resize_short_side(image, res))
    return Image.fromarray(content_shuffle(array, shuffle_seed(array)))


def _run_color(image: Image.Image, res: int, a: float, b: float) -> Image.Image:
    return Image.fromarray(color_grid(np.asarray(resize_short_side(image, res))))


MODULES = [
    Module("shuffle", "shuffle", run=_run_shuffle),
    Module("color", "t2ia_color_grid", RESOLUTION, run=_run_color),
]
