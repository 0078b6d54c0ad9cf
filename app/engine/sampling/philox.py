"""Normal draws from the Philox4x32-10 counter generator, reproducing A1111 1.10's ``modules/rng_philox.py``
(``Generator``): the numbers torch.randn makes on a CUDA device, computed with numpy on any machine.

Element i of a draw is the first Box-Muller output of the Philox block with counter (offset, 0, i, 0) and key
(seed low 32 bits, seed high 32 bits); each draw then moves the offset on by one, as a small CUDA randn moves its
generator by one block. The Box-Muller step runs in float64 and rounds to float32 at the end, as A1111's numpy
promotion does, so the "NV" source gives A1111's numbers bit for bit.
"""
from __future__ import annotations

import numpy as np

_MUL = (0xD2511F53, 0xCD9E8D57)
_BUMP = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF
# curand's Box-Muller constants, as float32 (then widened: A1111's uint32 * float32 arrays compute in float64).
_INV_2POW32 = np.float64(np.float32(2.3283064e-10))
_INV_2POW32_2PI = np.float64(np.float32(2.3283064e-10 * 6.2831855))
_HALF_INV_2POW32 = np.float64(np.float32(2.3283064e-10) / np.float32(2))
_HALF_INV_2POW32_2PI = np.float64(np.float32(2.3283064e-10 * 6.2831855) / np.float32(2))


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """The Philox4x32-10 bijection of a (4, n) uint32 counter array under one 64-bit key split in two words."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + _BUMP[0]) & _MASK32, (k1 + _BUMP[1]) & _MASK32
        p0, p1 = c0 * np.uint64(_MUL[0]), c2 * np.uint64(_MUL[1])
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & np.uint64(_MASK32),
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & np.uint64(_MASK32))
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def _box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u = x.astype(np.float64) * _INV_2POW32 + _HALF_INV_2POW32
    v = y.astype(np.float64) * _INV_2POW32_2PI + _HALF_INV_2POW32_2PI
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class Generator:
    """A seeded stream of standard normal float32 arrays; ``offset`` counts the draws made so far."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        block = philox4x32_10(counter, (self.seed & _MASK32, self.seed >> 32))
        return _box_muller_first(block[0], block[1]).reshape(shape)
