"""A T4 estimate per fast mode (docs/speed.md), from the FLOPs and memory traffic the modes really run:

    python -m app.cli.bench_estimate [--size 768] [--steps 25] [--json]

The method:

1. The full SD 2.1 architecture (``app.models.sd21``) is built on the meta device in fp16: no weights,
   no arithmetic, only shapes. Every aten op a UNet call makes (guidance batch of 2, as the engine runs
   it) and the VAE decode go through a dispatch mode that counts, per op, its FLOPs (torch's
   ``flop_counter`` formulas: matmuls, convolutions, attention) and its bytes (every tensor it reads
   and writes; views move nothing). This is eager PyTorch's traffic, op by op, unfused, except
   attention, counted as the one fused SDPA kernel the GPU runs (q, k, v in, the output out).
2. Each op's time on the card is its roofline, ``max(flops / compute, bytes / bandwidth)``, summed.
   T4: 65 TFLOP/s fp16 tensor peak, but its 70 W cap holds a sustained GEMM to about 24 TFLOP/s
   (NVIDIA forum thread 264462); 320 GB/s peak bandwidth, about 240 achieved by streaming kernels.
3. The roofline is what the kernels could do, not what they do. It is scaled by one factor: the
   ratio of a published T4 time to the same roofline of that run, SD 1.5 at 512 px with SDPA,
   6.9 it/s (diffusers' torch2.0 docs). The scaled figure is the estimate; both are printed.

A mode changes the calls, not the cards: DeepCache's shallow calls and ToMe's merged attention are
counted as they run (app/engine/sampling/deepcache.py, app/engine/tome.py); fewer steps, fewer calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

T4_COMPUTE = 24e12  # FLOP/s, fp16 tensor cores under the 70 W cap
T4_BANDWIDTH = 240e9  # bytes/s achieved (320 peak)
# The calibration run: SD 1.5 at 512 px (64x64 latents), guidance batch 2, SDPA: 6.9 it/s on a T4.
T4_SD15_512_STEP_S = 1 / 6.9
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False,
                 upcast_attention=False)


@dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    roofline_s: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.roofline_s + other.roofline_s)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.roofline_s * k)


def _counter() -> Any:
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    def nbytes(*values: Any) -> float:
        tensors = [t for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor)]
        return float(sum(t.numel() * t.element_size() for t in tensors))

    class Roofline(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.cost = Cost()
            self.paused = False

        def add(self, flops: float, moved: float) -> None:
            self.cost += Cost(flops, moved, max(flops / T4_COMPUTE, moved / T4_BANDWIDTH))

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if self.paused:
                return out
            count = flop_registry.get(func._overloadpacket)
            flops = float(count(*args, **kwargs, out_val=out)) if count is not None else 0.0
            views = any(r.alias_info is not None for r in func._schema.returns)  # a view moves nothing
            self.add(flops, 0.0 if views else nbytes(args, kwargs, out))
            return out

    class FusedAttention(TorchFunctionMode):
        """SDPA as the GPU runs it: one fused kernel that reads q, k, v and writes the output (the meta
        device would count the math fallback's score matrices, which a fused kernel never writes)."""

        def __init__(self, roofline: Roofline) -> None:
            super().__init__()
            self.roofline = roofline

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is not torch.nn.functional.scaled_dot_product_attention:
                return func(*args, **kwargs)
            self.roofline.paused = True
            try:
                out = func(*args, **kwargs)
            finally:
                self.roofline.paused = False
            q, k = args[0], args[1]
            # QK^T and AV: 2 FLOPs per multiply-add each
            self.roofline.add(4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1], nbytes(args[:3], out))
            return out

    roofline = Roofline()
    return roofline, FusedAttention(roofline)


def measure(fn: Any) -> Cost:
    import torch

    roofline, attention = _counter()
    with torch.no_grad(), roofline, attention:
        fn()
    return roofline.cost


def _unet(config: dict) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config).to(torch.float16).eval()


def _inputs(latent: int, context: Any, device: str = "meta") -> tuple:
    import torch

    return (torch.empty(2, 4, latent, latent, device=device, dtype=torch.float16),
            torch.full((2,), 500.0, device=device), torch.empty(2, 77, context, device=device, dtype=torch.float16))


def unet_costs(size: int, tome_ratio: float = 0.0) -> dict[str, Cost]:
    """One guided UNet call at ``size`` px: full, and DeepCache's shallow call."""
    import torch

    from app.engine.sampling.deepcache import FeatureCache
    from app.engine.tome import token_merging
    from app.models.sd21 import UNET_CONFIG

    unet = _unet(UNET_CONFIG)
    x, t, cond = _inputs(size // 8, UNET_CONFIG["cross_attention_dim"])
    cache = FeatureCache(2)
    with token_merging(unet, tome_ratio, 0):
        full = measure(lambda: cache.run(unet, x, t, cond, {}, 0, 0))
        shallow = measure(lambda: cache.run(unet, x, t, cond, {}, 1, 0))
    assert cache.shallow_calls == 1 and isinstance(cache.features[0], torch.Tensor)
    return {"full": full, "shallow": shallow}


def vae_cost(size: int) -> Cost:
    import torch
    from diffusers import AutoencoderKL

    from app.models.sd21 import VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**VAE_CONFIG).to(torch.float16).eval()
    z = torch.empty(1, 4, size // 8, size // 8, device="meta", dtype=torch.float16)
    return measure(lambda: vae.decode(z, return_dict=False))


def calibration() -> float:
    """Published T4 seconds per step over the roofline's, on the SD 1.5 512 px run."""
    from app.models.sd21 import UNET_CONFIG

    config = {**UNET_CONFIG, **SD15_UNET}
    unet = _unet(config)
    x, t, cond = _inputs(64, config["cross_attention_dim"])
    return T4_SD15_512_STEP_S / measure(lambda: unet(x, t, encoder_hidden_states=cond, return_dict=False)).roofline_s


def modes(steps: int) -> list[tuple[str, int, int, float]]:
    """(name, steps, DeepCache interval, ToMe ratio) of the estimated modes."""
    return [("full", steps, 0, 0.0), ("deepcache=2", steps, 2, 0.0), ("deepcache=3", steps, 3, 0.0),
            ("deepcache=5", steps, 5, 0.0), ("tome=0.5", steps, 0, 0.5), ("deepcache=3+tome=0.5", steps, 3, 0.5),
            (f"steps={round(steps * 0.6)}", round(steps * 0.6), 0, 0.0),
            ("sampler=UniPC+steps=10", 10, 0, 0.0)]


def estimate(size: int = 768, steps: int = 25) -> dict:
    factor = calibration()
    vae = vae_cost(size)
    per_ratio = {r: unet_costs(size, r) for r in {0.0, 0.5}}
    rows = []
    for name, n, interval, ratio in modes(steps):
        full_calls = n if not interval else math.ceil(n / interval)
        calls = per_ratio[ratio]["full"] * full_calls + per_ratio[ratio]["shallow"] * (n - full_calls) + vae
        rows.append({"mode": name, "steps": n, "full_unet_calls": full_calls, "tflop": calls.flops / 1e12,
                     "gb_moved": calls.bytes / 1e9, "roofline_s": calls.roofline_s,
                     "t4_estimate_s": calls.roofline_s * factor})
    return {"size": size, "steps": steps, "calibration_factor": factor, "t4_compute_tflops": T4_COMPUTE / 1e12,
            "t4_bandwidth_gbs": T4_BANDWIDTH / 1e9,
            "unet_call": {f"tome={r:g}": {k: {"tflop": c.flops / 1e12, "gb_moved": c.bytes / 1e9}
                                          for k, c in costs.items()} for r, costs in per_ratio.items()},
            "vae_decode": {"tflop": vae.flops / 1e12, "gb_moved": vae.bytes / 1e9}, "modes": rows}


def to_markdown(report: dict) -> str:
    lines = [f"T4 estimate, SD 2.1 at {report['size']} px, guidance on, fp16 (`python -m app.cli.bench_estimate`; "
             f"roofline at {report['t4_compute_tflops']:.0f} TFLOP/s and {report['t4_bandwidth_gbs']:.0f} GB/s, "
             f"scaled by {report['calibration_factor']:.2f} to the published SD 1.5 512 px T4 figure):", "",
             "| mode | steps | full UNet calls | TFLOP | GB moved | roofline s | T4 estimate s |",
             "|---|---|---|---|---|---|---|"]
    for row in report["modes"]:
        lines.append(f"| {row['mode']} | {row['steps']} | {row['full_unet_calls']} | {row['tflop']:.1f} "
                     f"| {row['gb_moved']:.0f} | {row['roofline_s']:.2f} | {row['t4_estimate_s']:.1f} |")
    return "\n".join(lines) + "\n"
