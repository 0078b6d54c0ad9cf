"""Command line: ``python -m app generate "prompt" -o out.png`` and friends.

Each subcommand is an ``add_<name>_parser(subparsers)`` function that sets
``func``; other modules register theirs in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

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
    from .finetune import LR_SCHEDULERS, MIXED_PRECISION, MODES, SAVE_DTYPES, TrainConfig
    from .loading import DEFAULT_MODEL_ID

    d = TrainConfig(data="", out="")  # the defaults live in one place: TrainConfig
    p = subparsers.add_parser("finetune", help="fine-tune the text encoder (or UNet LoRA) on captioned images",
                              description="Fine-tune on a folder of images with captions (CSV image,caption; "
                                          "Flickr8k captions.txt or Flickr8k.token.txt). OUT becomes a model folder: "
                                          "use it with --model OUT, or --text-encoder OUT beside the base model.")
    p.add_argument("--data", required=True, help="folder with the images and the captions file")
    p.add_argument("--out", required=True, help="output folder: model, checkpoints/, loss.csv, loss.png")
    p.add_argument("--captions", help="captions file (default: captions.txt, captions.csv, metadata.csv, "
                                      "Flickr8k.token.txt or the only .csv in --data)")
    p.add_argument("--model", default=os.environ.get("T2I_MODEL", DEFAULT_MODEL_ID),
                   help=f"base model: Hub id, diffusers folder, .safetensors/.ckpt file, or 'demo' (default: {DEFAULT_MODEL_ID})")
    p.add_argument("--config", help="diffusers folder or Hub id describing a single-file checkpoint")
    p.add_argument("--device", default=d.device, help="auto, cuda, cuda:N, mps or cpu (default: auto)")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="text-encoder: train CLIP, UNet and VAE frozen; lora: LoRA on the UNet attention (needs peft)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default: {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per micro-batch (default: {d.batch_size})")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help=f"micro-batches per optimizer step (default: {d.grad_accum})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default: {d.lr:g})")
    p.add_argument("--lr-scheduler", default=d.lr_scheduler, choices=LR_SCHEDULERS)
    p.add_argument("--lr-warmup-steps", type=int, default=d.lr_warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default: {d.weight_decay:g})")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help=f"gradient clipping; 0 turns it off (default: {d.max_grad_norm:g})")
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=MIXED_PRECISION,
                   help="auto: bf16 on GPUs that support it, fp16 on other CUDA GPUs, none on CPU")
    p.add_argument("--resolution", type=int, help="training image size, multiple of 8 (default: the model's, 768 on SD 2.1)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the data order and the noise of every step")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N",
                   help=f"save a checkpoint every N steps; 0: only at the end (default: {d.checkpoint_every})")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, metavar="N",
                   help=f"keep the newest N checkpoints; 0 keeps all (default: {d.keep_checkpoints})")
    p.add_argument("--resume", metavar="latest|DIR", help="continue from OUT's newest checkpoint or a checkpoint folder")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, about 30%% slower")
    p.add_argument("--save-dtype", default=d.save_dtype, choices=SAVE_DTYPES, help="dtype of the saved model (default: fp32)")
    p.add_argument("--overfit-batch", action="store_true",
                   help="train on one fixed batch with fixed noise: a quick check that the loss goes down")
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from .captions import DatasetError
    from .finetune import TrainConfig, Trainer
    from .loading import ModelLoadError
    from .types import ValidationError

    config = TrainConfig(
        data=args.data, out=args.out, captions=args.captions, model=args.model, config=args.config,
        device=args.device, mode=args.mode, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, mixed_precision=args.mixed_precision,
        resolution=args.resolution, seed=args.seed, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, gradient_checkpointing=args.gradient_checkpointing, save_dtype=args.save_dtype,
        overfit_batch=args.overfit_batch,
    )
    try:
        trainer = Trainer(config)  # validates options and data before the model loads
        data = trainer.data
        print(f"{len(data.examples)} captioned images from {data.source} "
              f"({data.num_images} files; skipped {data.skips.total}: {data.skips.summary()})", file=sys.stderr)
        result = trainer.train()
    except (ValidationError, DatasetError, ModelLoadError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"loss on a fixed batch: {result.eval_loss_before:.4f} before, {result.eval_loss_after:.4f} after "
          f"({result.steps - result.resumed_from} step{'s' if result.steps - result.resumed_from != 1 else ''}, "
          f"{result.seconds:.0f} s)")
    print(f"model saved to {result.out}: use --model {result.out}, or --text-encoder {result.out} with the base model"
          if config.mode == "text-encoder" else f"model saved to {result.out} (LoRA adapters in {result.out / 'lora'})")
    return 0


def add_export_parser(subparsers) -> None:
    from .checkpoint import add_export_parser as add

    add(subparsers)


COMMANDS = [add_generate_parser, add_finetune_parser, add_export_parser]


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
