"""Request and result types of the engine, and their validation.

Validation runs before any heavy work and every error names the field and the
value, so the CLI, the web app and the notebooks all report bad input the same
way.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from app.engine.base import (
    DEFAULT_LIMITS,
    MAX_SEED,
    SIZE_MULTIPLE,
    GenerationResult,
    Limits,
    StepInfo,
    ValidationError,
    draw_seed,
    floor_size,
    short_repr,
)
from app.engine.loras import has_extra_networks, split_lora_tags
from app.engine.prompts import prompt_syntax_problem
from app.engine.schedulers import DEFAULT_SCHEDULER, RANDN_SOURCES, find_scheduler, schedule_labels, scheduler_names

_AND = re.compile(r"\bAND\b")  # A1111's composable-prompt separator (prompt_parser.re_AND), positive prompt only


# Fixed bounds of request fields (the limits above are the settings' part): the one table
# validation, the page's inputs and the notebook's widgets read.
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "mask_blur": (0, 64),  # pixels
    "inpaint_full_res_padding": (0, 256),  # pixels
    "outpaint": (0, 512),  # pixels
    "hr_scale": (1, 4),
    "subseed_strength": (0, 1),
    # Sampler settings (app/engine/sampling): A1111's slider ranges.
    "eta": (0, 1),
    "s_churn": (0, 100),
    "s_tmin": (0, 10),
    "s_tmax": (0, 999),  # 0: infinity
    "s_noise": (0, 1.1),
    "clip_skip": (1, 12),
    # Faces (issue #24; app/engine/faces): CodeFormer's w, ADetailer's slider ranges.
    "code_former_weight": (0, 1),
    "face_detail_strength": (0, 1),
    "face_detail_confidence": (0, 1),
    "face_detail_dilate": (-128, 128),  # pixels
    "face_detail_mask_blur": (0, 64),  # pixels
    "face_detail_padding": (0, 256),  # pixels
    # Fast modes (issue #26; docs/speed.md): DeepCache's full-call interval (0 off, 2..5), ToMe's merge ratio.
    "deepcache_interval": (0, 5),
    "tome_ratio": (0, 0.75),
}


def field_range(name: str) -> tuple[float, float]:
    return FIELD_RANGES[name]


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
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    num_images: int = 1
    init_image: Any = None  # PIL.Image.Image
    strength: float = 0.75
    save_steps: int = 0  # keep a preview every N steps (0: none)
    tiling: bool = False  # seamless: the image wraps around left/right and top/bottom (A1111's "Tiling")
    # --- inpainting (issue #12; app/engine/inpaint.py): needs init_image; white in the mask repaints ---
    mask: Any = None  # PIL.Image.Image
    mask_blur: int = 4  # pixels
    inpainting_fill: int = 1  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "only masked": the masked region alone at full size, pasted back
    inpaint_full_res_padding: int = 32  # pixels around the masked region, only masked
    inpainting_mask_invert: bool = False  # repaint the black area instead
    outpaint: int = 0  # pixels to extend the init image by, then inpaint the new area (needs no mask)
    outpaint_directions: str = "left,right,up,down"  # comma-separated sides to extend
    # --- hires fix (issue #12; app/engine/hires.py): txt2img, then upscale and img2img at ``strength`` ---
    enable_hr: bool = False
    hr_scale: float = 2.0  # used when hr_resize_x and hr_resize_y are 0
    hr_resize_x: int = 0  # target width (0: from hr_scale, or keep the aspect)
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"  # Latent variants, Lanczos or None
    hr_second_pass_steps: int = 0  # 0: the first pass's steps
    # --- variation seeds (issue #12; app/engine/sampling/rng.py) ---
    subseed: int | None = None  # None or -1: random, drawn with the seed
    subseed_strength: float = 0.0  # 0: the seed's noise, 1: the variation seed's
    seed_resize_from_w: int = 0  # the noise this seed gives at another size (0: off)
    seed_resize_from_h: int = 0
    # --- prompt styles (issue #15; app/engine/styles.py) ---
    # The names of the styles already applied to prompt and negative_prompt (by the web API, from styles.csv):
    # a record of how the prompt was made, as A1111's infotext keeps the styled prompt. Nothing here applies them.
    styles: list[str] = field(default_factory=list)
    # --- sampler settings (issue #21; app/engine/sampling), A1111's names ---
    eta: float | None = None  # None: the sampler's default (1 for the ancestral and SDE samplers, 0 for DDIM)
    s_churn: float = 0.0  # Euler, Heun, DPM2 only, as A1111
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: infinity
    s_noise: float = 1.0
    randn_source: str = "GPU"  # GPU (A1111's default: CUDA's numbers on any device), CPU or NV
    eta_noise_seed_delta: int = 0  # A1111's ENSD: offsets the noise drawn after the initial noise
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers: SD 1.x text encoders; SD 2.x ignores it, as A1111
    # --- SD upscale (issue #24; app/engine/sd_upscale.py): img2img only. A1111's script args by name:
    # {"overlap": 64, "upscaler": "Lanczos", "scale_factor": 2}; the tiles are width x height ---
    sd_upscale: dict | None = None
    # --- Extras (issue #24; app/engine/extras.py): not a generation but a postprocessing job on init_image
    # (upscale, face restoration), A1111's extras fields by name; the web layer sets it, never a form ---
    extras: dict | None = None
    # --- faces (issue #24; app/engine/faces), after generation: restoration as A1111, then detailing ---
    restore_faces: bool = False
    face_restorer: str = "CodeFormer"  # CodeFormer or GFPGAN (A1111's face_restoration_model)
    code_former_weight: float = 0.5  # CodeFormer's w: 0 strongest, 1 most faithful to the image
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
    # --- fast modes (issue #26; docs/speed.md): each trades some fidelity to the full run for time ---
    deepcache_interval: int = 0  # DeepCache: the whole UNet every N model calls, its shallow branch between (0: off)
    tome_ratio: float = 0.0  # ToMe: share of the full-resolution tokens merged before self-attention (0: off)

    def validate(self, limits: Limits = DEFAULT_LIMITS, templates: bool = True) -> "GenerationRequest":
        """Check every field; raise ValidationError on the first bad one.
        Returns self with the scheduler name made canonical. ``templates``: the prompts may be
        dynamic-prompt templates, checked as such (False: prompts a template resolved to, whose
        braces are text)."""
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
        # <lora:name:weight> tags (app/engine/loras.py): the prompt's are checked here and taken out
        # before the syntax check; the negative prompt's are refused (A1111 reads them from the prompt only).
        try:
            prompt_text = split_lora_tags(self.prompt)[0]
        except ValueError as exc:
            raise ValidationError("prompt", self.prompt, str(exc)) from None
        if has_extra_networks(self.negative_prompt):
            raise ValidationError("negative_prompt", self.negative_prompt,
                                  "<lora:...> tags work only in the prompt; move them there")
        check_size(self.width, self.height, limits)
        _check_int("steps", self.steps)
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
        _check_number("guidance_scale", self.guidance_scale)
        if not 0 <= self.guidance_scale <= limits.max_guidance:
            raise ValidationError("guidance_scale", self.guidance_scale, f"must be between 0 and {limits.max_guidance}")
        self.seed = _check_seed("seed", self.seed)
        spec = find_scheduler(self.scheduler)
        if spec is None:
            raise ValidationError("scheduler", self.scheduler, "is not one of " + ", ".join(scheduler_names()) +
                                  ", optionally followed by a schedule type: " + ", ".join(schedule_labels()))
        self.scheduler = spec.name
        _check_int("num_images", self.num_images)
        if not 1 <= self.num_images <= limits.max_images:
            raise ValidationError("num_images", self.num_images, f"must be between 1 and {limits.max_images}")
        _check_number("strength", self.strength)
        if not 0 <= self.strength <= 1:
            raise ValidationError("strength", self.strength, "must be between 0 and 1")
        if self.init_image is not None:
            if not (hasattr(self.init_image, "size") and hasattr(self.init_image, "convert")):
                raise ValidationError("init_image", type(self.init_image).__name__, "must be an image")
            w, h = self.init_image.size
            if w * h > limits.max_pixels:
                raise ValidationError("init_image", f"{w}x{h}", f"is more than {limits.max_pixels} pixels")
        if not isinstance(self.tiling, bool):
            raise ValidationError("tiling", self.tiling, "must be true or false")
        self._validate_inpaint(limits)
        self._validate_hires(limits)
        self._validate_variation(limits)
        self._validate_sampler_settings()
        self._validate_sampler_steps()
        if self.sd_upscale is not None:
            from app.engine.sd_upscale import validate_sd_upscale

            validate_sd_upscale(self, limits)
        self._validate_faces(limits)
        self._validate_fast_modes()
        if not isinstance(self.styles, (list, tuple)) or not all(isinstance(n, str) for n in self.styles):
            raise ValidationError("styles", self.styles, "must be a list of style names")
        self.styles = list(self.styles)
        _check_int("save_steps", self.save_steps)
        if self.save_steps < 0:
            raise ValidationError("save_steps", self.save_steps, "must be 0 (off) or a positive step interval")
        from app.engine.controlnet import check_units

        self.controlnet = check_units(self.controlnet)
        for i, unit in enumerate(self.controlnet):  # img2img's units may use the init image (the extension's rule)
            if unit.get("image") is None and self.init_image is None and unit.get("enabled", True):
                raise ValidationError(f"controlnet[{i}].image", None, "is required without an init image")
        if self.controlnet and self.sd_upscale is not None:  # each tile would get the whole image's map
            raise ValidationError("controlnet", f"{len(self.controlnet)} unit(s)",
                                  "SD upscale runs its tiles without ControlNet: leave out one or the other")
        return self

    def _validate_inpaint(self, limits: Limits) -> None:
        _check_int("mask_blur", self.mask_blur)
        low, high = field_range("mask_blur")
        if not low <= self.mask_blur <= high:
            raise ValidationError("mask_blur", self.mask_blur, f"must be between {low} and {high} pixels")
        _check_int("inpainting_fill", self.inpainting_fill)
        if self.inpainting_fill not in (0, 1, 2, 3):
            raise ValidationError("inpainting_fill", self.inpainting_fill,
                                  "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)")
        _check_int("inpaint_full_res_padding", self.inpaint_full_res_padding)
        low, high = field_range("inpaint_full_res_padding")
        if not low <= self.inpaint_full_res_padding <= high:
            raise ValidationError("inpaint_full_res_padding", self.inpaint_full_res_padding,
                                  f"must be between {low} and {high} pixels")
        for name in ("inpaint_full_res", "inpainting_mask_invert"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, getattr(self, name), "must be true or false")
        _check_int("outpaint", self.outpaint)
        low, high = field_range("outpaint")
        if not low <= self.outpaint <= high:
            raise ValidationError("outpaint", self.outpaint, f"must be between {low} (off) and {high} pixels")
        if self.outpaint:
            self._validate_outpaint(limits)
        if self.mask is None:
            return
        if not (hasattr(self.mask, "size") and hasattr(self.mask, "convert")):
            raise ValidationError("mask", type(self.mask).__name__, "must be an image")
        if self.init_image is None:
            raise ValidationError("mask", "mask", "needs an init image to inpaint")
        w, h = self.mask.size
        if w * h > limits.max_pixels:
            raise ValidationError("mask", f"{w}x{h}", f"is more than {limits.max_pixels} pixels")

    def _validate_outpaint(self, limits: Limits) -> None:
        from app.engine.inpaint import OUTPAINT_DIRECTIONS

        sides = self.outpaint_sides() if isinstance(self.outpaint_directions, str) else ()
        if not sides or any(side not in OUTPAINT_DIRECTIONS for side in sides):
            raise ValidationError("outpaint_directions", self.outpaint_directions,
                                  "must name one or more of " + ", ".join(OUTPAINT_DIRECTIONS) + ", comma-separated")
        if self.init_image is None:
            raise ValidationError("outpaint", self.outpaint, "needs an init image to extend")
        if self.mask is not None:
            raise ValidationError("mask", "mask", "outpainting makes its own mask; send one or the other")
        w, h = self.init_image.size
        if self.width not in (None, floor_size(w)) or self.height not in (None, floor_size(h)):
            raise ValidationError("width", self.width, "outpainting keeps the init image's size and adds to it; "
                                                       "leave out width and height")
        grow_w = self.outpaint * sum(side in sides for side in ("left", "right"))
        grow_h = self.outpaint * sum(side in sides for side in ("up", "down"))
        new_w, new_h = w + grow_w + 8, h + grow_h + 8  # the most rounding to 8 can add
        if new_w > limits.max_width or new_h > limits.max_height or new_w * new_h > limits.max_pixels:
            raise ValidationError("outpaint", self.outpaint, f"makes a canvas of about {new_w}x{new_h}; the "
                                                             f"limits are {limits.max_width}x{limits.max_height} "
                                                             f"and {limits.max_pixels} pixels")

    def outpaint_sides(self) -> tuple[str, ...]:
        return tuple(side.strip().lower() for side in self.outpaint_directions.split(",") if side.strip())

    def _validate_hires(self, limits: Limits) -> None:
        from app.engine.hires import find_upscaler

        if not isinstance(self.enable_hr, bool):
            raise ValidationError("enable_hr", self.enable_hr, "must be true or false")
        _check_number("hr_scale", self.hr_scale)
        low, high = field_range("hr_scale")
        if not low <= self.hr_scale <= high:
            raise ValidationError("hr_scale", self.hr_scale, f"must be between {low} and {high}")
        for name in ("hr_resize_x", "hr_resize_y"):
            _check_int(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ValidationError(name, getattr(self, name), "must be 0 (from hr_scale) or a size in pixels")
        _check_int("hr_second_pass_steps", self.hr_second_pass_steps)
        if not 0 <= self.hr_second_pass_steps <= limits.max_steps:
            raise ValidationError("hr_second_pass_steps", self.hr_second_pass_steps,
                                  f"must be between 0 (the first pass's) and {limits.max_steps}")
        upscaler = find_upscaler(self.hr_upscaler) if isinstance(self.hr_upscaler, str) else None
        if upscaler is None:
            raise ValidationError("hr_upscaler", self.hr_upscaler, "no such upscaler on this server: a latent mode "
                                  "or a name from /sdapi/v1/upscalers")
        self.hr_upscaler = upscaler
        if not self.enable_hr:
            return
        from app.engine.upscalers.download import check_reachable

        check_reachable("hr_upscaler", upscaler)  # offline and not downloaded: say so now, not after the first pass
        if self.init_image is not None:
            raise ValidationError("enable_hr", True, "hires fix is for txt2img; leave out the init image")
        if self.save_steps:
            raise ValidationError("save_steps", self.save_steps, "step previews are not kept with hires fix")
        if self.width and self.height:
            check_hires_size(self, self.width, self.height, limits)

    def _validate_variation(self, limits: Limits) -> None:
        self.subseed = _check_seed("subseed", self.subseed)
        _check_number("subseed_strength", self.subseed_strength)
        low, high = field_range("subseed_strength")
        if not low <= self.subseed_strength <= high:
            raise ValidationError("subseed_strength", self.subseed_strength, f"must be between {low} and {high}")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            _check_int(name, value)
            if value == -1:  # A1111's "off"
                setattr(self, name, 0)
            elif value < 0 or value > max(limits.max_width, limits.max_height):
                raise ValidationError(name, value, "must be 0 (off) or a size in pixels within the limits")
        resize = self.seed_resize_from_w or self.seed_resize_from_h
        if resize and not (self.seed_resize_from_w and self.seed_resize_from_h):
            raise ValidationError("seed_resize_from_w" if not self.seed_resize_from_w else "seed_resize_from_h", 0,
                                  "seed resize needs both seed_resize_from_w and seed_resize_from_h")

    def _validate_sampler_settings(self) -> None:
        if self.eta is not None:
            _check_range("eta", self.eta)
        for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
            _check_range(name, getattr(self, name))
        if self.randn_source not in RANDN_SOURCES:
            raise ValidationError("randn_source", self.randn_source, "must be one of " + ", ".join(RANDN_SOURCES))
        _check_int("eta_noise_seed_delta", self.eta_noise_seed_delta)
        if not 0 <= self.eta_noise_seed_delta <= MAX_SEED:
            raise ValidationError("eta_noise_seed_delta", self.eta_noise_seed_delta, f"must be between 0 and {MAX_SEED}")
        _check_int("clip_skip", self.clip_skip)
        _check_range("clip_skip", self.clip_skip)

    def _validate_fast_modes(self) -> None:
        _check_int("deepcache_interval", self.deepcache_interval)
        _check_range("deepcache_interval", self.deepcache_interval)
        if self.deepcache_interval == 1:
            raise ValidationError("deepcache_interval", 1, "must be 0 (off) or 2 to 5: 1 would run every call in full")
        _check_number("tome_ratio", self.tome_ratio)
        _check_range("tome_ratio", self.tome_ratio)

    def _validate_faces(self, limits: Limits) -> None:
        from app.engine.faces.restore import RESTORERS, find_restorer, weights_needed
        from app.engine.faces.weights import missing_offline

        for name in ("restore_faces", "face_detail"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, getattr(self, name), "must be true or false")
        restorer = find_restorer(self.face_restorer)
        if restorer is None:
            raise ValidationError("face_restorer", self.face_restorer, "must be one of " + ", ".join(RESTORERS))
        self.face_restorer = restorer
        for name in ("code_former_weight", "face_detail_strength", "face_detail_confidence"):
            _check_range(name, getattr(self, name))
        for name in ("face_detail_dilate", "face_detail_mask_blur", "face_detail_padding"):
            _check_int(name, getattr(self, name))
            _check_range(name, getattr(self, name))
        for name in ("face_detail_prompt", "face_detail_negative_prompt"):
            text = getattr(self, name)
            check_text(name, text, limits)
            try:  # <lora:...> tags work in the face prompt too (it is a prompt of its own run)
                problem = prompt_syntax_problem(split_lora_tags(text)[0], steps=self.steps)
            except ValueError as exc:
                problem = str(exc)
            if problem:
                raise ValidationError(name, text, problem)
        if self.face_detail and self.save_steps:
            raise ValidationError("save_steps", self.save_steps, "step previews are not kept with face detailing")
        # last: the fields are checked first, then whether the models can be had
        why = missing_offline(weights_needed(self.restore_faces, restorer, self.face_detail))
        if why:
            name = "restore_faces" if self.restore_faces else "face_detail"
            raise ValidationError(name, True, why)

    def _validate_sampler_steps(self) -> None:
        """What A1111's timestep samplers cannot run: UniPC below its order (A1111 stops with an assertion),
        and a hires or img2img schedule longer than the model's 1000 timesteps."""
        from app.engine.hires import second_pass_steps
        from app.engine.schedulers import TIMESTEPS

        spec = find_scheduler(self.scheduler)
        if spec is None or spec.sampler.kind != TIMESTEPS:
            return
        passes = []
        if self.init_image is not None:
            passes.append((self.steps, int(min(self.strength, 0.999) * self.steps), "strength"))
        else:
            passes.append((self.steps, self.steps, "steps"))
        if self.enable_hr and self.strength > 0:
            hr = second_pass_steps(self)
            passes.append((int(hr / min(self.strength, 0.999)), hr - 1, "strength"))
        for total, denoised, name in passes:
            if total > 1000:
                raise ValidationError(name, getattr(self, name), f"makes {spec.sampler.name} run a {total}-step "
                                                                 "schedule; the model has 1000 timesteps")
            if spec.sampler.name == "UniPC" and denoised < 3:
                raise ValidationError(name, getattr(self, name), "UniPC needs at least 3 denoising steps (its order); "
                                                                 "raise steps or strength")

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


def field_names() -> tuple[str, ...]:
    """The request's fields, in order: the API's and the form's field list."""
    return tuple(f.name for f in fields(GenerationRequest))


def check_hires_size(request: GenerationRequest, width: int, height: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """The hires fix's final size against the limits, naming the field that set it."""
    from app.engine.hires import target_size

    w, h = target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    field = "hr_resize_x" if request.hr_resize_x or request.hr_resize_y else "hr_scale"
    value = getattr(request, field)
    if min(w, h) < limits.min_size or w > limits.max_width or h > limits.max_height or w * h > limits.max_pixels:
        raise ValidationError(field, value, f"makes a {w}x{h} image; the limits are {limits.max_width}x"
                                            f"{limits.max_height} and {limits.max_pixels} pixels")


def check_size(width: int | None, height: int | None, limits: Limits = DEFAULT_LIMITS) -> None:
    """Width and height (None: not given yet) against the limits."""
    for name, value, top in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value is None:
            continue
        _check_int(name, value)
        if value % SIZE_MULTIPLE:
            raise ValidationError(name, value, f"must be a multiple of {SIZE_MULTIPLE}")
        if not limits.min_size <= value <= top:
            raise ValidationError(name, value, f"must be between {limits.min_size} and {top}")
    if width and height and width * height > limits.max_pixels:
        raise ValidationError("width", width, f"{width}x{height} is more than {limits.max_pixels} pixels")


# C0 and C1 control characters but tab, newline and carriage return; and lone
# surrogates (JSON can spell "\ud800"), which no encoder will write into a PNG.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# The separator of A1111's infotext. Readers split on it (A1111 at a line start,
# sd-parsers anywhere), so a prompt holding it would be read back as another
# prompt and settings: it is refused rather than written ambiguously.
INFOTEXT_NEGATIVE = "Negative prompt:"


def check_text(name: str, value: Any, limits: Limits = DEFAULT_LIMITS) -> None:
    """A prompt or negative prompt: a string within the length limit that the
    PNG's infotext can carry and give back unchanged."""
    if not isinstance(value, str):
        raise ValidationError(name, value, "must be a string")
    if len(value) > limits.max_prompt_chars:
        raise ValidationError(name, value, f"is {len(value)} characters; the limit is {limits.max_prompt_chars}")
    bad = _BAD_CHAR.search(value)
    if bad:
        kind = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
        raise ValidationError(name, value, f"has {kind} (U+{ord(bad.group()):04X}) at position {bad.start()}; "
                                           "only tab, newline and carriage return are allowed")
    if INFOTEXT_NEGATIVE in value:
        raise ValidationError(name, value, f"must not contain {INFOTEXT_NEGATIVE!r}: PNG readers (A1111's PNG Info, "
                                           "sd-parsers) would read what follows it as the negative prompt; "
                                           "use the negative_prompt field")


def _check_seed(name: str, value: Any) -> int | None:
    """A seed field: None or -1 mean random (None), else a whole number in A1111's range."""
    if value is None:
        return None
    _check_int(name, value)
    if value == -1:
        return None
    if not 0 <= value <= MAX_SEED:
        raise ValidationError(name, value, f"must be between 0 and {MAX_SEED}, or -1 for random")
    return value


def _check_range(name: str, value: Any) -> None:
    """A number within its FIELD_RANGES bounds."""
    _check_number(name, value)
    low, high = field_range(name)
    if not low <= value <= high:
        raise ValidationError(name, value, f"must be between {low:g} and {high:g}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, value, "must be an integer")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(name, value, "must be a number")


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
    "check_size",
    "check_hires_size",
    "check_text",
    "draw_seed",
    "field_names",
    "floor_size",
    "short_repr",
]
