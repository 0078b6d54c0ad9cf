"""Pick the device and dtype: CUDA fp16, Apple MPS fp16, else CPU fp32."""
from __future__ import annotations

from dataclasses import dataclass

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
    if kind == "cpu" and dtype == "float16":
        raise ValueError("dtype: fp16 is not supported on the CPU; use fp32 or bf16 (got 'fp16')")
    return Placement(device, dtype)
