"""The paths under test: each loads the same model and makes one image per call.

A runner returns ``(Sample, PIL image)``; the HTTP paths' runner lives in
``app.bench.http``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from app.bench.config import BENCH_TIMESTEP_SPACING, NEGATIVE, PROMPT, BenchConfig, ModelSource, Sample
from app.models.devices import Placement

if TYPE_CHECKING:
    from app.engine.engine import Engine

Runner = Callable[[], tuple[Sample, Any]]


def prepare_process(threads: int | None) -> None:
    """Torch's CPU threads (when given), and no loading/saving progress bars in the benchmark's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if threads:
        import torch

        torch.set_num_threads(threads)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_plain(source: ModelSource, placement: Placement, on_cpu: bool = False) -> Any:
    """A plain ``StableDiffusionPipeline``: nothing of ours but the tokenizer
    files of the random-weight SD 2.1."""
    device = "cpu" if on_cpu else placement.device
    if source.kind == "sd21":
        from app.models.sd21 import build_sd21_pipeline

        pipe = build_sd21_pipeline(device, placement.torch_dtype)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=BENCH_TIMESTEP_SPACING)
        return pipe
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(source.folder, safety_checker=None, requires_safety_checker=False,
                                                   dtype=placement.torch_dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_engine(source: ModelSource, placement: Placement) -> Engine:
    from app.engine.engine import Engine, EngineOptions

    if source.kind == "sd21":
        return Engine(load_plain(source, placement), "sd21", placement)
    assert source.folder is not None  # kind "folder"
    return Engine.load(EngineOptions(model=source.folder, device=placement.device, dtype=placement.dtype))


def plain_runner(pipe: Any, cfg: BenchConfig, size: int) -> Runner:
    import torch

    def run():
        cpu, started = time.process_time(), time.perf_counter()
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=cfg.steps,
                     guidance_scale=cfg.guidance_scale, width=size, height=size,
                     generator=torch.Generator("cpu").manual_seed(cfg.seed)).images[0]
        return Sample(time.perf_counter() - started, time.process_time() - cpu), image

    return run


def engine_runner(engine: Engine, cfg: BenchConfig, size: int, mode: str = "txt2img") -> Runner:
    """One image of ``mode`` (see ``MODES``) per call on the engine."""
    from app.bench.config import HIRES_SCALE, MODES
    from app.engine.types import GenerationRequest
    from app.engine.upscale import upscale

    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; one of {', '.join(MODES)}")
    extra: dict = {}
    if mode in ("img2img", "inpaint"):  # a smooth gradient: the VAE encodes it like any photo
        extra["init_image"] = gradient_image(size)
    if mode == "inpaint":  # the middle half of each side repainted
        from PIL import Image, ImageDraw

        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).rectangle((size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1), fill=255)
        extra["mask"] = mask
    if mode == "hires":
        extra.update(enable_hr=True, hr_scale=HIRES_SCALE, strength=0.7)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                                guidance_scale=cfg.guidance_scale, seed=cfg.seed, **extra)

    def run():
        cpu, started = time.process_time(), time.perf_counter()
        image = engine.generate(request).images[0]
        if mode == "upscale":
            image = upscale(image, scale=HIRES_SCALE, limits=engine.limits)
        return Sample(time.perf_counter() - started, time.process_time() - cpu), image

    return run


def gradient_image(size: int) -> Any:
    """A smooth size x size RGB gradient (the benchmark's init image)."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                     np.full((size, size), 128, np.uint8)], axis=-1))
