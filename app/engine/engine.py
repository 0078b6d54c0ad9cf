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

from app.engine.base import GenerationCancelled
from app.engine.denoise import ModelWrappers
from app.engine.dynamic_prompts import resolve_prompts, template_entries
from app.engine.embeddings import EmbeddingInfo, unusable_embedding
from app.engine.embeddings import install as install_embeddings
from app.engine.hires import check_hires_size
from app.engine.infotext_fields import request_entries
from app.engine.loras.runtime import LoraSet
from app.engine.loras.tags import split_lora_tags
from app.engine.metadata import image_format, infotext, save_image, with_templates
from app.engine.previews import filmstrip, latents_to_rgb, load_preview_decoder, save_gif, taesd_previews
from app.engine.types import (
    DEFAULT_LIMITS,
    GenerationRequest,
    GenerationResult,
    Limits,
    StepInfo,
    ValidationError,
    check_size,
    floor_size,
)
from app.models.demo import DEMO_MODEL_ID
from app.models.devices import Placement, choose_placement, free_memory
from app.models.loading import DEFAULT_MODEL_ID, display_name, load_pipeline

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepInfo], None]


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
    controlnet_dir: str | None = _option(None, "folder of ControlNet models (diffusers folders, .safetensors files) "
                                               "for ControlNet units; Hub ids download on first use")
    wildcard_dir: str | None = _option(None, "folder of wildcard files (name.txt, one option a line) for __name__ in "
                                             "prompts; web app default: <instance>/wildcards")
    preview_decoder: str | None = _option(None, "folder of a TAESD tiny decoder (diffusers AutoencoderTiny, e.g. a "
                                                "download of madebyollin/taesd) for sharper live previews; "
                                                "none: the cheap linear preview")
    compile: str = _option("auto", "off, on or auto: torch.compile the UNet in the background, jobs running eager "
                                   "until it is ready (auto: on with CUDA)")
    compile_cache_dir: str | None = _option(None, "folder of the compile cache kept between sessions (keyed by GPU, "
                                                  "torch and model); web app default: <instance>/compile-cache, "
                                                  "else ~/.cache/text-to-image-generator/compile")


class Engine:
    def __init__(self, pipe, model: str, placement: Placement, limits: Limits = DEFAULT_LIMITS):
        self.pipe = pipe
        self.model = model
        self.model_name = display_name(model)
        self.placement = placement
        self.limits = limits
        # The UNet as A1111's samplers see it, over the model's own noise table (app/engine/denoise.py).
        self.sampling = ModelWrappers(pipe, dict(pipe.scheduler.config))
        self._lock = threading.Lock()  # one generation at a time per pipeline
        self.embeddings: list[EmbeddingInfo] = []  # textual inversions loaded into the pipeline
        self.preview_decoder: Any = None  # a TAESD AutoencoderTiny, or None: the linear preview
        # The LoRAs loaded into the pipeline (app/engine/loras/runtime.py). Made here, once, before any thread
        # can use the engine: its layer shapes are read before an adapter wraps a layer.
        self.loras = LoraSet(pipe)
        self.vae: str | None = None  # the VAE file or folder loaded instead of the model's own
        # ControlNets by name, loaded on first use and kept in a small LRU (app/models/controlnet.py); the
        # demo model offers one made from its own UNet.
        from app.models.controlnet import ControlNetStore

        self.controlnets = ControlNetStore(None, placement, demo_unet=pipe.unet if model == DEMO_MODEL_ID else None)
        # For the infotext (A1111's "Model hash", "VAE hash", "VAE"): set by whoever knows
        # the files' hashes (the model catalogue caches them).
        self.model_hash: str | None = None
        self.vae_hash: str | None = None
        self.last_control: Any = None  # the last run's ControlSet (which units ran at which step): for tests
        self.wildcard_dir: str | None = None  # where __name__ in a prompt finds name.txt (app/engine/dynamic_prompts.py)
        self.wildcards_from_app = False  # wildcard_dir was set by a web app it was handed to (app/web/__init__.py)
        self.compiled: Any = None  # the UNet under torch.compile (app/models/compiled.py), or None

    @classmethod
    def load(cls, options: EngineOptions | None = None, limits: Limits = DEFAULT_LIMITS,
             compile_sizes: tuple[tuple[int, int], ...] | None = None) -> "Engine":
        """``compile_sizes``: the sizes compiled first when compiling (None: the model's native size)."""
        options = options or EngineOptions()
        placement = choose_placement(options.device, options.dtype)
        offload = options.cpu_offload and placement.device.startswith("cuda")
        from app.models.compiled import wants_compile

        compile_unet = wants_compile(options.compile, placement.device, offload)  # a bad choice fails before loading
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
        engine.wildcard_dir = options.wildcard_dir
        engine.controlnets.folder = options.controlnet_dir
        if options.preview_decoder:
            engine.preview_decoder = load_preview_decoder(options.preview_decoder, placement)
        if compile_unet:
            engine.start_compile(options.compile_cache_dir, compile_sizes or (engine.default_size,))
        return engine

    def start_compile(self, cache_dir: str | None, sizes: tuple[tuple[int, int], ...]) -> None:
        """Compile the UNet in the background for ``sizes`` (one image each); jobs run eager meanwhile."""
        from app.models.compiled import CompileCache, CompiledUNet, Shape, cache_key, default_cache_dir

        unet = self.pipe.unet
        cache = CompileCache(cache_dir or default_cache_dir(), cache_key(unet, self.placement.device))
        self.compiled = self.sampling.compiled = CompiledUNet(unet, cache)
        for width, height in sizes:
            self.compiled.ask(Shape.of_image(unet, width, height, factor=self.pipe.vae_scale_factor))

    @property
    def compile_status(self) -> str:
        """off, compiling (jobs run eager), compiled or failed."""
        return "off" if self.compiled is None else self.compiled.status

    def close(self) -> None:
        """The engine is being dropped: no more compiles (one under way is waited for)."""
        if self.compiled is not None:
            self.compiled.stop()

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
        if request.extras is not None:  # an Extras job (app/engine/extras.py): no denoising
            from app.engine.extras import run_extras

            return run_extras(request, self.limits, on_step, cancel, self.model_name)
        seeds, subseeds = request.batch_seeds()
        # {a|b}, __name__ (app/engine/dynamic_prompts.py): each image's prompts from its seed; None: no template
        prompts = resolve_prompts(request, seeds, self.wildcard_dir, self.limits)
        for prompt, negative in dict.fromkeys(prompts or []):  # what they resolved to: A1111's syntax, lengths
            replace(request, prompt=prompt, negative_prompt=negative).validate(self.limits, templates=False)
        if request.sd_upscale is not None:  # tiles of img2img, each one a generate call of its own
            from app.engine.sd_upscale import run_sd_upscale

            if prompts is not None:  # the tiles share the image's prompt
                request = replace(request, prompt=prompts[0][0], negative_prompt=prompts[0][1])
            return run_sd_upscale(self, request, on_step, cancel)
        for name in ("prompt", "negative_prompt"):
            skipped = unusable_embedding(getattr(request, name), self.embeddings)
            if skipped is not None:
                raise ValidationError(name, skipped.name, f"embedding {skipped.name!r} cannot be used: {skipped.error}")
        if request.outpaint:  # outpainting is inpainting on a larger canvas
            from app.engine.inpaint import outpaint_canvas, outpaint_sides

            canvas, mask = outpaint_canvas(request.init_image, request.outpaint, outpaint_sides(request.outpaint_directions))
            request = replace(request, init_image=canvas, mask=mask, width=None, height=None)
        width, height = self.resolve_size(request)
        check_size(width, height, self.limits)  # a size taken from the model or init image too
        if request.enable_hr:
            check_hires_size(request, width, height, self.limits)
        import torch

        with self._lock:
            detail = None
            try:
                if prompts is not None:
                    return self._run_templated(request, prompts, width, height, seeds, subseeds, on_step, cancel)
                result = self._run(request, width, height, seeds, subseeds, on_step, cancel)
                return self._finish_faces(result, subseeds, cancel)
            except torch.OutOfMemoryError as exc:
                detail = str(exc).strip().split("\n")[0][:200]
            # Out of the except block: the failed run's frames, and the tensors they hold, are gone now.
            self.controlnets.clear()
            free_memory(self.placement.device)
            raise GenerationOutOfMemory(width, height, len(seeds), self.placement.device, detail)

    # 1. the sampler and conditioning, 2. denoise (app/engine/denoise.py), 3. decode and describe the images.
    @contextmanager
    def _unet_hooks(self, on: bool, cancel: threading.Event | None, steps: int,
                    on_step: Callable[[StepInfo], None] | None) -> Iterator[None]:
        """ToMe and DeepCache put hooks on the UNet: while they are on, the background compiler must not
        trace it (app/models/compiled.py, ``hooks_allowed``); such a job waits for a compile under way,
        reporting step 0 meanwhile (no latents, as an Extras job's reports), so that its worker can pass
        on a cancel."""
        if not on or self.compiled is None:
            yield
            return
        waiting = None if on_step is None else (lambda: on_step(StepInfo(step=0, total=steps, latents=None)))
        with self.compiled.hooks_allowed(cancel, waiting) as held:
            if not held:
                raise GenerationCancelled(0, steps)
            yield

    def _run(self, request, width, height, seeds, subseeds, on_step, cancel) -> GenerationResult:
        import torch

        from app.engine import hires, inpaint
        from app.engine.denoise import Denoiser
        from app.engine.sampling import deepcache
        from app.engine.sampling import run as sampling
        from app.engine.tome import token_merging

        started = time.perf_counter()
        out_w, out_h = (width, height)
        if request.enable_hr:  # the hires pass's size decides VAE tiling
            out_w, out_h = hires.target_size(width, height, request.hr_scale, request.hr_resize_x,
                                             request.hr_resize_y)
        # Tiling only matters above the VAE's own sample size (768 on SD 2.1).
        if max(out_w, out_h) > self.pipe.vae.config.sample_size:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(0, request.steps)

        denoiser = Denoiser(self.pipe, self.sampling, request, seeds, subseeds, cancel)
        denoiser.control = self._control_plan(request, width, height)
        step_frames: list[list] = [[] for _ in seeds]
        progress = {"done": 0, "total": self._total_steps(request)}

        def step(done: int, denoised) -> None:
            progress["done"] = done
            if request.save_steps and (done % request.save_steps == 0 or done == progress["total"]):
                for frames, preview in zip(step_frames, latents_to_rgb(denoised)):
                    frames.append(preview)
            if on_step is not None:
                # DPM adaptive picks its own step count: the total grows with it rather than being passed.
                on_step(StepInfo(step=done, total=max(done, progress["total"]), latents=denoised))

        # <lora:name:weight> tags: out of the prompt text, their adapters on (and every other one off)
        # before the prompt is encoded, since a LoRA may change the text encoder too.
        prompt, tags = split_lora_tags(request.prompt)
        lora_entries = self.loras.activate([] if request.disable_extra_networks else tags)
        plan = None
        images: list = []
        if request.deepcache_interval:
            why = deepcache.unsupported(self.pipe.unet)
            if why:
                raise ValidationError("deepcache_interval", request.deepcache_interval, f"DeepCache is off here: {why}")
        with torch.no_grad(), self._unet_hooks(bool(request.tome_ratio or request.deepcache_interval), cancel,
                                               request.steps, on_step), \
                circular_padding([self.pipe.unet, self.pipe.vae], on=request.tiling), \
                token_merging(self.pipe.unet, request.tome_ratio, seeds[0]) as tome, self.sampling.eager_while(tome):
            if request.mask is not None:  # inpainting (app/engine/inpaint.py)
                latents, plan, extra_mode, stopped = inpaint.run(denoiser, request, width, height, prompt, step)
            elif request.enable_hr:  # hires fix (app/engine/hires.py)
                latents, images, extra_mode, stopped = hires.run(denoiser, request, width, height, prompt, step,
                                                                 lambda: progress["done"])
            else:
                conds = denoiser.conditioning(prompt, sampling.total_steps(denoiser.choice, request.steps))
                if request.init_image is not None:
                    init = request.init_image.convert("RGB").resize((width, height))
                    init_latent = denoiser.encode([init]).expand(len(seeds), -1, -1, -1)
                    done = denoiser.img2img(conds, init_latent, request.steps, request.strength, step)
                else:
                    done = denoiser.txt2img(conds, width, height, step)
                latents, stopped, extra_mode = done.latents, done.interrupted, {}
            if latents is not None:
                images = denoiser.decode(latents)
        if plan is not None:
            images = [inpaint.composite(im, plan) for im in images]
        extra = self._infotext_entries(request, denoiser.choice)
        extra.update(extra_mode)
        extra.update(lora_entries)
        extra.update(face_entries(request))
        if denoiser.control is not None:
            extra.update(denoiser.control.infotext_entries([u.model for u in denoiser.control.units]))
        self.last_control = denoiser.last_control
        denoise = request.strength if request.init_image is not None or request.enable_hr else None
        texts = [
            infotext(prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                     sampler=request.scheduler, cfg_scale=request.guidance_scale, seed=s, width=width,
                     height=height, model=self.model_name, denoising_strength=denoise,
                     extra=_with_variation(extra, request, sub) or None,
                     model_hash=self.model_hash, vae=self.vae_name, vae_hash=self.vae_hash)
            for s, sub in zip(seeds, subseeds)
        ]
        result = GenerationResult(images=images, seeds=seeds, infotexts=texts, request=request, model=self.model_name,
                                  width=width, height=height, seconds=time.perf_counter() - started,
                                  step_images=step_frames if request.save_steps else [],
                                  control_maps=denoiser.control.detected_maps() if denoiser.control else [])
        if stopped:
            if progress["done"] == 0:
                raise GenerationCancelled(0, progress["total"])
            raise GenerationCancelled(progress["done"], progress["total"], partial=result)
        return result

    def _run_templated(self, request: GenerationRequest, prompts: list[tuple[str, str]], width: int, height: int,
                       seeds: list[int], subseeds: list[int], on_step: StepCallback | None,
                       cancel: threading.Event | None) -> GenerationResult:
        """A template request: the images that resolved to the same prompts run as one batch with their own
        seeds (each image's noise comes from its own seed, so it is the image the whole batch would give it),
        in the order of the images; the infotexts keep the templates as sd-dynamic-prompts writes them."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, pair in enumerate(prompts):
            groups.setdefault(pair, []).append(i)
        entries = template_entries(request.prompt, request.negative_prompt)
        done: dict[int, tuple[Any, str, list]] = {}  # image index -> (image, infotext, step frames)
        control_maps: list = []
        started = time.perf_counter()

        def combined() -> GenerationResult:
            order = sorted(done)
            return GenerationResult(images=[done[i][0] for i in order], seeds=[seeds[i] for i in order],
                                    infotexts=[done[i][1] for i in order], request=request, model=self.model_name,
                                    width=width, height=height, seconds=time.perf_counter() - started,
                                    step_images=[done[i][2] for i in order] if request.save_steps else [],
                                    control_maps=control_maps)

        for k, ((prompt, negative), indices) in enumerate(groups.items()):
            part = replace(request, prompt=prompt, negative_prompt=negative, num_images=len(indices))

            def step(info: StepInfo, k: int = k) -> None:
                if on_step is not None:
                    on_step(replace(info, step=k * info.total + info.step, total=len(groups) * info.total))

            try:
                result = self._run(part, width, height, [seeds[i] for i in indices], [subseeds[i] for i in indices],
                                   step, cancel)
                result = self._finish_faces(result, [subseeds[i] for i in indices], cancel)
            except GenerationCancelled as exc:
                if exc.partial is not None:
                    self._keep(done, indices, exc.partial, entries)
                raise GenerationCancelled(exc.step, exc.total, combined() if done else None) from None
            self._keep(done, indices, result, entries)
            control_maps += result.control_maps
        return combined()

    @staticmethod
    def _keep(done: dict, indices: list[int], result: GenerationResult, entries: dict[str, str]) -> None:
        frames = result.step_images or [[] for _ in result.images]
        for i, image, text, steps in zip(indices, result.images, result.infotexts, frames):
            done[i] = (image, with_templates(text, entries), steps)

    def _finish_faces(self, result: GenerationResult, subseeds: list[int],
                      cancel: threading.Event | None) -> GenerationResult:
        """Face restoration, then face detailing, on each finished image (A1111 restores faces before
        the scripts' postprocessing, where ADetailer runs). Detailing inpaints with this engine."""
        request = result.request
        if not (request.restore_faces or request.face_detail):
            return result
        from app.engine.faces import restore_faces
        from app.engine.faces.detail import detail_faces

        def inpaint(face_request: GenerationRequest) -> Any:
            face_request = face_request.validate(self.limits)
            seeds = [face_request.seed if face_request.seed is not None else 0]
            done = self._run(face_request, face_request.width, face_request.height, seeds,
                             [face_request.subseed or 0], None, cancel)
            return done.images[0]

        images: list = []
        for i, (image, seed, subseed) in enumerate(zip(result.images, result.seeds, subseeds)):
            if request.restore_faces:
                image = restore_faces(image, request.face_restorer, 1.0, request.code_former_weight)
            if request.face_detail:
                try:
                    image = detail_faces(request, image, seed, subseed, inpaint)
                except GenerationCancelled:  # the images so far, as generated where not yet detailed
                    partial = replace(result, images=images + result.images[i:])
                    raise GenerationCancelled(result.request.steps, result.request.steps, partial) from None
            images.append(image)
        return replace(result, images=images)

    def _control_plan(self, request: GenerationRequest, width: int, height: int) -> Any:
        """The request's ControlNet units with their maps and models; a model that cannot load is the
        request's error, naming the unit."""
        from app.engine.controlnet import ControlPlan, Crop
        from app.engine.inpaint import request_crop_box
        from app.models.loading import ModelLoadError

        if not request.controlnet:
            return None
        names = [u["model"] for u in request.controlnet]

        def load(name: str) -> Any:
            try:
                return self.controlnets.get(name)
            except ModelLoadError as exc:
                raise ValidationError(f"controlnet[{names.index(name)}].model", name, str(exc)) from None

        box = request_crop_box(request, width, height)
        crop = None if box is None else Crop(box, request.init_image.size)
        return ControlPlan.build(request, width, height, load, request.init_image, crop)

    @staticmethod
    def _total_steps(request: GenerationRequest) -> int:
        """The steps a run reports progress over (A1111's sampling steps: img2img runs t_enc + 1)."""
        from app.engine.hires import second_pass_steps
        from app.engine.sampling.run import img2img_steps

        if request.enable_hr:
            return request.steps + (second_pass_steps(request) if request.strength > 0 else 0)
        if request.init_image is not None:
            return img2img_steps(request.steps, request.strength, False)[1] + 1
        return request.steps

    @staticmethod
    def _infotext_entries(request: GenerationRequest, choice) -> dict:
        """A1111's entries for the sampler settings, noise and text encoder, in create_infotext's order."""
        from app.engine.sampling.run import SamplerSettings, infotext_entries

        extra = infotext_entries(choice, SamplerSettings.from_request(request))
        extra.update(request_entries(request))  # the fields' own entries (app/engine/fields.py)
        return extra

    def preview(self, latents, max_side: int = 256) -> list:
        """Approximate RGB previews of in-flight latents: TAESD's when one is loaded, else the linear one."""
        if self.preview_decoder is not None:
            return taesd_previews(self.preview_decoder, latents, max_side)
        side = max(latents.shape[-1], latents.shape[-2])
        return latents_to_rgb(latents, scale=max(1, max_side // max(side, 1)))


def face_entries(request: GenerationRequest) -> dict:
    """A1111's "Face restoration" entry (it writes no CodeFormer weight on txt2img/img2img) and
    ADetailer's entries for face detailing."""
    from app.engine.faces.detail import infotext_entries

    extra: dict = {"Face restoration": request.face_restorer} if request.restore_faces else {}
    extra.update(infotext_entries(request))
    return extra


def _with_variation(extra: dict, request: GenerationRequest, subseed: int) -> dict:
    """The entries with A1111's variation seed keys for one image (each image has its own subseed)."""
    if request.subseed_strength <= 0:
        return extra
    return {**extra, "Variation seed": subseed, "Variation seed strength": f"{request.subseed_strength:g}"}


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
