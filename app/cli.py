"""Command line: ``python -m app generate "prompt" -o out.png`` and friends.

Each subcommand is an ``add_<name>_parser(subparsers)`` function that sets
``func``; other modules register theirs in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .schedulers import DEFAULT_SCHEDULER, scheduler_names


class CLIError(Exception):
    """A one-line error for the user; the CLI prints it and exits 2."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model."""
    from .loading import DEFAULT_MODEL_ID

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=os.environ.get("T2I_MODEL", DEFAULT_MODEL_ID),
                       help=f"Hub id, diffusers folder, .safetensors/.ckpt file, or 'demo' (default: {DEFAULT_MODEL_ID})")
    group.add_argument("--config", help="diffusers folder or Hub id describing a single-file checkpoint")
    group.add_argument("--text-encoder", help="folder with a fine-tuned text encoder to use instead of the model's")
    group.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default: auto)")
    group.add_argument("--dtype", default="auto", help="auto, fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU)")
    group.add_argument("--attention-slicing", action="store_true", help="save memory on small GPUs (slower)")
    group.add_argument("--cpu-offload", action="store_true", help="keep idle parts of the model in CPU memory (CUDA only)")


def engine_options(args: argparse.Namespace):
    from .engine import EngineOptions

    return EngineOptions(model=args.model, device=args.device, dtype=args.dtype, config=args.config,
                         text_encoder=args.text_encoder, attention_slicing=args.attention_slicing,
                         cpu_offload=args.cpu_offload)


def load_engine(args: argparse.Namespace):
    from .demo import DEMO_NOTICE
    from .engine import Engine
    from .loading import ModelLoadError

    try:
        engine = Engine.load(engine_options(args))
    except (ModelLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if engine.is_demo:
        print(DEMO_NOTICE, file=sys.stderr)
    return engine


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="make images from a prompt")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="output.png", help="PNG path; several images get -1, -2 ... (default: output.png)")
    p.add_argument("-n", "--negative-prompt", default="")
    p.add_argument("--width", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--height", type=int, help="multiple of 8 (default: the model's size, 768 on SD 2.1)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale (default: 7.5)")
    p.add_argument("--seed", type=int, help="default: random (always printed)")
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help="one of: " + ", ".join(scheduler_names()))
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--init-image", help="image to start from (img2img)")
    p.add_argument("--strength", type=float, default=0.75, help="img2img: how much to change the init image (0-1)")
    p.add_argument("--save-steps", type=int, default=0, metavar="N",
                   help="also save a strip and a GIF of previews every N steps")
    add_model_options(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .engine import save_result
    from .types import GenerationRequest, ValidationError

    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
        steps=args.steps, guidance_scale=args.guidance, seed=args.seed, scheduler=args.scheduler,
        num_images=args.num_images, strength=args.strength, save_steps=args.save_steps,
        init_image=_open_image(args.init_image) if args.init_image else None,
    )
    try:
        request.validate()  # before the model loads: bad input fails in a second, not a minute
    except ValidationError as exc:
        raise CLIError(str(exc)) from exc
    engine = load_engine(args)
    with tqdm(total=None, desc="Generating", unit="step", file=sys.stderr) as bar:
        def on_step(info):
            bar.total = info.total
            bar.update(info.step - bar.n)

        try:
            result = engine.generate(request, on_step=on_step)
        except ValidationError as exc:
            raise CLIError(str(exc)) from exc
    for path, seed in zip(save_result(result, args.output), result.seeds):
        print(f"{path}  (seed {seed}, {result.width}x{result.height}, {request.steps} steps, {request.scheduler})")
    return 0


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise CLIError(f"init_image: cannot read {path!r} as an image ({exc})") from exc


def add_finetune_parser(subparsers) -> None:
    from .finetune import add_finetune_parser as add

    add(subparsers)


def add_export_parser(subparsers) -> None:
    from .checkpoint import add_export_parser as add

    add(subparsers)


def add_serve_parser(subparsers) -> None:
    from .server import add_serve_parser as add  # Flask itself is imported only when serving

    add(subparsers)


def add_worker_parser(subparsers) -> None:
    from .worker_command import add_worker_parser as add  # RQ itself is imported only when a worker runs

    add(subparsers)


COMMANDS = [add_generate_parser, add_serve_parser, add_worker_parser, add_finetune_parser, add_export_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Stable Diffusion 2.1 text-to-image generator")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
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
