"""The engine's lowest module: the error, limits and small values every feature
shares. It imports nothing from app, so any module of the engine (types.py, the
feature modules whose checks types.py calls, the upscalers) can import it
without closing an import cycle."""
from __future__ import annotations

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
