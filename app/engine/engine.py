"""The generation engine: a loaded pipeline that turns requests into images.

It knows nothing of Flask; the CLI, the web app's worker and the notebooks
all call ``Engine.generate(request, on_step, cancel)``.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from app.engine.embeddings import EmbeddingInfo, unusable_embedding
from app.engine.embeddings import install as install_embeddings
from app.engine.loras import LoraSet, split_lora_tags
from app.engine.metadata import image_format, infotext, save_image
from app.engine.previews import filmstrip, latents_to_rgb, load_preview_decoder, save_gif, taesd_previews
from app.engine.prompts import prompt_inputs
from app.engine.schedulers import make_scheduler
from app.engine.types import (
    DEFAULT_LIMITS,
    MAX_SEED,
    GenerationRequest,
    GenerationResult,
    Limits,
    StepInfo,
    ValidationError,
    check_hires_size,
    check_size,
    floor_size,
)
from app.models.demo import DEMO_MODEL_ID
from app.models.devices import Placement, choose_placement, free_memory
from app.models.loading import DEFAULT_MODEL_ID, display_name, load_pipeline

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepInfo], None]


class GenerationCancelled(Exception):
    """Raised by ``Engine.generate`` when its cancel event is set mid-run."""

    def __init__(self, step: int, total: int, partial: "GenerationResult | None" = None):
        self.step, self.total = step, total
        # The images the last step's latents decode to (A1111 keeps an interrupted image too);
        # None when the run stopped before its first step.
        self.partial = partial
        super().__init__(f"cancelled after step {step} of {total}")


class GenerationOutOfMemory(RuntimeError):
    """Raised by ``Engine.generate`` when the device ran out of memory. The
    engine has freed what the failed run held and can take the next request."""

    def __init__(self, width: int, height: int, num_images: int, device: str, detail: str = ""):
        self.width, self.height, self.num_images, self.device, self.detail = width, height, num_images, device, detail
        images = f"{num_images} image{'s' if num_images != 1 else ''}"
        super().__init__(f"out of memory on {device} making {images} at {width}x{height}: "
                         "try fewer images at once, a smaller size, attention slicing or CPU offload")


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EngineOptions:
    """How to load and run the model: the one declaration of the model
    options. The CLI's flags (``--model``, ``--cpu-offload`` ...) and the web
    app's settings (``MODEL``, ``CPU_OFFLOAD`` ...) are made from these fields.
    Memory savers are off by default because on a GPU with room they only
    cost speed."""

    model: str = _option(DEFAULT_MODEL_ID, "Hub id, diffusers folder, .safetensors/.ckpt file, or 'demo'")
    device: str = _option("auto", "auto, cuda, cuda:N, mps or cpu")
    dtype: str = _option("auto", "auto, fp16, bf16 or fp32 (auto: fp16 on a GPU, fp32 on the CPU)")
    config: str | None = _option(None, "diffusers folder or Hub id describing a single-file checkpoint")
    text_encoder: str | None = _option(None, "folder with a fine-tuned text encoder to use instead of the model's")
    attention_slicing: bool = _option(False, "save GPU memory at some speed cost")
    cpu_offload: bool = _option(False, "keep idle parts of the model in CPU memory (CUDA only)")
    vae: str | None = _option(None, "a VAE to use instead of the model's: a .safetensors/.pt file (original "
                                    "layout, as A1111's) or a diffusers AutoencoderKL folder")
    embeddings: str | None = _option(None, "folder of A1111 textual-inversion embeddings (.pt, .safetensors), "
                                           "used in prompts by file name")
    lora_dir: str | None = _option(None, "folder of LoRA files (.safetensors; .pt/.ckpt holding only tensors), used "
                                         "in prompts as <lora:file-name:weight>; web app default: "
                                         "<instance>/models/loras")
    preview_decoder: str | None = _option(None, "folder of a TAESD tiny decoder (diffusers AutoencoderTiny, e.g. a "
                                                "download of madebyollin/taesd) for sharper live previews; "
                                                "none: the cheap linear preview")


class Engine:
    def __init__(self, pipe, model: str, placement: Placement, limits: Limits = DEFAULT_LIMITS):
        self.pipe = pipe
        self.model = model
        self.model_name = display_name(model)
        self.placement = placement
        self.limits = limits
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._img2img = None
        self._inpaint = None
        self._lock = threading.Lock()  # one generation at a time per pipeline
        self.embeddings: list[EmbeddingInfo] = []  # textual inversions loaded into the pipeline
        self.preview_decoder: Any = None  # a TAESD AutoencoderTiny, or None: the linear preview
        # The LoRAs loaded into the pipeline (app/engine/loras.py). Made here, once, before any thread
        # can use the engine: its layer shapes are read before an adapter wraps a layer.
        self.loras = LoraSet(pipe)
        self.vae: str | None = None  # the VAE file or folder loaded instead of the model's own
        # For the infotext (A1111's "Model hash", "VAE hash", "VAE"): set by whoever knows
        # the files' hashes (the model catalogue caches them).
        self.model_hash: str | None = None
        self.vae_hash: str | None = None

    @classmethod
    def load(cls, options: EngineOptions | None = None, limits: Limits = DEFAULT_LIMITS) -> "Engine":
        options = options or EngineOptions()
        placement = choose_placement(options.device, options.dtype)
        offload = options.cpu_offload and placement.device.startswith("cuda")
        # With offload the model stays in CPU memory and each part visits the GPU while it runs,
        # so it is loaded on the CPU (not copied to the GPU and back).
        where = Placement("cpu", placement.dtype) if offload else placement
        pipe = load_pipeline(options.model, where, config=options.config, text_encoder=options.text_encoder)
        if options.vae:
            from app.models.loading import load_vae

            pipe.vae = load_vae(options.vae, where, dict(pipe.vae.config))
        embeddings = install_embeddings(pipe, options.embeddings)  # before offload hooks: see app/engine/embeddings.py
        if options.attention_slicing:
            pipe.enable_attention_slicing()
        if offload:
            pipe.enable_model_cpu_offload(device=placement.device)  # cuda:N offloads to GPU N, not GPU 0
        # Decode several images one at a time: a batch of 768 px decodes needs several GB at once
        # (too much for a 15 GB T4 next to the UNet); one image at a time costs nothing.
        pipe.vae.enable_slicing()
        engine = cls(pipe, options.model, placement, limits)
        engine.embeddings = embeddings
        engine.lora_dir = options.lora_dir
        engine.vae = options.vae
        if options.preview_decoder:
            engine.preview_decoder = load_preview_decoder(options.preview_decoder, placement)
        return engine

    @property
    def lora_dir(self) -> str | None:
        """Where <lora:name> tags find their files; None: no LoRA folder."""
        return self.loras.folder

    @lora_dir.setter
    def lora_dir(self, folder: str | None) -> None:
        self.loras.folder = folder

    @property
    def vae_name(self) -> str | None:
        """A1111's "VAE" infotext entry: the VAE file's name without its suffix."""
        return display_name(self.vae) if self.vae else None

    @property
    def is_demo(self) -> bool:
        return self.model == DEMO_MODEL_ID

    @property
    def default_size(self) -> tuple[int, int]:
        """The model's native size: 768x768 for SD 2.1, 256x256 for the demo."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def resolve_size(self, request: GenerationRequest) -> tuple[int, int]:
        if request.width and request.height:
            return request.width, request.height
        if request.init_image is not None:
            w, h = request.init_image.size
            base = (floor_size(w), floor_size(h))
        else:
            base = self.default_size
        return request.width or base[0], request.height or base[1]

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None,
                 cancel: threading.Event | None = None) -> GenerationResult:
        """Run one request. ``on_step`` is called after every denoising step;
        setting ``cancel`` stops the run, which then raises GenerationCancelled."""
        request = request.validate(self.limits).with_seed()
        for name in ("prompt", "negative_prompt"):
            skipped = unusable_embedding(getattr(request, name), self.embeddings)
            if skipped is not None:
                raise ValidationError(name, skipped.name, f"embedding {skipped.name!r} cannot be used: {skipped.error}")
        if request.outpaint:  # outpainting is inpainting on a larger canvas
            from app.engine.inpaint import outpaint_canvas

            canvas, mask = outpaint_canvas(request.init_image, request.outpaint, request.outpaint_sides())
            request = replace(request, init_image=canvas, mask=mask, width=None, height=None)
        width, height = self.resolve_size(request)
        check_size(width, height, self.limits)  # a size taken from the model or init image too
        if request.enable_hr:
            check_hires_size(request, width, height, self.limits)
        assert request.seed is not None
        seeds = [(request.seed + i) % (MAX_SEED + 1) for i in range(request.num_images)]
        import torch

        with self._lock:
            detail = None
            try:
                return self._run(request, width, height, seeds, on_step, cancel)
            except torch.OutOfMemoryError as exc:
                detail = str(exc).strip().split("\n")[0][:200]
            # Out of the except block: the failed run's frames, and the tensors they hold, are gone now.
            free_memory(self.placement.device)
            raise GenerationOutOfMemory(width, height, len(seeds), self.placement.device, detail)

    # 1. pick the pipeline and scheduler, 2. denoise with a step callback, 3. describe the images.
    def _run(self, request, width, height, seeds, on_step, cancel) -> GenerationResult:
        import torch

        started = time.perf_counter()

        def generators():
            # CPU generators give the same noise on every device (diffusers' advice for seeds).
            return [torch.Generator("cpu").manual_seed(s) for s in seeds]

        if request.mask is not None:  # inpainting (app/engine/inpaint.py)
            pipe = self._inpaint_pipe()
        else:
            pipe = self._img2img_pipe() if request.init_image is not None else self.pipe
        pipe.scheduler = make_scheduler(request.scheduler, self._base_scheduler_config, seeds)
        out_w, out_h = (width, height)
        if request.enable_hr:  # the hires pass's size decides VAE tiling
            from app.engine.hires import target_size

            out_w, out_h = target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
        # Tiling only matters above the VAE's own sample size (768 on SD 2.1).
        if max(out_w, out_h) > self.pipe.vae.config.sample_size:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()

        step_frames: list[list] = [[] for _ in seeds]
        phase: dict = {"offset": 0, "total": 0}  # set by runs of several passes (hires fix); "stopped" on cancel

        def callback(p, index, timestep, tensors):
            step, total = phase["offset"] + index + 1, phase["total"] or p.num_timesteps
            latents = tensors["latents"]
            if request.save_steps and (step % request.save_steps == 0 or step == total):
                for frames, preview in zip(step_frames, latents_to_rgb(latents)):
                    frames.append(preview)
            if on_step is not None:
                on_step(StepInfo(step=step, total=total, latents=latents))
            if cancel is not None and cancel.is_set() and not phase.get("stopped"):
                # diffusers skips the remaining steps and decodes these latents: the partial image
                p._interrupt = True
                phase["stopped"] = (step, total)
            return tensors

        # <lora:name:weight> tags: out of the prompt text, their adapters on (and every other one off)
        # before the prompt is encoded, since a LoRA may change the text encoder too.
        prompt, tags = split_lora_tags(request.prompt)
        lora_entries = self.loras.activate(tags)
        kwargs = dict(
            # A1111 prompt syntax (weights, BREAK, long prompts): text or embeddings, see app/engine/prompts.py.
            **prompt_inputs(pipe, prompt, request.negative_prompt),
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=len(seeds),
            generator=generators(),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(0, request.steps)
        extra: dict = {"Tiling": "True"} if request.tiling else {}
        extra.update(lora_entries)
        from app.engine import noise  # variation seeds

        if noise.uses_variation(request):
            kwargs["latents"] = noise.initial_latents(request, seeds, width, height, self.pipe.unet.config.in_channels,
                                                      self.pipe.unet.dtype)
            extra.update(noise.infotext_entries(request))
        with circular_padding([self.pipe.unet, self.pipe.vae], on=request.tiling):
            if request.mask is not None:  # inpainting
                from app.engine.inpaint import run as run_inpaint

                output, extra_inpaint = run_inpaint(pipe, request, width, height, seeds, kwargs)
                extra.update(extra_inpaint)
            elif request.enable_hr:  # hires fix
                from app.engine.hires import run as run_hires

                second = self._img2img_pipe()
                second.scheduler = make_scheduler(request.scheduler, self._base_scheduler_config, seeds)
                output, extra_hires = run_hires(pipe, second, request, width, height, kwargs, phase, generators)
                extra.update(extra_hires)
            elif request.init_image is not None:
                init = request.init_image.convert("RGB").resize((width, height))
                output = pipe(image=init, strength=request.strength, **kwargs)
            else:
                output = pipe(width=width, height=height, **kwargs)
        images = output.images
        denoise = request.strength if request.init_image is not None or request.enable_hr else None
        texts = [
            infotext(prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                     sampler=request.scheduler, cfg_scale=request.guidance_scale, seed=s, width=width,
                     height=height, model=self.model_name, denoising_strength=denoise, extra=extra or None,
                     model_hash=self.model_hash, vae=self.vae_name, vae_hash=self.vae_hash)
            for s in seeds
        ]
        result = GenerationResult(images=images, seeds=seeds, infotexts=texts, request=request, model=self.model_name,
                                  width=width, height=height, seconds=time.perf_counter() - started,
                                  step_images=step_frames if request.save_steps else [])
        if phase.get("stopped"):
            step, total = phase["stopped"]
            raise GenerationCancelled(step, total, partial=result)
        return result

    def _img2img_pipe(self):
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            # Shares the loaded weights: no second copy in memory. from_pipe casts the shared modules to
            # its dtype argument, fp32 when none is given: name ours, or the whole model turns fp32.
            self._img2img = StableDiffusionImg2ImgPipeline.from_pipe(self.pipe, dtype=self.pipe.unet.dtype)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _inpaint_pipe(self):
        if self._inpaint is None:
            from diffusers import StableDiffusionInpaintPipeline

            # The same components (a 4-channel UNet is blended per step, a 9-channel one used natively);
            # dtype named for the reason given in _img2img_pipe.
            self._inpaint = StableDiffusionInpaintPipeline.from_pipe(self.pipe, dtype=self.pipe.unet.dtype)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    def preview(self, latents, max_side: int = 256) -> list:
        """Approximate RGB previews of in-flight latents: TAESD's when one is loaded, else the linear one."""
        if self.preview_decoder is not None:
            return taesd_previews(self.preview_decoder, latents, max_side)
        side = max(latents.shape[-1], latents.shape[-2])
        return latents_to_rgb(latents, scale=max(1, max_side // max(side, 1)))


@contextmanager
def circular_padding(models: list[Any], on: bool) -> Iterator[None]:
    """Seamless tiling for one run: every convolution of ``models`` pads by
    wrapping around (A1111's "Tiling"), then gets its own padding back."""
    if not on:
        yield
        return
    import torch

    convs = [m for model in models for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved):
            conv.padding_mode = mode


def output_path(out: str | Path) -> Path:
    """The path images are written to: ``out`` as given when it ends in .png,
    .jpg, .jpeg or .webp, with .png added when it has no suffix; ValueError
    for any other suffix (``out.gif`` is not silently written as ``out.gif.png``)."""
    out = Path(out)
    if not out.suffix:
        return out.with_suffix(".png")
    image_format(out)
    return out


def save_result(result: GenerationResult, out: str | Path) -> list[Path]:
    """Write the images with their metadata, in the format ``out``'s suffix
    names (PNG when it has none; see ``output_path``). One image goes to
    ``out``; several go to ``out-1.png``, ``out-2.png`` ... With step
    previews, also ``<name>.steps.png`` (a strip) and ``<name>.steps.gif``."""
    out = output_path(out)
    paths = []
    for i, (image, text) in enumerate(zip(result.images, result.infotexts)):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        save_image(image, path, text)
        paths.append(path)
        if result.step_images:
            frames = result.step_images[i] + [image]
            filmstrip(frames).save(path.with_suffix(".steps.png"))
            save_gif(frames, path.with_suffix(".steps.gif"))
    return paths
