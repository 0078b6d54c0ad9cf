"""Sampler names (as AUTOMATIC1111 spells them) mapped to diffusers schedulers."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SCHEDULER = "DPM++ 2M"


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    class_name: str
    options: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SCHEDULERS: tuple[SchedulerSpec, ...] = (
    SchedulerSpec("DPM++ 2M", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
                  ("dpmpp_2m", "dpm++", "dpmsolver++")),
    SchedulerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                  ("dpmpp_2m_karras",)),
    SchedulerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
                  ("dpmpp_2m_sde",)),
    SchedulerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
                  {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                  ("dpmpp_2m_sde_karras",)),
    SchedulerSpec("Euler", "EulerDiscreteScheduler", {}, ("euler",)),
    SchedulerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler_a", "euler_ancestral")),
    SchedulerSpec("Heun", "HeunDiscreteScheduler", {}, ("heun",)),
    SchedulerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SchedulerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("pndm", "plms")),
    SchedulerSpec("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
)

_BY_KEY = {}
for _spec in SCHEDULERS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_KEY[_key.lower()] = _spec


def scheduler_names() -> list[str]:
    return [s.name for s in SCHEDULERS]


def find_scheduler(name: str) -> SchedulerSpec | None:
    """Look a sampler up by its name or an alias, ignoring case; None if unknown."""
    if not isinstance(name, str):
        return None
    return _BY_KEY.get(name.strip().lower())


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler of the named kind that keeps the model's training
    settings (betas, prediction type: v-prediction on SD 2.1 768)."""
    import diffusers

    spec = find_scheduler(name)
    if spec is None:
        raise KeyError(name)
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.options)
