"""What a request asks of the sampler, checked before the job is queued: A1111's sampler
settings (eta, the s_* of Euler/Heun/DPM2, the noise source, ENSD, clip skip) and the step
counts A1111's timestep samplers cannot run."""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.engine.base import MAX_SEED, Limits, ValidationError, check_int, check_range
from app.engine.hires import second_pass_steps
from app.engine.schedulers import RANDN_SOURCES, TIMESTEPS, find_scheduler

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest


def check(request: GenerationRequest, limits: Limits) -> None:
    """The settings, then the steps (the scheduler is already checked and canonical)."""
    check_settings(request)
    check_steps(request)


def check_settings(request: GenerationRequest) -> None:
    if request.eta is not None:
        check_range("eta", request.eta)
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
        check_range(name, getattr(request, name))
    if request.randn_source not in RANDN_SOURCES:
        raise ValidationError("randn_source", request.randn_source, "must be one of " + ", ".join(RANDN_SOURCES))
    check_int("eta_noise_seed_delta", request.eta_noise_seed_delta)
    if not 0 <= request.eta_noise_seed_delta <= MAX_SEED:
        raise ValidationError("eta_noise_seed_delta", request.eta_noise_seed_delta,
                              f"must be between 0 and {MAX_SEED}")
    check_int("clip_skip", request.clip_skip)
    check_range("clip_skip", request.clip_skip)


def check_steps(request: GenerationRequest) -> None:
    """What A1111's timestep samplers cannot run: UniPC below its order (A1111 stops with an assertion),
    and a hires or img2img schedule longer than the model's 1000 timesteps."""
    spec = find_scheduler(request.scheduler)
    if spec is None or spec.sampler.kind != TIMESTEPS:
        return
    passes = []
    if request.init_image is not None:
        passes.append((request.steps, int(min(request.strength, 0.999) * request.steps), "strength"))
    else:
        passes.append((request.steps, request.steps, "steps"))
    if request.enable_hr and request.strength > 0:
        hr = second_pass_steps(request)
        passes.append((int(hr / min(request.strength, 0.999)), hr - 1, "strength"))
    for total, denoised, name in passes:
        if total > 1000:
            raise ValidationError(name, getattr(request, name), f"makes {spec.sampler.name} run a {total}-step "
                                                                "schedule; the model has 1000 timesteps")
        if spec.sampler.name == "UniPC" and denoised < 3:
            raise ValidationError(name, getattr(request, name), "UniPC needs at least 3 denoising steps (its order); "
                                                                "raise steps or strength")
