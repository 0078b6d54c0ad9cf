"""A1111 1.10's timestep samplers: DDIM, DDIM CFG++, PLMS, UniPC and their txt2img/img2img drivers.

Reproduces modules/sd_samplers_timesteps_impl.py (ddim, ddim_cfgpp, plms, unipc), modules/sd_samplers_timesteps.py
(CompVisTimestepsDenoiser, CompVisTimestepsVDenoiser, CompVisSampler.get_timesteps / sample / sample_img2img) and
sd_samplers_common.setup_img2img_steps. The solver behind `unipc` is in unipc.py.

`model(x, t, **extra_args)` returns eps after CFG and carries `alphas_cumprod` (float32 like A1111's sd_model),
`cond_scale_multiplier`, `need_last_noise_uncond` and `last_noise_uncond` (A1111's CFGDenoiserTimesteps).
A1111 draws the DDIM noise with k-diffusion's hijacked torch.randn_like (the image RNG), once per step even at eta 0;
here each draw is `noise_sampler(t, t_prev)` (the two timesteps as ints), torch.randn_like(x) without one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.engine.sampling.unipc import DiscreteVPSchedule, UniPCSolver

NoiseSampler = Callable[[Any, Any], Tensor]
Callback = Callable[[dict[str, Any]], None]


def get_timesteps(steps: int, device: torch.device | str | None = None, *,
                  discard_next_to_last_sigma: bool = False) -> Tensor:
    """CompVisSampler.get_timesteps: range(0, 1000, 1000 // steps) + 1, clipped to [0, 999], int64.

    The count is len(range(...)), which exceeds `steps` when 1000 is not a multiple of it (7 steps give 8).
    """
    steps += 1 if discard_next_to_last_sigma else 0
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=device) + 1, 0, 999)


class TimestepsDenoiser:
    """The UNet as an eps model of integer-like timesteps (CompVisTimestepsDenoiser / CompVisTimestepsVDenoiser).

    For v-prediction, eps = sqrt(a[t]) * v + sqrt(1 - a[t]) * x with t truncated to int. The two square-root
    tables are LDM's buffers: computed in float64 and stored as float32; A1111 in half precision converts them to
    float16 with the UNet (model.half() spares only alphas_cumprod), so pass buffer_dtype=torch.float16 then.
    Pass alphas_cumprod in float64 (as LDM builds it from the betas) for the buffers to be exact.
    """

    def __init__(self, alphas_cumprod: Tensor, prediction: str, apply_model: Callable[..., Tensor], *,
                 buffer_dtype: torch.dtype = torch.float32):
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.alphas_cumprod = alphas_cumprod
        self.prediction = prediction
        self.apply_model = apply_model
        ac = alphas_cumprod.double()
        self.sqrt_alphas_cumprod = ac.sqrt().float().to(buffer_dtype)
        self.sqrt_one_minus_alphas_cumprod = (1 - ac).sqrt().float().to(buffer_dtype)

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        out = self.apply_model(x, t, **kwargs)
        if self.prediction == "epsilon":
            return out
        idx = t.to(torch.int)
        shape = (-1,) + (1,) * (x.dim() - 1)
        sqrt_a = self.sqrt_alphas_cumprod.to(x.device)[idx].reshape(shape)
        sqrt_1ma = self.sqrt_one_minus_alphas_cumprod.to(x.device)[idx].reshape(shape)
        return sqrt_a * out + sqrt_1ma * x


def pred_x0(alphas_cumprod: Tensor, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """CFGDenoiserTimesteps.get_pred_x0 (the live-preview latent): (x - sqrt(1 - a) eps) / sqrt(a), a = a[int(t)]."""
    a_t = alphas_cumprod[t.to(alphas_cumprod.device, int)].to(x.device).reshape((-1,) + (1,) * (x.dim() - 1))
    return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


class _Schedule:
    """Per-step constants shared by DDIM and PLMS; a_prev of the first timestep is a[0] (A1111 pads with 0)."""

    def __init__(self, model: Any, x: Tensor, timesteps: Tensor, eta: float = 0.0):
        ac = model.alphas_cumprod
        self.prev_timesteps = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
        self.alphas = ac[timesteps.to(ac.device)]
        self.alphas_prev = ac[self.prev_timesteps.to(ac.device)].to(torch.float64 if x.device.type != "mps" else torch.float32)
        self.sqrt_one_minus_alphas = torch.sqrt(1 - self.alphas)
        # A1111 divides a numpy array by the tensor 1 - a, which torch's __rtruediv__ turns into a product with the
        # reciprocal taken in a's dtype; the rest is float64, and the root is numpy's (torch's CPU sqrt can differ
        # by an ulp).
        alphas = self.alphas.cpu()
        prev = self.alphas_prev.cpu().double()
        variance = (1 - prev) * (1 - alphas).reciprocal().double() * (1 - alphas.double() / prev)
        self.sigmas = eta * torch.from_numpy(np.sqrt(variance.numpy()))
        self.ones = x.new_ones((x.shape[0],) + (1,) * (x.dim() - 1))

    def at(self, values: Tensor, index: int) -> Tensor:
        return values[index].item() * self.ones


def _ddim_loop(model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None, callback: Callback | None,
               eta: float, noise_sampler: NoiseSampler | None, cfgpp: bool) -> Tensor:
    sched = _Schedule(model, x, timesteps, eta)
    if cfgpp:
        model.cond_scale_multiplier = 1 / 12.5
        model.need_last_noise_uncond = True
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        direction = model.last_noise_uncond if cfgpp else e_t

        a_t, a_prev = sched.at(sched.alphas, index), sched.at(sched.alphas_prev, index)
        sigma_t = sched.at(sched.sigmas, index)
        sqrt_one_minus_at = sched.at(sched.sqrt_one_minus_alphas, index)

        x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        t_now, t_prev = int(timesteps[index]), int(sched.prev_timesteps[index])
        noise = sigma_t * (torch.randn_like(x) if noise_sampler is None else noise_sampler(t_now, t_prev))
        x = a_prev.sqrt() * x0 + dir_xt + noise

        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


@torch.no_grad()
def ddim(model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None = None, callback: Callback | None = None,
         disable: bool | None = None, eta: float = 0.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """sd_samplers_timesteps_impl.ddim: len(timesteps) - 1 model calls, from the last timestep down to the second."""
    return _ddim_loop(model, x, timesteps, extra_args, callback, eta, noise_sampler, cfgpp=False)


@torch.no_grad()
def ddim_cfgpp(model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None, eta: float = 0.0,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
    """sd_samplers_timesteps_impl.ddim_cfgpp: DDIM whose direction term is the uncond eps, CFG scale / 12.5."""
    return _ddim_loop(model, x, timesteps, extra_args, callback, eta, noise_sampler, cfgpp=True)


@torch.no_grad()
def plms(model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None = None, callback: Callback | None = None,
         disable: bool | None = None) -> Tensor:
    """sd_samplers_timesteps_impl.plms: len(timesteps) model calls (the first step evaluates twice)."""
    sched = _Schedule(model, x, timesteps)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_eps: list[Tensor] = []

    def step_from(x: Tensor, e_t: Tensor, index: int) -> tuple[Tensor, Tensor]:
        a_t, a_prev = sched.at(sched.alphas, index), sched.at(sched.alphas_prev, index)
        x0 = (x - sched.at(sched.sqrt_one_minus_alphas, index) * e_t) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * e_t, x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)

        if not old_eps:
            # no history yet: average eps here and at the Euler-predicted next point (Heun-like warm-up)
            x_next, _ = step_from(x, e_t, index)
            t_next = timesteps[max(index - 1, 0)].item() * s_in
            e_prime = (e_t + model(x_next, t_next, **extra_args)) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24

        x, x0 = step_from(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) > 3:
            old_eps.pop(0)

        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


@torch.no_grad()
def unipc(model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None = None, callback: Callback | None = None,
          disable: bool | None = None, is_img2img: bool = False, *, order: int = 3, variant: str = "bh1",
          skip_type: str = "time_uniform", lower_order_final: bool = True) -> Tensor:
    """sd_samplers_timesteps_impl.unipc (UniPCCFG): len(timesteps) steps and model calls on UniPC's own time grid.

    Only the count and, for img2img, the start (last timestep / 1000 + 1 / 1000) come from `timesteps`. The
    keyword options are A1111's uni_pc_order / uni_pc_variant / uni_pc_skip_type / uni_pc_lower_order_final.
    The callback's "denoised" is None after the last step (no corrector evaluation there), as in A1111.
    """
    extra_args = {} if extra_args is None else extra_args
    index = 0

    def after_update(x_now: Tensor, model_x: Tensor | None) -> None:
        nonlocal index
        if callback is not None:
            callback({"x": x_now, "i": index, "sigma": 0, "sigma_hat": 0, "denoised": model_x})
        index += 1

    solver = UniPCSolver(lambda x_in, t_in: model(x_in, t_in, **extra_args), DiscreteVPSchedule(model.alphas_cumprod),
                         variant=variant, after_update=after_update)
    # A1111 computes the start in float32 from the int timestep (and notes it is likely a little off).
    t_start = (timesteps[-1] / 1000 + 1 / 1000).item() if is_img2img else None
    return solver.sample(x, steps=len(timesteps), t_start=t_start, order=order, skip_type=skip_type,
                         lower_order_final=lower_order_final)


def img2img_steps(steps: int, strength: float, fixed_steps: int | None = None) -> tuple[int, int]:
    """sd_samplers_common.setup_img2img_steps -> (schedule steps, t_enc).

    fixed_steps plays A1111's explicit `steps` argument (hires pass, or the img2img_fix_steps option).
    """
    if fixed_steps is not None:
        total = int(fixed_steps / min(strength, 0.999)) if strength > 0 else 0
        return total, fixed_steps - 1
    return steps, int(min(strength, 0.999) * steps)


def _call(func: Callable[..., Tensor], model: Any, x: Tensor, timesteps: Tensor, extra_args: dict | None,
          callback: Callback | None, eta: float, noise_sampler: NoiseSampler | None, is_img2img: bool) -> Tensor:
    """Pass eta / is_img2img / noise_sampler only to samplers that take them, as A1111's inspect.signature does."""
    params = inspect.signature(func).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "noise_sampler" in params:
        kwargs["noise_sampler"] = noise_sampler
    if is_img2img and "is_img2img" in params:
        kwargs["is_img2img"] = True
    return func(model, x, timesteps, extra_args=extra_args, callback=callback, disable=True, **kwargs)


def sample_txt2img(func: Callable[..., Tensor], model: Any, x_noise: Tensor, steps: int, extra_args: dict | None = None,
                   callback: Callback | None = None, eta: float = 0.0, noise_sampler: NoiseSampler | None = None,
                   *, discard_next_to_last_sigma: bool = False) -> Tensor:
    """CompVisSampler.sample: the sampler over get_timesteps(steps), starting from the unscaled noise."""
    timesteps = get_timesteps(steps, x_noise.device, discard_next_to_last_sigma=discard_next_to_last_sigma)
    return _call(func, model, x_noise, timesteps, extra_args, callback, eta, noise_sampler, is_img2img=False)


def sample_img2img(func: Callable[..., Tensor], model: Any, init_latent: Tensor, noise: Tensor, steps: int,
                   strength: float, extra_args: dict | None = None, callback: Callback | None = None, eta: float = 0.0,
                   noise_sampler: NoiseSampler | None = None, fixed_steps: int | None = None, *,
                   discard_next_to_last_sigma: bool = False) -> Tensor:
    """CompVisSampler.sample_img2img: noise the latent to timesteps[t_enc], then sample over timesteps[:t_enc].

    A1111 reports t_enc + 1 as the step count of the progress bar (img2img_steps gives t_enc). The
    img2img_extra_noise option (default 0) is not reproduced.
    """
    total, t_enc = img2img_steps(steps, strength, fixed_steps)
    timesteps = get_timesteps(total, init_latent.device, discard_next_to_last_sigma=discard_next_to_last_sigma)
    a_enc = model.alphas_cumprod[int(timesteps[t_enc])].to(init_latent.device)
    xi = init_latent * torch.sqrt(a_enc) + noise * torch.sqrt(1 - a_enc)
    return _call(func, model, xi, timesteps[:t_enc], extra_args, callback, eta, noise_sampler, is_img2img=True)
