"""Fine-tune Stable Diffusion on captioned images.

Two modes:

- ``text-encoder`` (default): train the CLIP text encoder with the UNet and
  the VAE frozen, as in the Flickr8k project this follows.
- ``lora``: train LoRA adapters on the UNet's attention projections with
  everything else frozen (needs ``peft``).

The output folder is a complete diffusers pipeline (``--model OUT`` loads it
in the CLI, the web app and the notebooks); its ``text_encoder/`` also works
alone with ``--text-encoder OUT``. Checkpoints under ``OUT/checkpoints/step-N``
hold everything a resumed run needs to reproduce an uninterrupted one: the
data order and the noise of every step are drawn from generators seeded by
``(seed, step)``, never from state that a restart would lose.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .captions import CaptionData, Example, load_caption_data, image_to_tensor, load_image
from .loading import DEFAULT_MODEL_ID
from .types import ValidationError

logger = logging.getLogger(__name__)

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
    mixed_precision: str = "auto"  # bf16 on GPUs that have it, else fp16 on CUDA; fp32 elsewhere
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
    """peft is only needed for LoRA, so it is an optional dependency."""
    try:
        import peft
    except ImportError as exc:
        raise ValidationError("mode", "lora", "needs the peft package: pip install peft") from exc
    return peft


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    out: Path
    steps: int
    resumed_from: int  # 0 for a fresh run
    losses: list[StepLog]
    eval_loss_before: float  # loss on a fixed batch (fixed noise and timesteps) before training
    eval_loss_after: float
    examples: int
    skipped: int
    seconds: float
    checkpoints: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        data["checkpoints"] = [str(p) for p in self.checkpoints]
        data["losses"] = len(self.losses)
        data["final_loss"] = self.losses[-1].loss if self.losses else None
        return data


StepCallback = Callable[[StepLog], None]


class Trainer:
    """One run: ``Trainer(config).train()``. The constructor validates the
    options and reads and checks the data, so bad input fails before the
    model loads."""

    def __init__(self, config: TrainConfig, data: CaptionData | None = None):
        self.config = config.validate()
        self.out = Path(config.out)
        self.data = data or load_caption_data(config.data, config.captions)
        if self.data.skips.total:
            logger.warning("skipped %d of %d caption rows in %s: %s (list in %s)", self.data.skips.total,
                           self.data.num_rows, self.data.source, self.data.skips.summary(), self.out / "skipped.csv")
        self._resume_dir = find_checkpoint(self.out, config.resume) if config.resume else None
        if self._resume_dir is not None:
            self._check_resume(self._resume_dir)
        self._order: dict[int, list[int]] = {}
        self._bad_images: set[Path] = set()

    # 1. model, 2. trainable parameters, 3. optimizer, 4. resume, 5. training loop, 6. export.
    def train(self, on_step: StepCallback | None = None, progress: bool = True) -> TrainResult:
        import torch
        from tqdm.auto import tqdm

        started = time.perf_counter()
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.data.skips.total:
            self.data.skips.write_csv(self.out / "skipped.csv")

        # 1. The base model, in fp32 on the training device.
        self._load_model()
        # 2. Freeze everything but the trained part.
        params = self._setup_trainable()
        # 3. Optimizer, learning-rate schedule, loss scaler for fp16.
        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer,
                                          num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = params

        # 4. Resume: weights, optimizer, schedule and the loss log so far.
        losses: list[StepLog] = []
        start = 0
        if self._resume_dir is not None:
            start, losses = self._load_checkpoint(self._resume_dir)
            logger.info("resumed from %s (step %d)", self._resume_dir, start)
        eval_before = self.eval_loss()
        _write_loss_csv(self.out / "loss.csv", losses)

        # 5. Training loop.
        checkpoints = []
        bar = tqdm(total=cfg.steps, initial=start, desc="Fine-tuning", unit="step", file=sys.stderr,
                   disable=not progress)
        try:
            for step in range(start + 1, cfg.steps + 1):
                log = self.train_step(step)
                losses.append(log)
                _append_loss_csv(self.out / "loss.csv", log)
                bar.update(1)
                bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{log.lr:.2e}")
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                    checkpoints.append(self.save_checkpoint(step, losses))
                    plot_losses(losses, self.out / "loss.png")
                if on_step is not None:
                    on_step(log)
        except KeyboardInterrupt:
            last = latest_checkpoint(self.out)
            hint = f"resume from {last.name} with --resume latest" if last else "no checkpoint was saved yet"
            logger.warning("interrupted; %s", hint)
            raise
        finally:
            bar.close()
        eval_after = self.eval_loss()

        # 6. Save the pipeline (and LoRA adapters) so it loads as a model.
        self.export()
        if self.data.skips.total:  # again: images that went bad during the run are added
            self.data.skips.write_csv(self.out / "skipped.csv")
        result = TrainResult(out=self.out, steps=cfg.steps, resumed_from=start, losses=losses,
                             eval_loss_before=eval_before, eval_loss_after=eval_after,
                             examples=len(self.data.examples), skipped=self.data.skips.total,
                             seconds=time.perf_counter() - started, checkpoints=checkpoints)
        (self.out / "finetune.json").write_text(
            json.dumps({"config": cfg.to_dict(), "result": result.to_dict(), "data": str(self.data.source)},
                       indent=2, default=str), encoding="utf-8")
        return result

    # -- 1. model ---------------------------------------------------------
    def _load_model(self) -> None:
        import torch
        from diffusers import DDPMScheduler

        from .devices import choose_placement
        from .loading import load_pipeline

        cfg = self.config
        try:
            placement = choose_placement(cfg.device, "fp32")
        except ValueError as exc:
            raise ValidationError("device", cfg.device, str(exc).split(": ", 1)[-1]) from exc
        self.device = torch.device(placement.device)
        self.amp_dtype = resolve_mixed_precision(cfg.mixed_precision, placement.device)
        pipe = self.pipe = load_pipeline(cfg.model, placement, config=cfg.config)
        self.tokenizer, self.text_encoder, self.unet, self.vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        self.resolution = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        # The training objective uses the model's own noise schedule and prediction type.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        prediction = self.noise_scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise ValidationError("model", cfg.model, f"has prediction_type {prediction!r}; "
                                  "only epsilon and v_prediction can be trained")

    # -- 2. trainable parameters ----------------------------------------
    def _setup_trainable(self) -> list:
        import torch

        cfg = self.config
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        # Frozen parts run in the mixed-precision dtype to save memory; the
        # trained weights stay fp32 so small updates are not rounded away.
        # The VAE stays fp32: it only encodes, without gradients, and SD VAEs can overflow in fp16.
        frozen_dtype = self.amp_dtype or torch.float32
        self._frozen_cast = frozen_dtype != torch.float32
        if cfg.mode == "text-encoder":
            _cast(self.unet, frozen_dtype)
            self.text_encoder.requires_grad_(True)
            self.text_encoder.train()
            self.trained = self.text_encoder
            if cfg.gradient_checkpointing:
                self.text_encoder.gradient_checkpointing_enable()
                self.unet.enable_gradient_checkpointing()
        else:
            from peft import LoraConfig

            _cast(self.text_encoder, frozen_dtype)
            _cast(self.unet, frozen_dtype)
            self.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                             init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
            for p in self.unet.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            self.unet.train()
            self.trained = self.unet
            if cfg.gradient_checkpointing:
                self.unet.enable_gradient_checkpointing()
        self.trainable_names = [n for n, p in self.trained.named_parameters() if p.requires_grad]
        return [p for p in self.trained.parameters() if p.requires_grad]

    # -- 5. one step ------------------------------------------------------
    def train_step(self, step: int) -> StepLog:
        """Optimizer step ``step`` (1-based): ``grad_accum`` micro-batches, clip, update."""
        import torch

        cfg = self.config
        lr = self.lr_scheduler.get_last_lr()[0]
        total = 0.0
        for micro in range(cfg.grad_accum):
            if cfg.overfit_batch:
                examples = self.data.examples[: cfg.batch_size]
                generator = torch.Generator("cpu").manual_seed(_step_seed(cfg.seed, 0, micro))
            else:
                examples = self._batch_examples(step, micro)
                generator = torch.Generator("cpu").manual_seed(_step_seed(cfg.seed, step, micro))
            loss = self.loss(examples, generator) / cfg.grad_accum
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += loss.item()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(total):
            logger.warning("step %d: loss is %s", step, total)
        return StepLog(step=step, loss=total, lr=lr)

    def loss(self, examples: list[Example], generator) -> Any:
        """The diffusion loss: noise the latents at random timesteps and
        compare the UNet's prediction with the noise (or the velocity, for
        v-prediction models like SD 2.1 768)."""
        import torch
        import torch.nn.functional as F

        pixels = torch.stack([self._pixels(e) for e in examples]).to(self.device, self.vae.dtype)
        ids = self.tokenizer([e.caption for e in examples], max_length=self.tokenizer.model_max_length,
                             padding="max_length", truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample(generator=generator).float()
        latents = latents * self.vae.config.scaling_factor
        # Drawn on the CPU from the step's generator: the same numbers on every device and after a resume.
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(examples),),
                                  generator=generator, device="cpu").to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with self._autocast():
            hidden = self.text_encoder(ids)[0]
            prediction = self.unet(noisy, timesteps, hidden).sample
        return F.mse_loss(prediction.float(), target.float())

    def eval_loss(self) -> float:
        """Loss on the first few examples with fixed noise and timesteps: the
        same measurement before and after training, unlike the noisy step losses."""
        import torch

        examples = self.data.examples[:EVAL_EXAMPLES]
        generator = torch.Generator("cpu").manual_seed(_step_seed(self.config.seed, 0, 0))
        was_training = self.trained.training
        self.trained.eval()
        with torch.no_grad():
            value = self.loss(examples, generator).item()
        self.trained.train(was_training)
        return value

    def _autocast(self):
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch_examples(self, step: int, micro: int) -> list[Example]:
        """The examples of one micro-batch: a fresh seeded shuffle every epoch,
        computed from the step number alone so a resumed run sees the same order."""
        cfg = self.config
        n = len(self.data.examples)
        first = ((step - 1) * cfg.grad_accum + micro) * cfg.batch_size
        picked = []
        for position in range(first, first + cfg.batch_size):
            epoch, index = divmod(position, n)
            picked.append(self.data.examples[self._epoch_order(epoch)[index]])
        return picked

    def _epoch_order(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._order:
            self._order = {epoch: torch.randperm(len(self.data.examples),
                                                 generator=torch.Generator().manual_seed(self.config.seed * 7919 + epoch)).tolist()}
        return self._order[epoch]

    def _pixels(self, example: Example):
        """The image as a tensor. A file that went bad after the start-up
        check is counted and replaced by the next readable image."""
        examples = self.data.examples
        candidate, origin = example, None
        for attempt in range(1, len(examples) + 1):
            if candidate.image not in self._bad_images:
                try:
                    return image_to_tensor(load_image(candidate.image, self.resolution))
                except (OSError, ValueError, SyntaxError) as exc:
                    logger.warning("skipping %s: it could not be read during training (%s)", candidate.image, exc)
                    self._bad_images.add(candidate.image)
                    self.data.skips.add(0, str(candidate.image), "unreadable during training")
            origin = examples.index(example) if origin is None else origin
            candidate = examples[(origin + attempt) % len(examples)]
        raise ValidationError("data", self.config.data, "no image could be read any more")

    # -- checkpoints --------------------------------------------------------
    def save_checkpoint(self, step: int, losses: list[StepLog]) -> Path:
        """Write ``checkpoints/step-N`` atomically (a crash mid-save keeps the previous one)."""
        import torch
        from safetensors.torch import save_file

        root = self.out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step}"
        tmp = root / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        named = dict(self.trained.named_parameters())
        save_file({n: named[n].detach().to("cpu", copy=True).contiguous() for n in self.trainable_names},
                  str(tmp / "trainable.safetensors"))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {
            "step": step,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "losses": [asdict(log) for log in losses],
            "config": {k: getattr(self.config, k) for k in RESUME_KEYS},
            "resolution": self.resolution,
            "examples": len(self.data.examples),
        }
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self._prune_checkpoints()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if keep:
            for old in list_checkpoints(self.out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def _check_resume(self, folder: Path) -> None:
        """Before the model loads: the options that fix the data order and the noise must match."""
        import torch

        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        for key, saved in state["config"].items():
            ours = getattr(self.config, key)
            if saved != ours and not (key == "resolution" and ours is None):
                raise ValidationError(key.replace("_", "-"), ours, f"differs from the checkpoint {str(folder)!r}, "
                                      f"which used {saved!r}; a resumed run must use the same value")
        if state["step"] >= self.config.steps:
            raise ValidationError("steps", self.config.steps, f"is not more than the checkpoint's step "
                                  f"{state['step']}; raise --steps to train further")

    def _load_checkpoint(self, folder: Path) -> tuple[int, list[StepLog]]:
        import torch
        from safetensors.torch import load_file

        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        self.resolution = state["resolution"]  # the run's size, also when it came from the model's default
        if state["examples"] != len(self.data.examples):
            logger.warning("the checkpoint saw %d usable examples, this data has %d: the order will differ",
                           state["examples"], len(self.data.examples))
        weights = load_file(str(folder / "trainable.safetensors"))
        missing = set(self.trainable_names) - set(weights)
        if missing:
            raise ValidationError("resume", str(folder), f"has no weights for {sorted(missing)[:3]}")
        named = dict(self.trained.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(tensor)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device))
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        return state["step"], [StepLog(**log) for log in state["losses"]]

    # -- 6. export ----------------------------------------------------------
    def export(self) -> None:
        """Save the full pipeline. When training cast the frozen parts to
        fp16/bf16, or added LoRA layers, it is rebuilt from a fresh copy of the
        base model so the untouched weights are written exactly as loaded."""
        import gc

        import torch

        from .devices import Placement
        from .loading import load_pipeline

        if self.config.mode == "text-encoder" and not self._frozen_cast:
            pipe = self.pipe.to("cpu")
            pipe.text_encoder.requires_grad_(False)
        else:
            trained = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in self.trained.named_parameters()
                       if n in self.trainable_names}
            lora_state = self._lora_state() if self.config.mode == "lora" else None
            for name in ("pipe", "text_encoder", "unet", "vae", "optimizer", "params", "trained"):
                setattr(self, name, None)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            pipe = load_pipeline(self.config.model, Placement("cpu", "float32"), config=self.config.config)
            if self.config.mode == "text-encoder":
                pipe.text_encoder.load_state_dict(trained, strict=False)  # parameters only; buffers are unchanged
            else:
                from diffusers import StableDiffusionPipeline

                lora_dir = self.out / "lora"
                StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=lora_state)
                pipe.load_lora_weights(str(lora_dir))
                pipe.fuse_lora(components=["unet"])
                pipe.unload_lora_weights()
        if self.config.save_dtype == "fp16":
            pipe.to(dtype=torch.float16)
        pipe.save_pretrained(str(self.out), safe_serialization=True)

    def _lora_state(self) -> dict:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.trained))


def _cast(module, dtype) -> None:
    import torch

    # torch's own .to(): diffusers' override warns about fp32 modules even when it has none.
    torch.nn.Module.to(module, dtype=dtype)


def resolve_mixed_precision(choice: str, device: str):
    """The autocast dtype, or None for plain fp32. ``auto`` picks bf16 on GPUs
    that have it (no loss scaling needed), fp16 on older CUDA GPUs (Colab's T4),
    and fp32 on the CPU and MPS."""
    import torch

    cuda = device.startswith("cuda")
    if choice == "auto":
        if not cuda:
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "no":
        return None
    if choice == "fp16" and not cuda:
        raise ValidationError("mixed_precision", choice, f"fp16 needs a CUDA GPU (device is {device}); use bf16 or no")
    return torch.float16 if choice == "fp16" else torch.bfloat16


def _step_seed(seed: int, step: int, micro: int) -> int:
    # Distinct, reproducible seeds per (seed, step, micro-batch); step 0 is the evaluation batch.
    return (seed * 1_000_003 + step) * 1_009 + micro


def list_checkpoints(out: str | Path) -> list[Path]:
    """``OUT/checkpoints/step-N`` folders, oldest first."""
    root = Path(out) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def find_checkpoint(out: Path, resume: str) -> Path:
    """``resume`` is "latest" (the newest under ``out``) or a checkpoint folder."""
    if resume == "latest":
        found = latest_checkpoint(out)
        if found is None:
            raise ValidationError("resume", resume, f"there is no checkpoint in {str(out / 'checkpoints')!r}")
        return found
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise ValidationError("resume", resume, "is not a checkpoint folder (no state.pt)")
    return path


def _write_loss_csv(path: Path, losses: list[StepLog]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows((log.step, repr(log.loss), repr(log.lr)) for log in losses)


def _append_loss_csv(path: Path, log: StepLog) -> None:
    # Appended every step, so a crashed run still leaves its log.
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow((log.step, repr(log.loss), repr(log.lr)))


def read_loss_csv(path: str | Path) -> list[StepLog]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [StepLog(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(fh)]


def plot_losses(losses: list[StepLog], path: str | Path, size: tuple[int, int] = (800, 400)):
    """The loss curve as a PNG, drawn with Pillow (no plotting library):
    each step's loss in light blue, a moving average in dark blue."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    left, right, top, bottom = 70, 20, 36, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [(log.step, log.loss) for log in losses if math.isfinite(log.loss)]
    title = "training loss"
    if values:
        title += f" (steps {values[0][0]}-{values[-1][0]}, last {values[-1][1]:.4f})"
    draw.text((left, 10), title, fill="black", font=font)
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if values:
        steps = [s for s, _ in values]
        ys = [v for _, v in values]
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def point(s, v):
            x = left + (s - s0) / (s1 - s0) * (width - left - right)
            y = height - bottom - (v - lo) / (hi - lo) * (height - top - bottom)
            return x, y

        window = max(1, len(values) // 10)
        smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        if len(values) > 1:
            draw.line([point(s, v) for s, v in values], fill=(150, 190, 240), width=1)
            draw.line([point(s, v) for s, v in zip(steps, smooth)], fill=(20, 60, 160), width=2)
        else:
            x, y = point(*values[0])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(20, 60, 160))
        for v in (lo, (lo + hi) / 2, hi):
            _, y = point(s0, v)
            draw.text((4, y - 6), f"{v:.4g}", fill="black", font=font)
        draw.text((left, height - bottom + 6), str(s0), fill="black", font=font)
        last = str(steps[-1])
        draw.text((width - right - 8 * len(last), height - bottom + 6), last, fill="black", font=font)
        draw.text(((width - 20) // 2, height - bottom + 20), "step", fill="black", font=font)
    image.save(path)
    return image


# Command line

def add_finetune_parser(subparsers) -> None:
    """The ``finetune`` command of ``python -m app``."""
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
    from .cli import CLIError
    from .loading import ModelLoadError

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
