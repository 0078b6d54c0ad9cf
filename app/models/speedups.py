"""Optional speed and memory settings of a diffusers pipeline, by name.

The benchmark measures each one (``python -m app.bench --options ...``);
names joined with ``+`` are applied together, e.g. ``channels_last+fused_qkv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Speedup:
    name: str
    help: str
    apply: Callable  # (pipe, device) -> pipe
    cuda_only: bool = False


def _sdpa(pipe, device):
    return pipe  # PyTorch 2's scaled_dot_product_attention is diffusers' default


def _no_sdpa(pipe, device):
    from diffusers.models.attention_processor import AttnProcessor

    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())
    return pipe


def _channels_last(pipe, device):
    import torch

    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    return pipe


def _fused_qkv(pipe, device):
    pipe.fuse_qkv_projections()
    return pipe


def _compile(mode: str | None):
    def apply(pipe, device):
        import torch

        pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
        return pipe

    return apply


def _vae_tiling(pipe, device):
    pipe.vae.enable_tiling()
    return pipe


def _attention_slicing(pipe, device):
    pipe.enable_attention_slicing()
    return pipe


def _cpu_offload(pipe, device):
    pipe.enable_model_cpu_offload(device=device)
    return pipe


SPEEDUPS: dict[str, Speedup] = {s.name: s for s in (
    Speedup("sdpa", "PyTorch SDPA attention (the default; the baseline)", _sdpa),
    Speedup("no_sdpa", "diffusers' plain attention, to show what SDPA saves", _no_sdpa),
    Speedup("channels_last", "UNet and VAE weights in channels-last memory format", _channels_last),
    Speedup("fused_qkv", "one matmul for query, key and value (pipe.fuse_qkv_projections)", _fused_qkv),
    Speedup("compile", "torch.compile(unet, fullgraph=True), default mode", _compile(None), cuda_only=True),
    Speedup("compile_max", "torch.compile(unet, mode='max-autotune', fullgraph=True)", _compile("max-autotune"),
            cuda_only=True),
    Speedup("vae_tiling", "decode the VAE in tiles (only above its 768 px sample size)", _vae_tiling),
    Speedup("attention_slicing", "attention computed in slices (less memory, slower)", _attention_slicing),
    Speedup("cpu_offload", "model CPU offload: each model moves to the GPU only while it runs", _cpu_offload,
            cuda_only=True),
)}


def parse_option(text: str) -> tuple[str, ...]:
    """``"channels_last+fused_qkv"`` -> its speedup names; ValueError naming a bad one."""
    names = tuple(part.strip() for part in text.split("+") if part.strip())
    if not names:
        raise ValueError(f"options: empty option in {text!r}")
    for name in names:
        if name not in SPEEDUPS:
            raise ValueError(f"options: unknown option {name!r} (known: {', '.join(SPEEDUPS)})")
    return names


def apply_speedups(pipe, names: tuple[str, ...], device: str):
    """Apply the named settings in order. ``cpu_offload`` expects the pipeline
    still on the CPU; every other one expects it already on ``device``."""
    for name in names:
        pipe = SPEEDUPS[name].apply(pipe, device)
    return pipe
