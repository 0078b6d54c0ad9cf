"""Request and result types of the engine, and their validation.

Validation runs before any heavy work and every error names the field and the
value, so the CLI, the web app and the notebooks all report bad input the same
way.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from app.engine.prompts import prompt_syntax_problem
from app.engine.schedulers import DEFAULT_SCHEDULER, find_scheduler, scheduler_names

MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 8  # the VAE's downscale factor: latents are width/8 x height/8


def draw_seed() -> int:
    """A random seed in A1111's range. The only place one is drawn."""
    return secrets.randbelow(MAX_SEED + 1)


def floor_size(value: int) -> int:
    """A pixel size rounded down to a multiple of SIZE_MULTIPLE (A1111 floors too)."""
    return value - value % SIZE_MULTIPLE


class ValidationError(ValueError):
    """A request parameter is wrong. ``field`` and ``value`` say which and what."""

    def __init__(self, field: str, value: Any, message: str):
        self.field = field
        self.value = value
        self.message = message
        super().__init__(f"{field}: {message} (got {short_repr(value)})")

    def to_dict(self) -> dict:
        return {"field": self.field, "value": short_repr(self.value), "message": self.message}


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request may ask for. The web app tightens
    these for public links; the CLI uses the generous defaults."""

    max_width: int = 2048
    max_height: int = 2048
    max_pixels: int = 2048 * 2048
    min_size: int = 64
    max_steps: int = 150
    max_images: int = 8
    max_prompt_chars: int = 4000
    max_guidance: float = 30.0


DEFAULT_LIMITS = Limits()


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

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> "GenerationRequest":
        """Check every field; raise ValidationError on the first bad one.
        Returns self with the scheduler name made canonical."""
        check_text("prompt", self.prompt, limits)
        if not self.prompt.strip():
            raise ValidationError("prompt", self.prompt, "must not be empty")
        check_text("negative_prompt", self.negative_prompt, limits)
        # A1111 prompt syntax the engine does not run (prompt editing, alternation): app/engine/prompts.py.
        for name in ("prompt", "negative_prompt"):
            problem = prompt_syntax_problem(getattr(self, name))
            if problem:
                raise ValidationError(name, getattr(self, name), problem)
        check_size(self.width, self.height, limits)
        _check_int("steps", self.steps)
        if not 1 <= self.steps <= limits.max_steps:
            raise ValidationError("steps", self.steps, f"must be between 1 and {limits.max_steps}")
        _check_number("guidance_scale", self.guidance_scale)
        if not 0 <= self.guidance_scale <= limits.max_guidance:
            raise ValidationError("guidance_scale", self.guidance_scale, f"must be between 0 and {limits.max_guidance}")
        if self.seed is not None:
            _check_int("seed", self.seed)
            if self.seed == -1:
                self.seed = None
            elif not 0 <= self.seed <= MAX_SEED:
                raise ValidationError("seed", self.seed, f"must be between 0 and {MAX_SEED}, or -1 for random")
        spec = find_scheduler(self.scheduler)
        if spec is None:
            raise ValidationError("scheduler", self.scheduler, "is not one of " + ", ".join(scheduler_names()))
        self.scheduler = spec.name
        _check_int("num_images", self.num_images)
        if not 1 <= self.num_images <= limits.max_images:
            raise ValidationError("num_images", self.num_images, f"must be between 1 and {limits.max_images}")
        _check_number("strength", self.strength)
        if not 0 < self.strength <= 1:
            raise ValidationError("strength", self.strength, "must be greater than 0 and at most 1")
        if self.init_image is not None:
            if not (hasattr(self.init_image, "size") and hasattr(self.init_image, "convert")):
                raise ValidationError("init_image", type(self.init_image).__name__, "must be an image")
            w, h = self.init_image.size
            if w * h > limits.max_pixels:
                raise ValidationError("init_image", f"{w}x{h}", f"is more than {limits.max_pixels} pixels")
            if int(self.steps * self.strength) < 1:
                raise ValidationError("strength", self.strength,
                                      f"with {self.steps} steps leaves no denoising step; raise steps or strength")
        if not isinstance(self.tiling, bool):
            raise ValidationError("tiling", self.tiling, "must be true or false")
        _check_int("save_steps", self.save_steps)
        if self.save_steps < 0:
            raise ValidationError("save_steps", self.save_steps, "must be 0 (off) or a positive step interval")
        return self

    def with_seed(self) -> "GenerationRequest":
        """This request with a random seed drawn if it has none, so that a job,
        its images and "reuse settings" all know the seed it ran with."""
        return self if self.seed is not None and self.seed != -1 else replace(self, seed=draw_seed())

    def to_dict(self) -> dict:
        """Every field but the init image (stored apart, as PNG bytes), as JSON
        values, plus ``has_init_image``. ``from_dict`` reads it back."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "init_image"}
        data["has_init_image"] = self.init_image is not None
        return data

    @classmethod
    def from_dict(cls, data: dict, init_image: Any = None) -> "GenerationRequest":
        """The request ``to_dict`` described. Keys that are not fields (such as
        ``has_init_image``) are skipped; missing ones take their defaults."""
        return cls(init_image=init_image, **{name: data[name] for name in field_names() if name in data})

    @classmethod
    def defaults(cls) -> dict:
        """Each field's default (the form's, the CLI's and the widgets' starting values)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING and f.name != "init_image"}


def field_names() -> tuple[str, ...]:
    """The request's fields, in order: the API's and the form's field list."""
    return tuple(f.name for f in fields(GenerationRequest))


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


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, value, "must be an integer")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(name, value, "must be a number")


@dataclass
class StepInfo:
    """What the progress callback gets after each denoising step."""

    step: int  # 1-based count of finished steps
    total: int
    latents: Any  # torch.Tensor, the current latents (batch, 4, h/8, w/8)


@dataclass
class GenerationResult:
    images: list  # PIL images
    seeds: list[int]
    infotexts: list[str]  # A1111-style "parameters" text of each image
    request: GenerationRequest
    model: str
    width: int
    height: int
    seconds: float
    step_images: list = field(default_factory=list)  # previews kept with save_steps

    def to_dict(self) -> dict:
        return {
            "seeds": self.seeds,
            "infotexts": self.infotexts,
            "request": self.request.to_dict(),
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
            "num_step_images": len(self.step_images),
        }


__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "Limits",
    "DEFAULT_LIMITS",
    "StepInfo",
    "ValidationError",
    "MAX_SEED",
    "SIZE_MULTIPLE",
    "check_size",
    "check_text",
    "draw_seed",
    "field_names",
    "floor_size",
    "short_repr",
]
