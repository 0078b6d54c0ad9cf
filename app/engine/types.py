"""Request and result types of the engine, and their validation.

Validation runs before any heavy work and every error names the field and the
value, so the CLI, the web app and the notebooks all report bad input the same
way. The common fields are checked here; each feature checks its own in its
module (``check(request, limits)``: inpaint.py, hires.py, sampling/, faces/, ...).
"""
from __future__ import annotations

import re
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable

from app.engine.base import (
    DEFAULT_LIMITS,
    FIELD_RANGES,
    MAX_SEED,
    SIZE_MULTIPLE,
    GenerationResult,
    Limits,
    StepInfo,
    ValidationError,
    check_bool,
    check_int,
    check_number,
    check_range,
    check_seed,
    check_text,
    draw_seed,
    field_range,
    floor_size,
    short_repr,
)
from app.engine.fields import ELSEWHERE, About, about, facts, kind, size_pair
from app.engine.loras import tags as lora_tags
from app.engine.loras.tags import split_lora_tags
from app.engine.prompts import prompt_syntax_problem
from app.engine.schedulers import DEFAULT_SCHEDULER, RANDN_SOURCES, TIMESTEPS, find_scheduler, schedule_labels, scheduler_names

_AND = re.compile(r"\bAND\b")  # A1111's composable-prompt separator (prompt_parser.re_AND), positive prompt only


def _seed_resize_entry(request: "GenerationRequest") -> str | None:
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    return f"{w}x{h}" if w > 0 and h > 0 else None


def _seed_resize_read(text: str) -> dict:
    return dict(zip(("seed_resize_from_w", "seed_resize_from_h"), size_pair(text)))


def _ensd_entry(request: "GenerationRequest") -> int | None:
    """A1111 writes ENSD only where it changed the noise: a sampler that draws noise, with eta not 0."""
    choice = find_scheduler(request.scheduler)
    if not request.eta_noise_seed_delta or choice is None or not choice.sampler.uses_ensd:
        return None
    eta = request.eta if request.eta is not None else choice.sampler.eta_default
    return request.eta_noise_seed_delta if eta != 0 else None


def _churn_entry(name: str) -> Callable[["GenerationRequest"], str | None]:
    """A churn setting's entry: written for the samplers that take them (Euler, Heun, DPM2), when not default."""
    def entry(request: "GenerationRequest") -> str | None:
        choice = find_scheduler(request.scheduler)
        value = getattr(request, name)
        default = GenerationRequest.__dataclass_fields__[name].default
        return f"{value:g}" if choice is not None and choice.sampler.takes_churn and value != default else None
    return entry


def _ngms_all_entry(request: "GenerationRequest") -> bool | None:
    """Written with NGMS on, as A1111 writes it beside ``NGMS``."""
    return True if request.s_min_uncond_all and request.s_min_uncond > 0 else None


def _discard_entry(request: "GenerationRequest") -> bool | None:
    """Written where it changes the schedule: a sigma sampler (k-diffusion's and LCM, A1111's KDiffusionSampler
    subclasses) that does not already discard; never the timestep samplers."""
    choice = find_scheduler(request.scheduler)
    applies = choice is not None and choice.sampler.kind != TIMESTEPS \
        and not choice.sampler.options.get("discard_next_to_last_sigma")
    return True if request.always_discard_next_to_last_sigma and applies else None


@dataclass
class GenerationRequest:
    """One text-to-image (or image-to-image, with ``init_image``) request.

    ``width``/``height`` of None mean the model's native size (768 on SD 2.1),
    or the init image's size for img2img. ``seed`` of None (or -1) means a
    random seed, which is always reported in the result.
    """

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = field(default=25, metadata=about(label="Steps", write=ELSEWHERE, xyz="Steps"))
    guidance_scale: float = field(default=7.5, metadata=about(label="CFG scale", write=ELSEWHERE, xyz="CFG Scale"))
    seed: int | None = field(default=None, metadata=about(label="Seed", write=ELSEWHERE, xyz="Seed"))
    scheduler: str = DEFAULT_SCHEDULER
    num_images: int = 1
    init_image: Any = None  # PIL.Image.Image
    strength: float = field(default=0.75, metadata=about(label="Denoising strength", write=ELSEWHERE,
                                                         xyz="Denoising"))
    save_steps: int = 0  # keep a preview every N steps (0: none)
    # seamless: the image wraps around left/right and top/bottom
    tiling: bool = field(default=False, metadata=about(
        label="Tiling", api=True, cli="--tiling", help="seamless: the image tiles left/right and top/bottom"))
    # A1111's API switch: the prompt's <lora:...> tags are still taken out of its text, but not applied
    disable_extra_networks: bool = field(default=False, metadata=about(api=True))
    # --- inpainting (issue #12; app/engine/inpaint.py): needs init_image; white in the mask repaints ---
    mask: Any = None  # PIL.Image.Image
    mask_blur: int = field(default=4, metadata=about(label="Mask blur", write=ELSEWHERE))  # pixels
    inpainting_fill: int = 1  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "only masked": the masked region alone at full size, pasted back
    inpaint_full_res_padding: int = field(default=32, metadata=about(  # pixels around the masked region, only masked
        label="Masked area padding", write=ELSEWHERE))
    inpainting_mask_invert: bool = False  # repaint the black area instead
    outpaint: int = 0  # pixels to extend the init image by, then inpaint the new area (needs no mask)
    outpaint_directions: str = "left,right,up,down"  # comma-separated sides to extend
    # --- hires fix (issue #12; app/engine/hires.py): txt2img, then upscale and img2img at ``strength`` ---
    enable_hr: bool = False
    hr_scale: float = 2.0  # used when hr_resize_x and hr_resize_y are 0
    hr_resize_x: int = 0  # target width (0: from hr_scale, or keep the aspect)
    hr_resize_y: int = 0
    hr_upscaler: str = field(default="Latent", metadata=about(xyz="Hires upscaler"))  # Latent variants, Lanczos, None
    hr_second_pass_steps: int = field(default=0, metadata=about(xyz="Hires steps"))  # 0: the first pass's steps
    # --- variation seeds (issue #12; app/engine/sampling/rng.py) ---
    subseed: int | None = field(default=None, metadata=about(xyz="Var. seed"))  # None or -1: random, with the seed
    # 0: the seed's noise, 1: the variation seed's
    subseed_strength: float = field(default=0.0, metadata=about(api=True, xyz="Var. strength"))
    # the noise this seed gives at another size (0: off)
    seed_resize_from_w: int = field(default=0, metadata=about(label="Seed resize from", write=_seed_resize_entry,
                                                              read=_seed_resize_read))
    seed_resize_from_h: int = 0
    # --- prompt styles (issue #15; app/engine/styles.py) ---
    # The names of the styles already applied to prompt and negative_prompt (by the web API, from styles.csv):
    # a record of how the prompt was made, as A1111's infotext keeps the styled prompt. Nothing here applies them.
    styles: list[str] = field(default_factory=list)
    # --- sampler settings (issue #21; app/engine/sampling), A1111's names ---
    # None: the sampler's default (1 for the ancestral and SDE samplers, 0 for DDIM); its infotext label is
    # the sampler's (sampling/run.py)
    eta: float | None = field(default=None, metadata=about(xyz="Eta"))
    # Euler, Heun, DPM2 only, as A1111
    s_churn: float = field(default=0.0, metadata=about(label="Sigma churn", write=_churn_entry("s_churn"),
                                                       cli="--s-churn", help="sigma churn (Euler, Heun, DPM2)",
                                                       api=True, option="s_churn", xyz="Sigma Churn"))
    s_tmin: float = field(default=0.0, metadata=about(label="Sigma tmin", write=_churn_entry("s_tmin"),
                                                      cli="--s-tmin", help="sigma tmin (Euler, Heun, DPM2)",
                                                      api=True, option="s_tmin", xyz="Sigma min"))
    s_tmax: float = field(default=0.0, metadata=about(  # 0: infinity
        label="Sigma tmax", write=_churn_entry("s_tmax"), cli="--s-tmax",
        help="sigma tmax, 0: infinity (Euler, Heun, DPM2)", api=True, option="s_tmax", xyz="Sigma max"))
    s_noise: float = field(default=1.0, metadata=about(label="Sigma noise", write=_churn_entry("s_noise"),
                                                       cli="--s-noise", help="sigma noise (Euler, Heun, DPM2)",
                                                       api=True, option="s_noise", xyz="Sigma noise"))
    # GPU (A1111's default: CUDA's numbers on any device), CPU or NV
    randn_source: str = field(default="GPU", metadata=about(
        label="RNG", choices=RANDN_SOURCES, cli="--randn-source", option="randn_source", xyz="RNG source",
        help="noise source as A1111's RNG setting (default: GPU, CUDA's numbers on any device)"))
    # A1111's ENSD: offsets the noise drawn after the initial noise
    eta_noise_seed_delta: int = field(default=0, metadata=about(
        label="ENSD", write=_ensd_entry, cli="--ensd", help="A1111's eta noise seed delta",
        option="eta_noise_seed_delta"))
    # A1111's CLIP_stop_at_last_layers: SD 1.x text encoders; SD 2.x ignores it, as A1111
    clip_skip: int = field(default=1, metadata=about(label="Clip skip", cli="--clip-skip",
                                                      help="A1111's clip skip (SD 1.x models)",
                                                      option="CLIP_stop_at_last_layers", xyz="Clip skip"))
    # A1111's negative guidance minimum sigma (NGMS): below this sigma every other model call skips the
    # negative prompt (sampling/cfg.py); 0: off. A1111's slider range.
    s_min_uncond: float = field(default=0.0, metadata=about(
        label="NGMS", range=(0, 15), cli="--s-min-uncond", api=True, option="s_min_uncond",
        xyz="Negative Guidance minimum sigma",
        help="A1111's negative guidance minimum sigma (NGMS): below it every other step skips the negative "
             "prompt, faster (0: off)"))
    # A1111's "NGMS all steps": every model call below the NGMS sigma skips the negative prompt, not every other
    s_min_uncond_all: bool = field(default=False, metadata=about(
        label="NGMS all steps", write=_ngms_all_entry, cli="--ngms-all-steps", option="s_min_uncond_all",
        help="with NGMS: every step below it skips the negative prompt, not every other (A1111's NGMS all steps)"))
    # A1111's "Always discard next-to-last sigma": a k-diffusion schedule one step longer that loses its
    # next-to-last sigma (sampling/run.py)
    always_discard_next_to_last_sigma: bool = field(default=False, metadata=about(
        label="Discard penultimate sigma", write=_discard_entry, cli="--discard-penultimate-sigma",
        option="always_discard_next_to_last_sigma", xyz="Always discard next-to-last sigma",
        help="A1111's \"always discard next-to-last sigma\": one step more, the next-to-last sigma dropped "
             "(k-diffusion samplers)"))
    # --- SD upscale (issue #24; app/engine/sd_upscale.py): img2img only. A1111's script args by name:
    # {"overlap": 64, "upscaler": "Lanczos", "scale_factor": 2}; the tiles are width x height ---
    sd_upscale: dict | None = None
    # --- Extras (issue #24; app/engine/extras.py): not a generation but a postprocessing job on init_image
    # (upscale, face restoration), A1111's extras fields by name; the web layer sets it, never a form ---
    extras: dict | None = None
    # --- faces (issue #24; app/engine/faces), after generation: restoration as A1111, then detailing ---
    restore_faces: bool = field(default=False, metadata=about(api=True))
    face_restorer: str = field(default="CodeFormer", metadata=about(  # CodeFormer or GFPGAN
        option="face_restoration_model"))
    code_former_weight: float = field(default=0.5, metadata=about(  # CodeFormer's w: 0 strongest, 1 most faithful
        option="code_former_weight"))
    face_detail: bool = False  # ADetailer's core: each face found inpainted again, only masked, at full size
    face_detail_strength: float = 0.4  # ADetailer's defaults from here on
    face_detail_prompt: str = ""  # empty: the image's prompt
    face_detail_negative_prompt: str = ""  # empty: the image's negative prompt
    face_detail_confidence: float = 0.3  # the detector's score threshold
    face_detail_dilate: int = 4  # pixels the face's box grows by (negative: shrinks), ADetailer's dilate/erode
    face_detail_mask_blur: int = 4  # pixels
    face_detail_padding: int = 32  # pixels around the face, only masked
    # --- ControlNet units (issue #25; app/engine/controlnet.py): dicts of ControlUnit's fields, images as base64 PNG ---
    controlnet: list[dict] = field(default_factory=list)
    # --- fast modes (issue #26; app/engine/fast_modes.py, docs/speed.md): each trades some fidelity for time ---
    # DeepCache: the whole UNet every N model calls, its shallow branch between (0: off; 1 is refused)
    deepcache_interval: int = field(default=0, metadata=about(
        label="DeepCache", range=(0, 5), cli="--deepcache-interval", api=True,
        help="DeepCache: the whole UNet every N model calls (2-5), only its outer layers between; faster, fine "
             "detail drifts (0: off)"))
    # ToMe for SD: the share of the full-resolution tokens merged before self-attention (0: off)
    tome_ratio: float = field(default=0.0, metadata=about(
        label="ToMe", range=(0, 0.75), cli="--tome-ratio", api=True,
        help="token merging (ToMe): share of the full-resolution tokens merged before self-attention, "
             "0-0.75; a little faster, texture softens (0: off)"))

    def validate(self, limits: Limits = DEFAULT_LIMITS, templates: bool = True) -> "GenerationRequest":
        """Check every field; raise ValidationError on the first bad one.
        Returns self with the scheduler name made canonical. ``templates``: the prompts may be
        dynamic-prompt templates, checked as such (False: prompts a template resolved to, whose
        braces are text). The common fields are checked here, each feature's beside its code
        (``check(request, limits)``), in a fixed order: the first error a request gets is stable."""
        if self.extras is not None:  # a postprocessing job: no prompt, steps or sampler to check
            from app.engine.extras import validate_extras

            validate_extras(self, limits)
            return self
        check_text("prompt", self.prompt, limits)
        if not self.prompt.strip():
            raise ValidationError("prompt", self.prompt, "must not be empty")
        check_text("negative_prompt", self.negative_prompt, limits)
        if templates:  # {a|b} and __name__ (app/engine/dynamic_prompts.py): the syntax and bounds, files aside
            from app.engine.dynamic_prompts import template_problem

            template_problem("prompt", self.prompt)
            template_problem("negative_prompt", self.negative_prompt)
        lora_tags.check(self, limits)  # the prompt's syntax below is checked without its <lora:...> tags
        prompt_text = split_lora_tags(self.prompt)[0]
        check_size(self.width, self.height, limits)
        check_int("steps", self.steps)
        if not 1 <= self.steps <= limits.max_steps:
            raise ValidationError("steps", self.steps, f"must be between 1 and {limits.max_steps}")
        # What A1111's prompt parser fails on, in every prompt the schedule makes (app/engine/prompts.py);
        # and A1111's composable prompts, which this server does not run.
        if _AND.search(prompt_text):
            raise ValidationError("prompt", self.prompt, "composable prompts (AND) are not supported; write one "
                                                         "prompt, or use prompt editing [from:to:when]")
        for name, text in (("prompt", prompt_text), ("negative_prompt", self.negative_prompt)):
            problem = prompt_syntax_problem(text, steps=self.steps)
            if problem:
                raise ValidationError(name, getattr(self, name), problem)
        check_number("guidance_scale", self.guidance_scale)
        if not 0 <= self.guidance_scale <= limits.max_guidance:
            raise ValidationError("guidance_scale", self.guidance_scale, f"must be between 0 and {limits.max_guidance}")
        self.seed = check_seed("seed", self.seed)
        spec = find_scheduler(self.scheduler)
        if spec is None:
            raise ValidationError("scheduler", self.scheduler, "is not one of " + ", ".join(scheduler_names()) +
                                  ", optionally followed by a schedule type: " + ", ".join(schedule_labels()))
        self.scheduler = spec.name
        check_int("num_images", self.num_images)
        if not 1 <= self.num_images <= limits.max_images:
            raise ValidationError("num_images", self.num_images, f"must be between 1 and {limits.max_images}")
        check_number("strength", self.strength)
        if not 0 <= self.strength <= 1:
            raise ValidationError("strength", self.strength, "must be between 0 and 1")
        if self.init_image is not None:
            if not (hasattr(self.init_image, "size") and hasattr(self.init_image, "convert")):
                raise ValidationError("init_image", type(self.init_image).__name__, "must be an image")
            w, h = self.init_image.size
            if w * h > limits.max_pixels:
                raise ValidationError("init_image", f"{w}x{h}", f"is more than {limits.max_pixels} pixels")
        check_bool("tiling", self.tiling)
        for check in feature_checks():
            check(self, limits)
        if not isinstance(self.styles, (list, tuple)) or not all(isinstance(n, str) for n in self.styles):
            raise ValidationError("styles", self.styles, "must be a list of style names")
        self.styles = list(self.styles)
        check_int("save_steps", self.save_steps)
        if self.save_steps < 0:
            raise ValidationError("save_steps", self.save_steps, "must be 0 (off) or a positive step interval")
        from app.engine import controlnet

        controlnet.check(self, limits)
        self._check_ranges()
        return self

    def _check_ranges(self) -> None:
        """Each field whose range is given with it (``about(range=...)``) within it, and each described
        switch a bool: a new number or switch field needs no check of its own. (None: the field's "unset".)"""
        for name, (f, about_) in described().items():
            value = getattr(self, name)
            if "about" in f.metadata and kind(f) is bool:
                check_bool(name, value)
            if about_.range is None or value is None:
                continue
            if kind(f) is int:
                check_int(name, value)
            check_range(name, value)

    def batch_seeds(self) -> tuple[list[int], list[int]]:
        """Each image's seed and variation seed, by A1111's batch rule: without a variation the seeds
        count up from ``seed``; with one, every image shares ``seed`` and the variation seeds count up."""
        assert self.seed is not None
        subseed = self.subseed if self.subseed is not None else 0
        step = 0 if self.subseed_strength > 0 else 1
        seeds = [(self.seed + i * step) % (MAX_SEED + 1) for i in range(self.num_images)]
        return seeds, [(subseed + i) % (MAX_SEED + 1) for i in range(self.num_images)]

    def with_seed(self) -> "GenerationRequest":
        """This request with a random seed drawn if it has none, so that a job,
        its images and "reuse settings" all know the seed it ran with."""
        request = self if self.seed is not None and self.seed != -1 else replace(self, seed=draw_seed())
        if request.subseed_strength > 0 and (request.subseed is None or request.subseed == -1):
            request = replace(request, subseed=draw_seed())
        return request

    def to_dict(self) -> dict:
        """Every field but the init image and mask (stored apart, as PNG bytes),
        as JSON values, plus ``has_init_image`` and ``has_mask``. ``from_dict`` reads it back."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in IMAGE_FIELDS}
        data["has_init_image"] = self.init_image is not None
        data["has_mask"] = self.mask is not None
        return data

    @classmethod
    def from_dict(cls, data: dict, init_image: Any = None, mask: Any = None) -> "GenerationRequest":
        """The request ``to_dict`` described. Keys that are not fields (such as
        ``has_init_image``) are skipped; missing ones take their defaults."""
        return cls(init_image=init_image, mask=mask,
                   **{name: data[name] for name in field_names() if name in data and name not in IMAGE_FIELDS})

    @classmethod
    def defaults(cls) -> dict:
        """Each field's default (the form's, the CLI's and the widgets' starting values)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING and f.name not in IMAGE_FIELDS}


IMAGE_FIELDS = ("init_image", "mask")  # images: stored apart from the JSON params


def described() -> dict[str, tuple[Field, About]]:
    """Each request field with its facts (app/engine/fields.py), in declaration order."""
    return {f.name: (f, facts(f)) for f in fields(GenerationRequest)}


# The ranges given with the fields join base's table (where the features' checks read theirs), so that
# validation, the page's inputs and the notebook's widgets know them.
FIELD_RANGES.update({name: about_.range for name, (_, about_) in described().items() if about_.range is not None})


def feature_checks() -> tuple[Callable[[GenerationRequest, Limits], None], ...]:
    """Each feature's ``check(request, limits)``, in the order ``validate`` runs them: the first
    error a request gets depends on it. Imported when asked for, as the features bring torch."""
    from app.engine import fast_modes, hires, inpaint, sd_upscale
    from app.engine.faces import checks as faces
    from app.engine.sampling import checks as sampler
    from app.engine.sampling import rng

    return inpaint.check, hires.check, rng.check, sampler.check, sd_upscale.check, faces.check, fast_modes.check


def field_names() -> tuple[str, ...]:
    """The request's fields, in order: the API's and the form's field list."""
    return tuple(f.name for f in fields(GenerationRequest))


def check_size(width: int | None, height: int | None, limits: Limits = DEFAULT_LIMITS) -> None:
    """Width and height (None: not given yet) against the limits."""
    for name, value, top in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value is None:
            continue
        check_int(name, value)
        if value % SIZE_MULTIPLE:
            raise ValidationError(name, value, f"must be a multiple of {SIZE_MULTIPLE}")
        if not limits.min_size <= value <= top:
            raise ValidationError(name, value, f"must be between {limits.min_size} and {top}")
    if width and height and width * height > limits.max_pixels:
        raise ValidationError("width", width, f"{width}x{height} is more than {limits.max_pixels} pixels")


__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "IMAGE_FIELDS",
    "Limits",
    "DEFAULT_LIMITS",
    "StepInfo",
    "ValidationError",
    "MAX_SEED",
    "SIZE_MULTIPLE",
    "FIELD_RANGES",
    "check_size",
    "check_text",
    "field_range",
    "draw_seed",
    "field_names",
    "floor_size",
    "short_repr",
]
