"""``python -m app finetune``: fine-tune the text encoder (or UNet LoRA) on captioned images."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from app.cli.common import CLIError, add_model_options
from app.engine.types import ValidationError
from app.training.config import LR_SCHEDULERS, MIXED_PRECISION, MODES, SAVE_DTYPES, TrainConfig


def add_parser(subparsers) -> None:
    d = TrainConfig(data="", out="")  # the defaults live in one place: TrainConfig
    p = subparsers.add_parser("finetune", help="fine-tune the text encoder (or UNet LoRA) on captioned images",
                              description="Fine-tune on a folder of images with captions (CSV image,caption; "
                                          "Flickr8k captions.txt or Flickr8k.token.txt). OUT becomes a model folder: "
                                          "use it with --model OUT, or --text-encoder OUT beside the base model.")
    p.add_argument("--data", required=True, help="folder with the images and the captions file")
    p.add_argument("--out", required=True, help="output folder: model, checkpoints/, loss.csv, loss.png")
    p.add_argument("--captions", help="captions file (default: captions.txt, captions.csv, metadata.csv, "
                                      "Flickr8k.token.txt or the only .csv in --data)")
    add_model_options(p, only=("model", "config", "device"))  # the base model
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
                   help="auto: bf16 on GPUs with native bf16 (compute capability 8.0+), fp16 on older CUDA GPUs "
                        "such as the T4, none on CPU")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.models.loading import ModelLoadError
    from app.training.captions import DatasetError
    from app.training.trainer import Trainer

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
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
