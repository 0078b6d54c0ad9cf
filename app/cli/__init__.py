"""Every command: ``python -m app COMMAND`` (or the ``t2i`` console script).

Each command is a module of this package with ``add_parser(subparsers)``,
which sets ``func``. This is the only package that builds argparse parsers;
the library modules below it take typed values.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module
from pathlib import Path

from app.cli.common import CLIError, add_model_options, load_engine, quiet_third_party_noise

__all__ = ["CLIError", "add_model_options", "build_parser", "load_engine", "main"]

# Each command module imports what it needs only when it runs (Flask for serve, RQ for worker).
COMMANDS = ("generate", "upscale", "serve", "worker", "finetune", "export", "bench", "notebooks", "people")


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Stable Diffusion 2.1 text-to-image generator")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        import_module(f"app.cli.{command}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_noise()
    # Installed, the console script is ``t2i``; otherwise ``python -m app``.
    prog = "t2i" if Path(sys.argv[0]).name == "t2i" else "python -m app"
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
