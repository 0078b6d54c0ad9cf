"""What every command shares: the one-line error, the model options (made
from ``EngineOptions``, their one declaration) and loading the engine."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from app.engine.engine import Engine, EngineOptions


class CLIError(Exception):
    """A one-line error for the user; the CLI prints it and exits 2."""


def add_model_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """``--model``, ``--device`` ... one flag per EngineOptions field (``only``: a subset)."""
    group = parser.add_argument_group("model")
    for option in fields(EngineOptions):
        if only is not None and option.name not in only:
            continue
        flag = "--" + option.name.replace("_", "-")
        help_text = option.metadata["help"]
        if option.type in (bool, "bool"):
            group.add_argument(flag, action="store_true", help=help_text)
            continue
        default = option.default
        if option.name == "model":
            default = os.environ.get("T2I_MODEL", default)
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
