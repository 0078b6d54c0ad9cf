"""The samplers and schedule types of AUTOMATIC1111 1.10, as names: the one
catalogue the request, the infotext, both APIs, the CLI, the page and the
notebook read. No torch here, so validation stays light; the algorithms
are in ``app/engine/sampling``.

A request carries one string: the sampler's name, followed by a schedule
type's label unless it is Automatic ("DPM++ 2M", "DPM++ 2M Karras",
"Euler SGM Uniform"). Old one-word names ("k_dpmpp_2m_ka") and A1111's
pre-1.9 combined names keep working. "Automatic" is what A1111 runs with
its defaults: the sampler's own schedule (Karras for DPM++ 2M, DPM++ SDE,
DPM++ 2S a, DPM2, DPM2 a and Restart; Exponential for the 2M/3M SDE
samplers), else the model's own uniform sigmas.

Every sampler takes every schedule type, as in A1111, which offers the two
lists side by side. The timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC)
run on A1111's own timesteps whatever the schedule type says, again as in
A1111; the infotext then writes no "Schedule type", as A1111 writes none.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SCHEDULER = "DPM++ 2M"
# A1111's "Random number generator source" values (app/engine/sampling/rng.py); GPU is its default.
RANDN_SOURCES = ("GPU", "CPU", "NV")

K_DIFFUSION = "k-diffusion"  # sigma samplers (app/engine/sampling/kdiffusion.py)
TIMESTEPS = "timesteps"  # A1111's CompVis samplers (app/engine/sampling/timesteps.py)
LCM = "lcm"  # A1111's LCM sampler, a sigma sampler on its own 50-step denoiser


@dataclass(frozen=True)
class SamplerSpec:
    """One of A1111's samplers: its name, aliases and options (A1111's
    ``SamplerData``), and the function that runs it."""

    name: str
    function: str  # in the module its ``kind`` names
    aliases: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)  # A1111's, verbatim: /sdapi/v1/samplers lists them
    kind: str = K_DIFFUSION
    takes_eta: bool = False  # the function has an ``eta`` argument (A1111 passes eta only then)
    takes_churn: bool = False  # s_churn, s_tmin, s_tmax, s_noise (A1111: Euler, Heun, DPM2)

    @property
    def default_schedule(self) -> str | None:
        """The schedule type "Automatic" means for this sampler; None: the model's own sigmas."""
        return self.options.get("scheduler")

    @property
    def second_order(self) -> bool:
        """Two model calls a step: A1111 counts prompt-editing steps twice for it."""
        return bool(self.options.get("second_order"))

    @property
    def eta_default(self) -> float:
        """A1111's eta when a request gives none (its options eta_ancestral 1.0, eta_ddim 0.0)."""
        return 0.0 if self.kind == TIMESTEPS else 1.0

    @property
    def eta_label(self) -> str:
        """The infotext key for a non-default eta."""
        return "Eta DDIM" if self.kind == TIMESTEPS else "Eta"

    @property
    def uses_ensd(self) -> bool:
        return bool(self.options.get("uses_ensd"))

    @property
    def takes_schedule(self) -> bool:
        """Whether the schedule type changes anything (timestep samplers have their own timesteps)."""
        return self.kind != TIMESTEPS


@dataclass(frozen=True)
class ScheduleType:
    name: str  # A1111's API name
    label: str  # A1111's label (infotext, UI)
    aliases: tuple[str, ...] = ()
    default_rho: float = -1  # as /sdapi/v1/schedulers lists it
    need_inner_model: bool = False

    def api_entry(self) -> dict:
        """The /sdapi/v1/schedulers item (A1111 gives null, not [], for no aliases)."""
        return {"name": self.name, "label": self.label, "aliases": list(self.aliases) or None,
                "default_rho": self.default_rho, "need_inner_model": self.need_inner_model}


# A1111 1.10's modules/sd_schedulers.py list, in its order.
SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    ScheduleType("kl_optimal", "KL Optimal"),
    ScheduleType("align_your_steps", "Align Your Steps"),
    ScheduleType("simple", "Simple", need_inner_model=True),
    ScheduleType("normal", "Normal", need_inner_model=True),
    ScheduleType("ddim", "DDIM", need_inner_model=True),
    ScheduleType("beta", "Beta", need_inner_model=True),
)
AUTOMATIC = SCHEDULE_TYPES[0]


def _k(name: str, function: str, aliases: tuple[str, ...], options: dict, *, eta: bool = False,
       churn: bool = False) -> SamplerSpec:
    return SamplerSpec(name, function, aliases, options, K_DIFFUSION, takes_eta=eta, takes_churn=churn)


# A1111 1.10's list (/sdapi/v1/samplers order): sd_samplers_kdiffusion.py, sd_samplers_timesteps.py,
# sd_samplers_lcm.py. ``eta`` marks the functions with an eta argument (k-diffusion's ancestral, SDE and
# DPM-Solver samplers; DDIM and DDIM CFG++).
SCHEDULERS: tuple[SamplerSpec, ...] = (
    _k("DPM++ 2M", "sample_dpmpp_2m", ("k_dpmpp_2m",), {"scheduler": "karras"}),
    _k("DPM++ SDE", "sample_dpmpp_sde", ("k_dpmpp_sde",),
       {"scheduler": "karras", "second_order": True, "brownian_noise": True}, eta=True),
    _k("DPM++ 2M SDE", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde",),
       {"scheduler": "exponential", "brownian_noise": True}, eta=True),
    _k("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde_heun",),
       {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}, eta=True),
    _k("DPM++ 2S a", "sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",),
       {"scheduler": "karras", "uses_ensd": True, "second_order": True}, eta=True),
    _k("DPM++ 3M SDE", "sample_dpmpp_3m_sde", ("k_dpmpp_3m_sde",),
       {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}, eta=True),
    _k("Euler a", "sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}, eta=True),
    _k("Euler", "sample_euler", ("k_euler",), {}, churn=True),
    _k("LMS", "sample_lms", ("k_lms",), {}),
    _k("Heun", "sample_heun", ("k_heun",), {"second_order": True}, churn=True),
    _k("DPM2", "sample_dpm_2", ("k_dpm_2",),
       {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}, churn=True),
    _k("DPM2 a", "sample_dpm_2_ancestral", ("k_dpm_2_a",),
       {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}, eta=True),
    _k("DPM fast", "sample_dpm_fast", ("k_dpm_fast",), {"uses_ensd": True}, eta=True),
    _k("DPM adaptive", "sample_dpm_adaptive", ("k_dpm_ad",), {"uses_ensd": True}, eta=True),
    _k("Restart", "restart_sampler", ("restart",), {"scheduler": "karras", "second_order": True}),
    SamplerSpec("DDIM", "ddim", ("ddim",), {}, TIMESTEPS, takes_eta=True),
    SamplerSpec("DDIM CFG++", "ddim_cfgpp", ("ddim_cfgpp",), {}, TIMESTEPS, takes_eta=True),
    SamplerSpec("PLMS", "plms", ("plms",), {}, TIMESTEPS),
    SamplerSpec("UniPC", "unipc", ("unipc",), {}, TIMESTEPS),
    SamplerSpec("LCM", "sample_lcm", ("k_lcm",), {}, LCM),
)
SAMPLERS = SCHEDULERS

# Older names: A1111's pre-1.9 combined names as aliases, and this app's earlier ones.
_LEGACY = {"dpmpp_2m_karras": "DPM++ 2M Karras", "k_dpmpp_2m_ka": "DPM++ 2M Karras",
           "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras", "k_dpmpp_2m_sde_ka": "DPM++ 2M SDE Karras",
           "dpmpp_sde_karras": "DPM++ SDE Karras", "k_dpmpp_sde_ka": "DPM++ SDE Karras",
           "k_lms_ka": "LMS Karras", "k_dpm_2_ka": "DPM2 Karras", "k_dpm_2_a_ka": "DPM2 a Karras",
           "k_dpmpp_2s_a_ka": "DPM++ 2S a Karras", "dpm++": "DPM++ 2M", "dpmsolver++": "DPM++ 2M",
           "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE",
           "dpmpp_3m_sde": "DPM++ 3M SDE", "euler": "Euler", "euler_a": "Euler a", "euler_ancestral": "Euler a",
           "lms": "LMS", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "pndm": "PLMS", "lcm": "LCM"}

_SAMPLER_KEYS = {key.lower(): s for s in SCHEDULERS for key in (s.name, *s.aliases)}
_SCHEDULE_KEYS = {key.lower(): t for t in SCHEDULE_TYPES for key in (t.name, t.label, *t.aliases)}


@dataclass(frozen=True)
class SchedulerChoice:
    """A sampler with a schedule type; ``name`` is the request's string."""

    sampler: SamplerSpec
    schedule: ScheduleType

    @property
    def name(self) -> str:
        return self.sampler.name if self.schedule is AUTOMATIC else f"{self.sampler.name} {self.schedule.label}"

    @property
    def resolved_schedule(self) -> str | None:
        """The schedule type that runs: the sampler's default for Automatic; None for the model's own sigmas
        (and for the timestep samplers, whose timesteps no schedule type changes)."""
        if not self.sampler.takes_schedule:
            return None
        return self.sampler.default_schedule if self.schedule is AUTOMATIC else self.schedule.name

    @property
    def infotext_schedule(self) -> str | None:
        """A1111's ``Schedule type`` entry: the label of the schedule that ran, none when none did."""
        resolved = self.resolved_schedule
        return find_schedule_type(resolved).label if resolved else None  # type: ignore[union-attr]


def find_schedule_type(name: object) -> ScheduleType | None:
    """A schedule type by API name, label or alias, ignoring case; None if unknown."""
    return _SCHEDULE_KEYS.get(name.strip().lower()) if isinstance(name, str) else None


def find_scheduler(name: object) -> SchedulerChoice | None:
    """A sampler and schedule from a name ("DPM++ 2M", "dpm++ 2m karras",
    "k_lms_ka", "Euler a SGM Uniform"), ignoring case; None if unknown."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _LEGACY.get(key, key).lower()
    if key in _SAMPLER_KEYS:
        return SchedulerChoice(_SAMPLER_KEYS[key], AUTOMATIC)
    for sampler_key in sorted(_SAMPLER_KEYS, key=len, reverse=True):  # "DPM2 a" before "DPM2"
        if key.startswith(sampler_key + " "):
            schedule = find_schedule_type(key[len(sampler_key) + 1:])
            return SchedulerChoice(_SAMPLER_KEYS[sampler_key], schedule) if schedule is not None else None
    return None


def with_schedule(sampler_name: str, schedule: ScheduleType) -> SchedulerChoice | None:
    """The sampler (a name, maybe with a schedule) with ``schedule`` instead; None for an unknown sampler."""
    choice = find_scheduler(sampler_name)
    return None if choice is None else SchedulerChoice(choice.sampler, schedule)


def split_name(name: str) -> tuple[str, str]:
    """("DPM++ 2M", "Karras") for "DPM++ 2M Karras": the sampler and the schedule type as chosen."""
    choice = find_scheduler(name)
    return (choice.sampler.name, choice.schedule.label) if choice else (name, AUTOMATIC.label)


def from_infotext(sampler: str, schedule_type: str | None = None) -> str | None:
    """The request's scheduler string for an infotext's ``Sampler`` and
    ``Schedule type`` (A1111 1.9+), or its old one-field form; None if unknown."""
    schedule = find_schedule_type(schedule_type) if schedule_type else None
    if schedule_type and schedule is None:
        return None
    choice = with_schedule(sampler, schedule) if schedule else find_scheduler(sampler)
    return choice.name if choice else None


def sampler_names() -> list[str]:
    return [s.name for s in SCHEDULERS]


def schedule_labels() -> list[str]:
    return [t.label for t in SCHEDULE_TYPES]


def scheduler_names() -> list[str]:
    """The samplers with schedule Automatic (A1111's defaults); any "<sampler> <schedule type>" is accepted too."""
    return sampler_names()
