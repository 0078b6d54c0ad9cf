"""``python -m app export --model SRC -o model.safetensors``: any model as one
checkpoint in the original Stable Diffusion layout."""
from __future__ import annotations

import argparse
import os

from app.cli.common import CLIError, add_model_options, load_engine
from app.models.checkpoint import UnsupportedKeyError, check_output, export_single_file


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a model as one .safetensors/.ckpt checkpoint (original SD layout)")
    p.add_argument("-o", "--output", required=True, help="checkpoint path ending in .safetensors or .ckpt")
    p.add_argument("--half", action="store_true", help="save in fp16: half the size, as most shared checkpoints are")
    p.add_argument("--no-config-folder", dest="config_folder", action="store_false",
                   help="do not write the configs folder (OUTPUT without its suffix) that lets it load offline")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        check_output(args.output, args.config_folder)  # before the model loads
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    engine = load_engine(args)
    try:
        path = export_single_file(engine.pipe, args.output, dtype=torch.float16 if args.half else None,
                                  config_folder=args.config_folder)
    except (OSError, UnsupportedKeyError) as exc:
        raise CLIError(f"output: could not write {args.output!r} ({exc})") from exc
    size = path.stat().st_size / 2**20
    print(f"{path}  ({size:,.1f} MiB)")
    if args.config_folder:
        print(f"{path.with_suffix('')}{os.sep}  (configs: --model {path} finds them; share both, "
              f"or load with --config DIR of the same architecture)")
    return 0
