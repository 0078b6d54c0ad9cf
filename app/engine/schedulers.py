"""Samplers and schedule types (as AUTOMATIC1111 1.9+ names them) mapped to
diffusers schedulers.

A1111 1.9 split the old names ("DPM++ 2M Karras") into a sampler ("DPM++ 2M")
and a schedule type ("Karras"). A request carries one string, the sampler's
name followed by the schedule's label unless it is Automatic: "DPM++ 2M",
"DPM++ 2M Karras", "Euler Exponential". So old names, stored jobs and the
form keep working, and ``split_name`` gives the two parts for the infotext
(``Sampler: DPM++ 2M, Schedule type: Karras``) and the A1111 API.

"Automatic" here is the diffusers scheduler's own spacing for the model
(what this app always ran). On the A1111 API a missing or "Automatic"
schedule means A1111's per-sampler default (Karras for DPM++ 2M and DPM++ SDE,
Exponential for DPM++ 2M SDE and DPM++ 3M SDE), see ``a1111_automatic``.

"DPM++ SDE" is diffusers' DPMSolverSDEScheduler (k-diffusion's
``sample_dpmpp_sde``, second order: two model calls a step, as in A1111). Its
noise comes from a Brownian tree (the ``torchsde`` package); A1111 seeds one
tree per image from that image's seed, and so does ``make_scheduler`` when
given the seeds, so a seed gives the same image run to run.

Not offered: "DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart"
(no diffusers equivalent); schedule types "Polyexponential", "KL Optimal",
"Align Your Steps", "Simple", "Normal", "DDIM" (no diffusers option).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

DEFAULT_SCHEDULER = "DPM++ 2M"


@dataclass(frozen=True)
class SchedulerSpec:
    """A sampler: its A1111 name, the diffusers class and options, and the
    schedule type A1111 1.9 uses for it when asked for "Automatic"."""

    name: str
    class_name: str
    options: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    a1111_default: str = "automatic"


@dataclass(frozen=True)
class ScheduleType:
    name: str  # A1111's API name
    label: str  # A1111's label (infotext, UI)
    options: dict = field(default_factory=dict)  # diffusers config overrides


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", {"timestep_spacing": "linspace"}),
    ScheduleType("karras", "Karras", {"use_karras_sigmas": True}),
    ScheduleType("exponential", "Exponential", {"use_exponential_sigmas": True}),
    ScheduleType("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),
    ScheduleType("beta", "Beta", {"use_beta_sigmas": True}),  # needs scipy
)

_DPM = "DPMSolverMultistepScheduler"
SCHEDULERS: tuple[SchedulerSpec, ...] = (
    SchedulerSpec("DPM++ 2M", _DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                  ("dpmpp_2m", "k_dpmpp_2m", "dpm++", "dpmsolver++"), "karras"),
    SchedulerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("dpmpp_sde", "k_dpmpp_sde"), "karras"),
    SchedulerSpec("DPM++ 2M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                  ("dpmpp_2m_sde", "k_dpmpp_2m_sde"), "exponential"),
    SchedulerSpec("DPM++ 3M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                  ("dpmpp_3m_sde", "k_dpmpp_3m_sde"), "exponential"),
    SchedulerSpec("Euler", "EulerDiscreteScheduler", {}, ("euler", "k_euler")),
    SchedulerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler_a", "euler_ancestral", "k_euler_a")),
    SchedulerSpec("LMS", "LMSDiscreteScheduler", {}, ("lms", "k_lms")),
    SchedulerSpec("Heun", "HeunDiscreteScheduler", {}, ("heun", "k_heun")),
    SchedulerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm2", "k_dpm_2")),
    SchedulerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("dpm2_a", "k_dpm_2_a")),
    SchedulerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SchedulerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("pndm", "plms")),
    SchedulerSpec("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
)
SAMPLERS = SCHEDULERS

# Old one-word names: pre-1.9 A1111 aliases and ours.
_LEGACY = {"dpmpp_2m_karras": "DPM++ 2M Karras", "k_dpmpp_2m_ka": "DPM++ 2M Karras",
           "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras", "k_dpmpp_2m_sde_ka": "DPM++ 2M SDE Karras",
           "dpmpp_sde_karras": "DPM++ SDE Karras", "k_dpmpp_sde_ka": "DPM++ SDE Karras",
           "k_lms_ka": "LMS Karras", "k_dpm_2_ka": "DPM2 Karras", "k_dpm_2_a_ka": "DPM2 a Karras"}

_SAMPLER_KEYS = {key.lower(): s for s in SCHEDULERS for key in (s.name, *s.aliases)}
_SCHEDULE_KEYS = {key.lower(): t for t in SCHEDULE_TYPES for key in (t.name, t.label)}


@dataclass(frozen=True)
class SchedulerChoice:
    """A sampler with a schedule type; ``name`` is the request's string."""

    sampler: SchedulerSpec
    schedule: ScheduleType

    @property
    def name(self) -> str:
        return self.sampler.name if self.schedule.name == "automatic" else f"{self.sampler.name} {self.schedule.label}"


def find_schedule_type(name: object) -> ScheduleType | None:
    """A schedule type by API name or label, ignoring case; None if unknown."""
    return _SCHEDULE_KEYS.get(name.strip().lower()) if isinstance(name, str) else None


def supported_schedules(sampler: SchedulerSpec) -> tuple[ScheduleType, ...]:
    """The schedule types the sampler's diffusers class takes options for
    (tests/test_samplers.py checks this table against diffusers' signatures;
    no diffusers import here, so validation stays light)."""
    names = _TIMESTEP_ONLY if sampler.class_name in _NO_SIGMA_OPTIONS else _ALL
    return tuple(t for t in SCHEDULE_TYPES if t.name in names)


_ALL = {t.name for t in SCHEDULE_TYPES}
_TIMESTEP_ONLY = {"automatic", "uniform", "sgm_uniform"}
_NO_SIGMA_OPTIONS = {"EulerAncestralDiscreteScheduler", "DDIMScheduler", "PNDMScheduler"}


def find_scheduler(name: object) -> SchedulerChoice | None:
    """A sampler and schedule from a name ("DPM++ 2M", "dpm++ 2m karras",
    "k_lms_ka", "Euler a SGM Uniform"), ignoring case; None if unknown or
    if the sampler does not take that schedule."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _LEGACY.get(key, key).lower()
    if key in _SAMPLER_KEYS:
        return SchedulerChoice(_SAMPLER_KEYS[key], SCHEDULE_TYPES[0])
    for sampler_key in sorted(_SAMPLER_KEYS, key=len, reverse=True):  # "DPM2 a" before "DPM2"
        if key.startswith(sampler_key + " "):
            sampler = _SAMPLER_KEYS[sampler_key]
            schedule = find_schedule_type(key[len(sampler_key) + 1:])
            if schedule is not None and schedule in supported_schedules(sampler):
                return SchedulerChoice(sampler, schedule)
            return None
    return None


def with_schedule(sampler_name: str, schedule: ScheduleType) -> SchedulerChoice | None:
    """The sampler (a name, maybe with a schedule) with ``schedule`` instead; None if it does not take it."""
    choice = find_scheduler(sampler_name)
    if choice is None or schedule not in supported_schedules(choice.sampler):
        return None
    return SchedulerChoice(choice.sampler, schedule)


def a1111_automatic(sampler: SchedulerSpec) -> SchedulerChoice:
    """What A1111 1.9+ runs for this sampler with schedule "Automatic"."""
    schedule = find_schedule_type(sampler.a1111_default) or SCHEDULE_TYPES[0]
    return SchedulerChoice(sampler, schedule if schedule in supported_schedules(sampler) else SCHEDULE_TYPES[0])


def split_name(name: str) -> tuple[str, str]:
    """("DPM++ 2M", "Karras") for "DPM++ 2M Karras": the infotext's Sampler and Schedule type."""
    choice = find_scheduler(name)
    return (choice.sampler.name, choice.schedule.label) if choice else (name, SCHEDULE_TYPES[0].label)


def from_infotext(sampler: str, schedule_type: str | None = None) -> str | None:
    """The request's scheduler string for an infotext's ``Sampler`` and
    ``Schedule type`` (A1111 1.9+), or its old one-field form; None if unknown."""
    schedule = find_schedule_type(schedule_type) if schedule_type else None
    if schedule_type and schedule is None:
        return None
    choice = with_schedule(sampler, schedule) if schedule else find_scheduler(sampler)
    return choice.name if choice else None


def scheduler_names() -> list[str]:
    """The samplers, then their Karras variants (any "<sampler> <schedule>" pair it takes is accepted)."""
    karras = SCHEDULE_TYPES[2]
    return [s.name for s in SCHEDULERS] + [f"{s.name} Karras" for s in SCHEDULERS if karras in supported_schedules(s)]


def make_scheduler(name: str, base_config: dict, seeds: list[int] | None = None):
    """A fresh scheduler of the named kind that keeps the model's training
    settings (betas, prediction type: v-prediction on SD 2.1 768). ``seeds``
    (one per image of the batch) seed a Brownian-tree sampler's noise, as
    A1111 seeds DPM++ SDE's; without them that noise is random."""
    import diffusers

    choice = find_scheduler(name)
    if choice is None:
        raise KeyError(name)
    cls = getattr(diffusers, choice.sampler.class_name)
    # Sigma flags a model's own scheduler config may carry are off unless the schedule asks for one.
    params = inspect.signature(cls.__init__).parameters
    flags = {k: False for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if k in params}
    options = {**flags, **choice.sampler.options, **choice.schedule.options}
    if "noise_sampler_seed" in params:
        options["noise_sampler_seed"] = list(seeds) if seeds else None
    return cls.from_config(base_config, **options)
