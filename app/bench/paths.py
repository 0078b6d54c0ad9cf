"""The paths under test: each loads the same model and makes one image per call.

A runner returns ``(Sample, PIL image)``; the HTTP paths' runner lives in
``app.bench.http``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from app.bench.config import BENCH_NOISE, NEGATIVE, PROMPT, BenchConfig, ModelSource, Sample
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

        return build_sd21_pipeline(device, placement.torch_dtype)
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
    # compile off: these paths measure the eager engine (the compiled one: app/bench/compiled.py)
    return Engine.load(EngineOptions(model=source.folder, device=placement.device, dtype=placement.dtype,
                                     compile="off"))


def plain_runner(pipe: Any, cfg: BenchConfig, size: int) -> Runner:
    def run():
        cpu, started = time.process_time(), time.perf_counter()
        image = minimal_loop(pipe, cfg, size)
        return Sample(time.perf_counter() - started, time.process_time() - cpu), image

    return run


def minimal_loop(pipe: Any, cfg: BenchConfig, size: int) -> Any:
    """The engine's default algorithm in as few lines as it takes, on diffusers' components: A1111's
    DPM++ 2M on Karras sigmas over the model's noise table, CFG on the denoised output, noise from a
    CPU generator (the engine's ``randn_source="CPU"``), A1111's uint8 decode. Same pixels as the
    engine; what the engine's own loop (and the web paths around it) costs is measured against it."""
    import numpy as np
    import torch
    from PIL import Image

    device, dtype = pipe._execution_device, pipe.unet.dtype
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, device, 1, True, NEGATIVE)
        config = pipe.scheduler.config
        betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, config.num_train_timesteps,
                               dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0).float()
        table = ((1 - alphas) / alphas) ** 0.5
        log_table = table.log()
        ramp = torch.linspace(0, 1, cfg.steps)
        top, bottom = table[-1].item() ** (1 / 7), table[0].item() ** (1 / 7)
        sigmas = torch.cat([(top + ramp * (bottom - top)) ** 7, torch.zeros(1)]).to(device)
        v = config.prediction_type == "v_prediction"
        x = torch.randn((1, pipe.unet.config.in_channels, size // 8, size // 8),
                        generator=torch.Generator("cpu").manual_seed(cfg.seed)).to(device) * sigmas[0]

        def denoise(x: Any, sigma: Any) -> Any:
            dists = sigma.log() - log_table.to(device)[:, None]
            low = dists.ge(0).cumsum(0).argmax(0).clamp(max=len(table) - 2)
            lo, hi = log_table.to(device)[low], log_table.to(device)[low + 1]
            w = ((lo - sigma.log()) / (lo - hi)).clamp(0, 1)
            t = ((1 - w) * low + w * (low + 1)).reshape(1)
            c_in = 1 / (sigma ** 2 + 1) ** 0.5
            out = pipe.unet(torch.cat([x, x]).mul(c_in).to(dtype), torch.cat([t, t]),
                            encoder_hidden_states=torch.cat([cond, uncond]), return_dict=False)[0].float()
            if v:
                out = x * (1 / (sigma ** 2 + 1)) + out * (-sigma / (sigma ** 2 + 1) ** 0.5)
            else:
                out = x + out * -sigma
            return out[1:] + (out[:1] - out[1:]) * cfg.guidance_scale

        old = None
        for i in range(cfg.steps):
            denoised = denoise(x, sigmas[i])
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old is not None and sigmas[i + 1] != 0:
                r = (t - (-sigmas[i - 1].log())) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            else:
                denoised_d = denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
            old = denoised
        pixels = pipe.vae.decode((x / pipe.vae.config.scaling_factor).to(dtype), return_dict=False)[0]
        pixels = torch.clamp((pixels.float() + 1) / 2, 0, 1)
    return Image.fromarray((255.0 * pixels[0].permute(1, 2, 0).cpu().numpy()).astype(np.uint8))


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
    if mode == "controlnet":
        from diffusers import ControlNetModel

        from app.engine.controlnet import encode_png

        hint = encode_png(gradient_image(size))
        for name in ("bench-controlnet-1", "bench-controlnet-2"):
            engine.controlnets.add(name, ControlNetModel.from_unet(engine.pipe.unet))
        extra["controlnet"] = [{"image": hint, "module": "none", "model": name}
                               for name in ("bench-controlnet-1", "bench-controlnet-2")]
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=cfg.steps,
                                guidance_scale=cfg.guidance_scale, seed=cfg.seed, randn_source=BENCH_NOISE, **extra)

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
