"""Running one of A1111's samplers over a CFG denoiser: A1111 1.10's
``KDiffusionSampler.sample`` / ``sample_img2img`` (and the CompVis
samplers' twins in timesteps.py), with A1111's default options.

txt2img: sigmas from the schedule (``schedules.get_sigmas``), the start
``noise * sigmas[0]``. img2img and the hires pass: A1111's
``setup_img2img_steps``: ``t_enc = int(min(strength, 0.999) * steps)`` and
the last ``t_enc + 1`` sigmas of a ``steps``-step schedule; for the hires
pass, whose step count is fixed, the schedule is stretched to
``int(steps / min(strength, 0.999))`` so exactly ``steps - 1 + 1`` run.
The start is ``init + noise * sigma_sched[0]``.

Arguments A1111 passes only when a sampler's function takes them: eta
(request's, else 1.0; 0.0 for DDIM), the churn settings (Euler, Heun,
DPM2), DPM fast/adaptive's ``n``/``sigma_min``/``sigma_max``, the SDE
samplers' Brownian noise, the Heun solver of "DPM++ 2M SDE Heun".
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from app.engine.sampling import kdiffusion, schedules, timesteps
from app.engine.sampling.cfg import CFGDenoiser, Interrupted
from app.engine.sampling.rng import noise_sampler
from app.engine.schedulers import TIMESTEPS, SchedulerChoice

StepCallback = Callable[[int, torch.Tensor], None]  # (index of the finished step, its denoised estimate)


@dataclass(frozen=True)
class SamplerSettings:
    """The request's sampler knobs (A1111's API names); None: A1111's default for the sampler."""

    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: infinity, as A1111
    s_noise: float = 1.0
    s_min_uncond: float = 0.0  # NGMS: below this sigma every other model call skips the uncond pass (cfg.py)
    s_min_uncond_all: bool = False  # "NGMS all steps": every call below it
    # A1111's option: every k-diffusion schedule is made one step longer and loses its next-to-last sigma, as
    # DPM2 and DPM++ 3M SDE always do (timestep samplers ignore it, as A1111)
    always_discard_next_to_last_sigma: bool = False

    @classmethod
    def from_request(cls, request: Any) -> "SamplerSettings":
        """The request's fields of these names (GenerationRequest uses A1111's names too)."""
        return cls(**{f.name: getattr(request, f.name) for f in fields(cls)})


@dataclass
class Noise:
    """Where a run's random numbers come from: the image RNG (initial noise, then ancestral/churn noise
    per image, A1111's ``p.rng``) and, for the SDE samplers, a Brownian-tree factory over the seeds."""

    rng: Any  # app.engine.sampling.rng.ImageRNG
    brownian: Callable[[torch.Tensor, torch.Tensor], Callable]  # (x, sigmas) -> noise_sampler

    def sampler(self) -> Callable:
        return noise_sampler(self.rng)


def function(choice: SchedulerChoice) -> Callable:
    module = timesteps if choice.sampler.kind == TIMESTEPS else kdiffusion
    return getattr(module, choice.sampler.function)


def _kwargs(choice: SchedulerChoice, func: Callable, settings: SamplerSettings) -> dict:
    params = inspect.signature(func).parameters
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = choice.sampler.eta_default if settings.eta is None else settings.eta
    if choice.sampler.takes_churn:
        kwargs.update(s_churn=settings.s_churn, s_tmin=settings.s_tmin,
                      s_tmax=settings.s_tmax or float("inf"), s_noise=settings.s_noise)
    if choice.sampler.options.get("solver_type") == "heun":
        kwargs["solver_type"] = "heun"
    return kwargs


def infotext_entries(choice: SchedulerChoice, settings: SamplerSettings) -> dict:
    """What A1111 writes for eta: a non-default eta for a sampler that takes it, under the sampler's label
    (the other settings' entries are the request fields' own, app/engine/types.py)."""
    out: dict = {}
    func = function(choice)
    if settings.eta is not None and "eta" in inspect.signature(func).parameters \
            and settings.eta != choice.sampler.eta_default:
        out[choice.sampler.eta_label] = f"{settings.eta:g}"
    return out


def sigmas_for(choice: SchedulerChoice, steps: int, denoiser: Any, settings: SamplerSettings) -> torch.Tensor:
    discard = bool(choice.sampler.options.get("discard_next_to_last_sigma")) \
        or settings.always_discard_next_to_last_sigma
    return schedules.get_sigmas(choice.resolved_schedule, steps, denoiser, discard_next_to_last_sigma=discard)


def _launch(run: Callable[[], torch.Tensor], model: CFGDenoiser) -> tuple[torch.Tensor | None, bool]:
    """The sampler's result, or on cancel its last denoised estimate (None before the first) and True."""
    try:
        return run(), False
    except Interrupted:
        return model.last_denoised, True


def _callback(on_step: StepCallback | None, model: CFGDenoiser) -> Callable[[dict], None]:
    def callback(d: dict) -> None:
        model.sampling_step = int(d["i"])  # A1111's callback_state: state.sampling_step = d["i"]
        if on_step is not None:
            # UniPC's last step has no corrector and reports no estimate: its result is the clean latents.
            on_step(int(d["i"]), d["denoised"] if d["denoised"] is not None else d["x"])
    return callback


def sample(choice: SchedulerChoice, model: CFGDenoiser, inner: Any, noise: Noise, steps: int,
           settings: SamplerSettings, on_step: StepCallback | None = None) -> tuple[torch.Tensor | None, bool]:
    """txt2img: returns (latents, interrupted). ``inner`` is the model wrapper ``model`` guides (its sigma
    table drives the schedule)."""
    x = noise.rng.next()
    func = function(choice)
    kwargs = _kwargs(choice, func, settings)
    model.reset()
    model.s_min_uncond, model.s_min_uncond_all = settings.s_min_uncond, settings.s_min_uncond_all
    model.sampling_steps = steps  # A1111's launch_sampling(steps)
    if choice.sampler.kind == TIMESTEPS:
        return _launch(lambda: timesteps.sample_txt2img(func, model, x, steps, callback=_callback(on_step, model),
                                                        eta=kwargs.get("eta", 0.0), noise_sampler=noise.sampler()),
                       model)
    sigmas = sigmas_for(choice, steps, inner, settings).to(x.device)
    x = x * sigmas[0]
    params = inspect.signature(func).parameters
    if "n" in params:
        kwargs["n"] = steps
    if "sigma_min" in params:  # DPM fast/adaptive: the model's whole range, as A1111
        kwargs["sigma_min"], kwargs["sigma_max"] = float(inner.sigmas[0]), float(inner.sigmas[-1])
    if "sigmas" in params:
        kwargs["sigmas"] = sigmas
    if "noise_sampler" in params:
        kwargs["noise_sampler"] = noise.brownian(x, sigmas) if choice.sampler.options.get("brownian_noise") \
            else noise.sampler()
    return _launch(lambda: func(model, x, callback=_callback(on_step, model), disable=True, **kwargs), model)


def img2img_steps(steps: int, strength: float, fixed: bool) -> tuple[int, int]:
    """(schedule length, t_enc): A1111's setup_img2img_steps; ``fixed`` for the hires pass."""
    return timesteps.img2img_steps(steps, strength, steps if fixed else None)


def sample_img2img(choice: SchedulerChoice, model: CFGDenoiser, inner: Any, noise: Noise, init_latent: torch.Tensor,
                   steps: int, strength: float, settings: SamplerSettings, on_step: StepCallback | None = None,
                   fixed_steps: bool = False) -> tuple[torch.Tensor | None, bool]:
    """img2img, inpainting and the hires pass: returns (latents, interrupted)."""
    x_noise = noise.rng.next()
    func = function(choice)
    kwargs = _kwargs(choice, func, settings)
    model.reset()
    model.s_min_uncond, model.s_min_uncond_all = settings.s_min_uncond, settings.s_min_uncond_all
    model.sampling_steps = img2img_steps(steps, strength, fixed_steps)[1] + 1  # A1111's launch_sampling(t_enc + 1)
    model.init_latent = init_latent
    model.last_denoised = init_latent
    if choice.sampler.kind == TIMESTEPS:
        return _launch(lambda: timesteps.sample_img2img(func, model, init_latent, x_noise, steps, strength,
                                                        callback=_callback(on_step, model), eta=kwargs.get("eta", 0.0),
                                                        noise_sampler=noise.sampler(),
                                                        fixed_steps=steps if fixed_steps else None), model)
    total, t_enc = img2img_steps(steps, strength, fixed_steps)
    sigmas = sigmas_for(choice, total, inner, settings).to(init_latent.device)
    sigma_sched = sigmas[total - t_enc - 1:]
    xi = init_latent + x_noise * sigma_sched[0]
    params = inspect.signature(func).parameters
    if "sigma_min" in params:  # the last sigma is 0, which DPM fast/adaptive cannot take
        kwargs["sigma_min"], kwargs["sigma_max"] = sigma_sched[-2], sigma_sched[0]
    if "n" in params:
        kwargs["n"] = len(sigma_sched) - 1
    if "sigmas" in params:
        kwargs["sigmas"] = sigma_sched
    if "noise_sampler" in params:
        kwargs["noise_sampler"] = noise.brownian(init_latent, sigmas) \
            if choice.sampler.options.get("brownian_noise") else noise.sampler()
    return _launch(lambda: func(model, xi, callback=_callback(on_step, model), disable=True, **kwargs), model)


def total_steps(choice: SchedulerChoice, steps: int) -> int:
    """The step count A1111 gives the prompt schedule: doubled for second-order samplers."""
    return steps * 2 if choice.sampler.second_order else steps
