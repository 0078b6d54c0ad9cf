"""What every command shares: the one-line error, the model options (made
from ``EngineOptions``, their one declaration) and loading the engine."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields

from app.engine.engine import Engine, EngineOptions


class CLIError(Exception):
    """A one-line error for the user; the CLI prints it and exits 2."""


# Third-party log lines that say nothing a user of this program can act on, by the logger that
# writes them. Only these exact messages are dropped; everything else those loggers say still shows.
NOISE: dict[str, tuple[str, ...]] = {
    # transformers 5 without torchvision (we use no image processor at all).
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    # diffusers on every .to(dtype) of a UNet or VAE, even when the list of modules is empty.
    "diffusers.models.modeling_utils": ("that should be kept in float32: []",),
    # Fusing a UNet-only LoRA (finetune --mode lora): there are no text encoder keys by design.
    "diffusers.loaders.lora_base": ("No LoRA keys associated to CLIPTextModel",),
}


class DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_third_party_noise() -> None:
    """Drop the NOISE lines (filters sit on the logger that writes each one,
    so the libraries' own handlers never see them)."""
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(fragments))


def add_model_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """``--model``, ``--device`` ... one flag per EngineOptions field (``only``: a subset).
    Each flag's default is its ``T2I_<NAME>`` environment variable when set (the
    settings the web app reads, .env.example), else the field's default."""
    group = parser.add_argument_group("model")
    for option in fields(EngineOptions):
        if only is not None and option.name not in only:
            continue
        flag = "--" + option.name.replace("_", "-")
        help_text = option.metadata["help"]
        from_env = os.environ.get("T2I_" + option.name.upper())
        if option.type in (bool, "bool"):
            on = from_env is not None and from_env.strip().lower() in ("1", "true", "yes", "on")
            group.add_argument(flag, action="store_true", default=on or option.default, help=help_text)
            continue
        default = from_env if from_env is not None else option.default
        group.add_argument(flag, default=default, help=help_text + (f" (default: {default})" if default else ""))


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """EngineOptions from parsed model options; fields a command did not add keep their defaults."""
    return EngineOptions(**{f.name: getattr(args, f.name) for f in fields(EngineOptions) if hasattr(args, f.name)})


def load_engine(args: argparse.Namespace) -> Engine:
    from app.models.demo import DEMO_NOTICE
    from app.models.loading import ModelLoadError

    try:
        engine = Engine.load(engine_options(args))
    except (ModelLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if engine.is_demo:
        print(DEMO_NOTICE, file=sys.stderr)
    return engine
