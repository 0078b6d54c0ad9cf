"""The options of one fine-tuning run, checked before any data or model is touched."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.engine.types import ValidationError
from app.models.loading import DEFAULT_MODEL_ID

MODES = ("text-encoder", "lora")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
SAVE_DTYPES = ("fp32", "fp16")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
EVAL_EXAMPLES = 4
# A resumed run must agree on these, or its data order and noise would differ.
RESUME_KEYS = ("mode", "seed", "batch_size", "grad_accum", "resolution", "lora_rank", "lora_alpha")


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs. ``steps`` counts optimizer
    steps; each sees ``batch_size * grad_accum`` captioned images."""

    data: str
    out: str
    captions: str | None = None  # file name in ``data`` or a path; default: auto-detected
    model: str = DEFAULT_MODEL_ID
    config: str | None = None  # diffusers folder for a single-file checkpoint
    mode: str = "text-encoder"
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # 0: no clipping
    mixed_precision: str = "auto"  # bf16 on CUDA compute capability 8.0+, else fp16 on CUDA; fp32 elsewhere
    resolution: int | None = None  # default: the model's native size (768 for SD 2.1)
    seed: int = 0
    checkpoint_every: int = 500  # 0: only at the end
    keep_checkpoints: int = 2  # newest N kept; 0 keeps all
    resume: str | None = None  # "latest" or a checkpoint folder
    lora_rank: int = 4
    lora_alpha: float | None = None  # default: the rank (scale 1)
    gradient_checkpointing: bool = False
    device: str = "auto"
    save_dtype: str = "fp32"
    # Train on one fixed batch (the first images, the same noise and timesteps
    # every step): a quick check that the loss can go down at all.
    overfit_batch: bool = False

    def validate(self) -> "TrainConfig":
        """Check every option before any data or model is touched."""
        _choice("mode", self.mode, MODES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("save_dtype", self.save_dtype, SAVE_DTYPES)
        for name in ("steps", "batch_size", "grad_accum", "lora_rank"):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("lr_warmup_steps", "checkpoint_every", "keep_checkpoints", "seed"):
            _integer(name, getattr(self, name), minimum=0)
        _number("lr", self.lr)
        if not 0 < self.lr < 1:
            raise ValidationError("lr", self.lr, "must be greater than 0 and less than 1")
        _number("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValidationError("weight_decay", self.weight_decay, "must be 0 or more")
        _number("max_grad_norm", self.max_grad_norm)
        if self.max_grad_norm < 0:
            raise ValidationError("max_grad_norm", self.max_grad_norm, "must be 0 (off) or more")
        if self.lora_alpha is not None:
            _number("lora_alpha", self.lora_alpha)
            if self.lora_alpha <= 0:
                raise ValidationError("lora_alpha", self.lora_alpha, "must be greater than 0")
        if self.resolution is not None:
            _integer("resolution", self.resolution, minimum=64)
            if self.resolution % 8:
                raise ValidationError("resolution", self.resolution, "must be a multiple of 8")
        if self.mode == "lora":
            require_peft()
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValidationError("out", self.out, "is a file; give a folder")
        if self.resume is None and ((out / "checkpoints").is_dir() or (out / "model_index.json").is_file()):
            raise ValidationError("out", self.out, "already holds a fine-tuned model; pass --resume latest "
                                  "to continue it or choose another folder")
        return self

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValidationError(name, value, "must be one of " + ", ".join(choices))


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, value, "must be an integer")
    if value < minimum:
        raise ValidationError(name, value, f"must be at least {minimum}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(name, value, "must be a finite number")


def require_peft():
    """peft is in the requirements (LoRA at generation time needs it too); a clear error where it is missing."""
    try:
        import peft
    except ImportError as exc:
        raise ValidationError("mode", "lora", "needs the peft package: pip install peft") from exc
    return peft
