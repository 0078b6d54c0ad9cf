"""Fine-tune Stable Diffusion on captioned images.

Two modes:

- ``text-encoder`` (default): train the CLIP text encoder with the UNet and
  the VAE frozen, as in the Flickr8k project this follows.
- ``lora``: train LoRA adapters on the UNet's attention projections with
  everything else frozen (needs ``peft``).

The output folder is a complete diffusers pipeline (``--model OUT`` loads it
in the CLI, the web app and the notebooks); its ``text_encoder/`` also works
alone with ``--text-encoder OUT``. Checkpoints under ``OUT/checkpoints/step-N``
(app/training/checkpoints.py) hold everything a resumed run needs to reproduce
an uninterrupted one: the data order and the noise of every step are drawn from
generators seeded by ``(seed, step)``, never from state that a restart would lose.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from app.engine.types import ValidationError
from app.training.captions import CaptionData, Example, image_to_tensor, load_caption_data, load_image
from app.training.checkpoints import RunState, check_resume, find_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from app.training.config import EVAL_EXAMPLES, LORA_TARGETS, TrainConfig
from app.training.losslog import StepLog, append_loss_csv, plot_losses, write_loss_csv
from app.training.saving import prefix_text_encoder_keys

logger = logging.getLogger(__name__)


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
            check_resume(self._resume_dir, self.config)
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
            resumed = load_checkpoint(self._resume_dir, self._run_state(), self.device, len(self.data.examples))
            start, losses, self.resolution = resumed.step, resumed.losses, resumed.resolution
            logger.info("resumed from %s (step %d)", self._resume_dir, start)
        eval_before = self.eval_loss()
        write_loss_csv(self.out / "loss.csv", losses)

        # 5. Training loop.
        checkpoints = []
        bar = tqdm(total=cfg.steps, initial=start, desc="Fine-tuning", unit="step", file=sys.stderr,
                   disable=not progress)
        try:
            for step in range(start + 1, cfg.steps + 1):
                log = self.train_step(step)
                losses.append(log)
                append_loss_csv(self.out / "loss.csv", log)
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

        from app.models.devices import choose_placement
        from app.models.loading import load_pipeline

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

    # -- checkpoints (app/training/checkpoints.py) -------------------------
    def save_checkpoint(self, step: int, losses: list[StepLog]) -> Path:
        return save_checkpoint(self.out, step, self._run_state(), losses, self.config, self.resolution,
                               len(self.data.examples))

    def _run_state(self) -> RunState:
        return RunState(self.trained, self.trainable_names, self.optimizer, self.lr_scheduler, self.scaler)

    # -- 6. export ----------------------------------------------------------
    def export(self) -> None:
        """Save the full pipeline. When training cast the frozen parts to
        fp16/bf16, or added LoRA layers, it is rebuilt from a fresh copy of the
        base model so the untouched weights are written exactly as loaded."""
        import torch

        from app.models.devices import Placement, free_memory
        from app.models.loading import load_pipeline

        if self.config.mode == "text-encoder" and not self._frozen_cast:
            pipe = self.pipe.to("cpu")
            pipe.text_encoder.requires_grad_(False)
        else:
            trained = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in self.trained.named_parameters()
                       if n in self.trainable_names}
            lora_state = self._lora_state() if self.config.mode == "lora" else None
            lora_metadata = self.trained.peft_config["default"].to_dict() if self.config.mode == "lora" else None
            for name in ("pipe", "text_encoder", "unet", "vae", "optimizer", "params", "trained"):
                setattr(self, name, None)
            free_memory(str(self.device))
            pipe = load_pipeline(self.config.model, Placement("cpu", "float32"), config=self.config.config)
            if self.config.mode == "text-encoder":
                pipe.text_encoder.load_state_dict(trained, strict=False)  # parameters only; buffers are unchanged
            else:
                from diffusers import StableDiffusionPipeline

                lora_dir = self.out / "lora"
                # The adapter config rides along in the file's metadata: without it a loader
                # assumes alpha = rank, and a custom --lora-alpha would be lost (scale 1).
                StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=lora_state,
                                                          unet_lora_adapter_metadata=lora_metadata)
                pipe.load_lora_weights(str(lora_dir))
                pipe.fuse_lora(components=["unet"])
                pipe.unload_lora_weights()
        if self.config.save_dtype == "fp16":
            pipe.to(dtype=torch.float16)
        pipe.save_pretrained(str(self.out), safe_serialization=True)
        prefix_text_encoder_keys(self.out / "text_encoder")  # loads in transformers 4 as well as 5

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
    that compute it natively (compute capability 8.0+; no loss scaling
    needed), fp16 on older CUDA GPUs (Colab's T4, 7.5, where bf16 is only
    emulated), and fp32 on the CPU and MPS."""
    import torch

    from app.models.devices import has_native_bf16

    cuda = device.startswith("cuda")
    if choice == "auto":
        if not cuda:
            return None
        choice = "bf16" if has_native_bf16(device) else "fp16"
    if choice == "no":
        return None
    if choice == "fp16" and not cuda:
        raise ValidationError("mixed_precision", choice, f"fp16 needs a CUDA GPU (device is {device}); use bf16 or no")
    return torch.float16 if choice == "fp16" else torch.bfloat16


def _step_seed(seed: int, step: int, micro: int) -> int:
    # Distinct, reproducible seeds per (seed, step, micro-batch); step 0 is the evaluation batch.
    return (seed * 1_000_003 + step) * 1_009 + micro
