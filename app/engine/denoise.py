"""The engine's denoising passes, A1111's way (``modules/processing.py``), on
the loaded pipeline's UNet, VAE and text encoder: no diffusers pipeline or
scheduler runs; the algorithms are in ``app/engine/sampling``.

1. Conditioning: each prompt's schedule (prompt editing, alternation),
   encoded with A1111's emphasis and chunking (app/engine/prompts.py), for
   A1111's step count (doubled for second-order samplers).
2. Noise: A1111's ``ImageRNG`` per pass: each image's own generator from
   its seed (GPU source: CUDA's numbers on every device), variation seeds,
   seed resize, ENSD; Brownian trees per image seed for the SDE samplers.
3. A pass: txt2img from noise, or img2img from an encoded image at
   A1111's ``t_enc``; inpainting keeps the original latents outside the
   mask; the hires fix is a txt2img pass then an img2img pass at the
   larger size with its own noise and conditioning.
4. Decoding as A1111: clamp, scale to 0..255, truncate to uint8.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from app.engine.prompts import encode_schedule
from app.engine.sampling import run
from app.engine.sampling.cfg import CFGDenoiser
from app.engine.sampling.deepcache import FeatureCache
from app.engine.sampling.denoisers import DiscreteDenoiser, LCMDenoiser, alphas_cumprod_from_config
from app.engine.sampling.rng import ImageRNG, brownian_noise_sampler
from app.engine.sampling.timesteps import TimestepsDenoiser
from app.engine.schedulers import LCM, TIMESTEPS, SchedulerChoice, find_scheduler

OnStep = Callable[[int, torch.Tensor], None]  # (steps finished in this pass, denoised latents)


class ModelWrappers:
    """The UNet seen as A1111's samplers see it: a sigma denoiser (eps or v), a timestep denoiser (eps
    out) and LCM's denoiser, over the model's own training noise table."""

    def __init__(self, pipe: Any, scheduler_config: dict):
        self.unet = pipe.unet
        self.alphas_cumprod = alphas_cumprod_from_config(
            scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012),
            scheduler_config.get("num_train_timesteps", 1000), scheduler_config.get("beta_schedule", "scaled_linear"))
        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        self.sigma = DiscreteDenoiser(self.alphas_cumprod, self.prediction, self.apply_model)
        self.timesteps = TimestepsDenoiser(self.alphas_cumprod, self.prediction, self.apply_model)
        self.lcm = LCMDenoiser(self.alphas_cumprod, self.prediction, self.apply_model)
        self.compiled: Any = None  # app/models/compiled.py CompiledUNet: set when the engine compiles
        self.eager = False  # a job whose hooks the compiled graph would not see (ToMe) runs the eager UNet

    @contextmanager
    def eager_while(self, on: Any) -> Iterator[None]:
        """The eager UNet for the block's length when ``on`` is truthy."""
        self.eager = bool(on)
        try:
            yield
        finally:
            self.eager = False

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                    image_cond: torch.Tensor | None = None, control: tuple | None = None,
                    cache: tuple | None = None) -> torch.Tensor:
        """The UNet's output for latents ``x`` at (fractional) timesteps ``t``; the sampling math stays in
        float32 while the UNet runs in its own dtype (A1111's autocast). ``control``: the pass's ControlNet
        units and which rows are the prompt's (app/engine/controlnet.py); they see the 4 latent channels
        only, as the extension gives an inpainting UNet's ControlNet. ``cache``: DeepCache's kept features, the
        pass's model call and the batch's slot (app/engine/sampling/deepcache.py); it runs eager."""
        unet = self.unet
        extra: dict = {}
        if control is not None:
            controls, rows = control
            residuals = controls.residuals(x, t, cond, rows)
            if residuals is not None:
                extra = {"down_block_additional_residuals": [r.to(unet.dtype) for r in residuals[0]],
                         "mid_block_additional_residual": residuals[1].to(unet.dtype)}
        if image_cond is not None:  # a 9-channel inpainting UNet: mask and masked-image latents
            x = torch.cat([x, image_cond.to(x)], dim=1)
        # Inputs stay on x's device (the pipeline's execution device; CPU offload hooks move the UNet there).
        x, t, cond = x.to(unet.dtype), t.to(x.device, torch.float32), cond.to(x.device, unet.dtype)
        if cache is not None:
            features, call, slot = cache
            return features.run(unet, x, t, cond, extra, call, slot).float()
        if self.compiled is not None and not extra and not self.eager:  # compiled where ready, else eager (ControlNet: eager)
            return self.compiled(x, t, cond).float()
        return unet(x, t, encoder_hidden_states=cond, return_dict=False, **extra)[0].float()

    def inner(self, choice: SchedulerChoice) -> Any:
        if choice.sampler.kind == TIMESTEPS:
            return self.timesteps
        return self.lcm if choice.sampler.kind == LCM else self.sigma


@dataclass
class PassResult:
    latents: torch.Tensor | None  # None: cancelled before the first model call finished
    interrupted: bool
    steps_done: int


class Denoiser:
    """One request's passes on the engine's components. ``on_step`` gets the finished step count within
    the pass and the denoised estimate."""

    def __init__(self, pipe: Any, wrappers: ModelWrappers, request: Any, seeds: list[int], subseeds: list[int],
                 cancel: threading.Event | None):
        self.pipe, self.wrappers, self.request = pipe, wrappers, request
        self.seeds, self.subseeds = seeds, subseeds
        self.cancel = cancel
        choice = find_scheduler(request.scheduler)
        assert choice is not None  # validated
        self.choice = choice
        self.device = pipe._execution_device  # the GPU under CPU offload too
        self.settings = run.SamplerSettings.from_request(request)
        self.control: Any = None  # the request's ControlNet units (app/engine/controlnet.py ControlPlan)
        self.last_control: Any = None  # the last pass's ControlSet: what it did, for tests
        self.last_cache: FeatureCache | None = None  # the last pass's DeepCache calls, for tests and the bench

    # 1. conditioning
    def conditioning(self, prompt: str, steps: int, hires_steps: int | None = None) -> tuple[list, list]:
        """The prompt's and negative prompt's schedules for a pass of ``steps`` (A1111's total steps)."""
        encode = self._encode
        return encode(prompt, steps, hires_steps), encode(self.request.negative_prompt, steps, hires_steps)

    def _encode(self, text: str, steps: int, hires_steps: int | None) -> list:
        schedule = encode_schedule(self.pipe, text, steps, hires_steps, clip_skip=self.request.clip_skip)
        return [(entry.end_at_step, entry.cond) for entry in schedule]

    # 2. noise
    def rng(self, latent_shape: tuple[int, ...], request: Any) -> ImageRNG:
        return ImageRNG(latent_shape, self.seeds, subseeds=self.subseeds, subseed_strength=request.subseed_strength,
                        seed_resize_from_h=request.seed_resize_from_h, seed_resize_from_w=request.seed_resize_from_w,
                        source=request.randn_source, device=str(self.device),
                        eta_noise_seed_delta=request.eta_noise_seed_delta)

    def noise(self, rng: ImageRNG) -> run.Noise:
        source, device = self.request.randn_source, str(self.device)
        return run.Noise(rng, lambda x, sigmas: brownian_noise_sampler(x, sigmas, self.seeds, source, device))

    # 3. passes
    def model(self, cond: list, uncond: list, image_cond: torch.Tensor | None = None,
              size: tuple[int, int] | None = None, hires: bool = False) -> CFGDenoiser:
        """The guided model of a pass at ``size`` (pixels): with the ControlNet units fitted to it."""
        timestep = self.choice.sampler.kind == TIMESTEPS
        model = CFGDenoiser(self.wrappers.inner(self.choice), cond, uncond, self.request.guidance_scale,
                            predicts_eps=timestep, alphas_cumprod=self.wrappers.alphas_cumprod,
                            image_cond=image_cond, cancel=self.cancel)
        if self.control is not None and size is not None:
            model.control = self.last_control = self.control.for_pass(*size, hires=hires)
        if self.request.deepcache_interval:  # kept for one pass: the hires pass starts its own
            model.feature_cache = self.last_cache = FeatureCache(self.request.deepcache_interval)
        return model

    def txt2img(self, conds: tuple[list, list], width: int, height: int, on_step: OnStep | None,
                image_cond: torch.Tensor | None = None) -> PassResult:
        model = self.model(*conds, image_cond=image_cond, size=(width, height))
        rng = self.rng(self.latent_shape(width, height), self.request)
        counter = _Counter(on_step)
        latents, stopped = run.sample(self.choice, model, self.wrappers.inner(self.choice), self.noise(rng),
                                      self.request.steps, self.settings, counter)
        return counter.result(latents, stopped, self.request.steps)

    def img2img(self, conds: tuple[list, list], init_latent: torch.Tensor, steps: int, strength: float,
                on_step: OnStep | None, *, mask: torch.Tensor | None = None, image_cond: torch.Tensor | None = None,
                fixed_steps: bool = False) -> PassResult:
        """From ``init_latent`` at ``strength``; ``mask`` (1: repaint, latent size) keeps the rest."""
        factor = self.pipe.vae_scale_factor
        size = (init_latent.shape[-1] * factor, init_latent.shape[-2] * factor)
        model = self.model(*conds, image_cond=image_cond, size=size, hires=fixed_steps)  # fixed: the hires pass
        if mask is not None:
            model.nmask, model.mask = mask, 1.0 - mask
        rng = self.rng(tuple(init_latent.shape[1:]), self.request)
        counter = _Counter(on_step)
        latents, stopped = run.sample_img2img(self.choice, model, self.wrappers.inner(self.choice), self.noise(rng),
                                              init_latent, steps, strength, self.settings, counter, fixed_steps)
        if mask is not None and latents is not None:  # the kept area as it was (A1111 blends once more)
            latents = latents * mask + init_latent * (1.0 - mask)
        return counter.result(latents, stopped, run.img2img_steps(steps, strength, fixed_steps)[1] + 1)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        factor = self.pipe.vae_scale_factor
        return (_latent_channels(self.pipe), height // factor, width // factor)

    def random_latents(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The seeds' first draw at ``shape`` (A1111's create_random_tensors: "latent noise" fill)."""
        return ImageRNG(shape, self.seeds, source=self.request.randn_source, device=str(self.device)).next()

    # 4. VAE
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images (same size) to latents: the VAE's mean (A1111 samples the posterior with an unseeded
        generator, a difference within the VAE's own noise)."""
        vae = self.pipe.vae
        pixels = torch.stack([_to_tensor(im) for im in images]).to(self.device, vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean
        return latents.float() * vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipe.vae
        with torch.no_grad():
            pixels = vae.decode((latents / vae.config.scaling_factor).to(self.device, vae.dtype), return_dict=False)[0]
        pixels = torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0)
        arrays = (255.0 * pixels.permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8)  # A1111 truncates
        return [Image.fromarray(a) for a in arrays]


def _latent_channels(pipe: Any) -> int:
    return int(pipe.vae.config.latent_channels)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


class _Counter:
    """Counts finished sampler steps and forwards them."""

    def __init__(self, on_step: OnStep | None):
        self.on_step, self.done = on_step, 0

    def __call__(self, index: int, denoised: torch.Tensor) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, denoised)

    def result(self, latents: torch.Tensor | None, stopped: bool, planned: int) -> PassResult:
        """The pass's result; a finished pass reports its planned step count last, since some samplers call
        back fewer times than A1111 counts steps (DDIM makes steps - 1 model calls, DPM fast order-3 steps)."""
        if not stopped and self.done < planned:
            self.done = planned
            if self.on_step is not None:
                self.on_step(planned, latents)
        return PassResult(latents, stopped, self.done)
