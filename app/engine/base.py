"""The engine's lowest module: the error, limits, small values and field checks every
feature shares. It imports nothing from app, so any module of the engine (types.py, the
feature modules whose checks types.py calls, the upscalers) can import it without
closing an import cycle. A feature's check takes the request typed by a
``TYPE_CHECKING`` import of types.py, which runs no import."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

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
    control_maps: list = field(default_factory=list)  # PIL: the ControlNet units' maps (app/engine/controlnet.py)

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


class GenerationCancelled(Exception):
    """Raised by ``Engine.generate`` when its cancel event is set mid-run."""

    def __init__(self, step: int, total: int, partial: "GenerationResult | None" = None):
        self.step, self.total = step, total
        # The images the last step's latents decode to (A1111 keeps an interrupted image too);
        # None when the run stopped before its first step.
        self.partial = partial
        super().__init__(f"cancelled after step {step} of {total}")


class Quoted(str):
    """A settings value that may hold ',' or ':' (``Lora hashes: "a: 0123456789ab, b: ..."``):
    written in JSON quotes when it does, as A1111's ``infotext_utils.quote``, instead of cleaned."""


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
}


def field_range(name: str) -> tuple[float, float]:
    return FIELD_RANGES[name]


# --- field checks: each raises ValidationError naming the field and the value ---

def check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, value, "must be an integer")


def check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(name, value, "must be a number")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(name, value, "must be true or false")


def check_range(name: str, value: Any) -> None:
    """A number within its FIELD_RANGES bounds."""
    check_number(name, value)
    low, high = field_range(name)
    if not low <= value <= high:
        raise ValidationError(name, value, f"must be between {low:g} and {high:g}")


def check_seed(name: str, value: Any) -> int | None:
    """A seed field: None or -1 mean random (None), else a whole number in A1111's range."""
    if value is None:
        return None
    check_int(name, value)
    if value == -1:
        return None
    if not 0 <= value <= MAX_SEED:
        raise ValidationError(name, value, f"must be between 0 and {MAX_SEED}, or -1 for random")
    return value


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
