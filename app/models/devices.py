"""Pick the device and dtype: CUDA fp16, Apple MPS fp16, else CPU fp32."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)

DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp32": "float32", "float32": "float32"}


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda", "cuda:1", "mps", "cpu"
    dtype: str  # "float16", "bfloat16", "float32"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Resolve "auto" choices; raise ValueError naming the bad option."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    kind = device.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device: must be auto, cuda, cuda:N, mps or cpu (got {device!r})")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but this machine has no CUDA GPU")
    if dtype == "auto":
        # fp16 halves memory and is what SD 2.1 is published in; CPUs lack fast fp16 kernels.
        dtype = "float32" if kind == "cpu" else "float16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be auto, fp16, bf16 or fp32 (got {dtype!r})")
    dtype = DTYPES[dtype]
    if kind == "cuda" and dtype == "bfloat16" and not has_native_bf16(device):
        logger.warning("bf16 on this GPU (compute capability %s) is emulated and slow; fp16 is the fast choice",
                       ".".join(map(str, _capability(device))))
    if kind == "cpu" and dtype == "float16":
        raise ValueError("dtype: fp16 is not supported on the CPU; use fp32 or bf16 (got 'fp16')")
    return Placement(device, dtype)


def has_native_bf16(device: str = "cuda") -> bool:
    """True on a CUDA GPU of compute capability 8.0 or newer (Ampere: A100,
    RTX 30xx, L4, H100), which computes in bf16 natively. Not
    ``torch.cuda.is_bf16_supported()``: that also says True on a T4 (7.5,
    Colab's free GPU), where bf16 is emulated and several times slower than fp16."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return _capability(device)[0] >= 8


def _capability(device: str) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(torch.device(device)))


_release_hooks: list[Callable[[], None]] = []


def on_free_memory(release: Callable[[], None]) -> None:
    """``release`` drops a cache of models (upscalers, face restorers) whenever memory is freed:
    those caches live in higher layers, which this one must not import."""
    if release not in _release_hooks:
        _release_hooks.append(release)


def free_memory(device: str) -> None:
    """Give memory that nothing holds any more back to the device (after an
    out-of-memory error, or when a model is dropped)."""
    import gc

    import torch

    for release in _release_hooks:
        release()
    gc.collect()
    _trim_heap()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim): a dropped model's
    CPU tensors are freed, but glibc keeps the pages for reuse, so a model switch on a Colab
    runtime would otherwise hold tens of MB more than one model. Nothing to do elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)
