"""Classifier-free guidance around a denoiser, as A1111 1.10's
``CFGDenoiser`` (modules/sd_samplers_cfg_denoiser.py) does it for one
prompt per batch:

- the conditioning is picked per call from the prompt's schedule (prompt
  editing and alternation), by a call counter that starts at 0 for each
  pass; second-order samplers make two calls a step, which is why A1111
  counts their prompt-editing steps twice;
- cond and uncond of the same length go through the model as one batch
  (cond first); of different lengths (A1111's default ``pad_cond_uncond``
  off) as two, so a long prompt is not padded with empty chunks;
- the guidance is combined on the model's output: denoised latents for
  the sigma samplers, noise for the timestep samplers (both linear, so
  the same guidance);
- inpainting keeps the original latents outside the mask: blended into
  the output (sigma samplers) or into the input (timestep samplers), as
  A1111's ``mask_before_denoising``;
- NGMS (A1111's ``s_min_uncond``, "negative guidance minimum sigma"): on
  odd-numbered calls (A1111's ``step % 2``) whose sigma is below it, the
  uncond pass is skipped and the cond output stands in for it, so that call's
  result is the cond output alone; for the timestep samplers the value
  compared is the timestep, as in A1111. With A1111's option
  ``s_min_uncond_all`` ("NGMS all steps") every such call skips it, not every other;
- every call first checks the cancel event: a cancelled run stops between
  model calls and keeps its last denoised estimate (A1111's interrupt
  keeps its last latent too).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from app.engine.sampling.timesteps import pred_x0

Schedule = list  # [(end_at_step, cond tensor (1, tokens, dim))], see app.engine.prompts.encode_schedule


class Interrupted(Exception):
    """Raised inside a sampler when the run is cancelled; the driver turns it into a partial result."""


def cond_at(schedule: Schedule, step: int) -> torch.Tensor:
    """The conditioning in force at denoiser call ``step`` (A1111's reconstruct_cond_batch for one prompt):
    the first entry not yet ended; past the last one (samplers making more calls than A1111 counts steps,
    such as Restart or DPM adaptive) A1111 goes back to the first entry, and so does this."""
    for end_at_step, cond in schedule:
        if step <= end_at_step:
            return cond
    return schedule[0][1]


class CFGDenoiser:
    """``model(x, sigma) -> denoised`` (or eps, for the timestep samplers) with guidance, for a batch that
    shares one prompt. ``inner(x, sigma, cond=..., image_cond=...)`` is the model wrapper: a
    DiscreteDenoiser (denoised out) or a TimestepsDenoiser (eps out)."""

    def __init__(self, inner: Callable[..., torch.Tensor], cond: Schedule, uncond: Schedule, cond_scale: float, *,
                 predicts_eps: bool = False, alphas_cumprod: torch.Tensor | None = None,
                 image_cond: torch.Tensor | None = None, cancel: threading.Event | None = None):
        self.inner = inner
        self.cond, self.uncond = cond, uncond
        self.cond_scale = cond_scale
        self.predicts_eps = predicts_eps  # timestep samplers: the model answers noise, blended before the call
        self.alphas_cumprod = alphas_cumprod
        self.image_cond = image_cond  # inpainting UNets: mask and masked-image latents, concatenated to x
        self.cancel = cancel
        self.step = 0  # model calls so far in this pass
        self.s_min_uncond = 0.0  # NGMS (0: off), set per pass by run.py from the request
        self.s_min_uncond_all = False  # NGMS on every call below it, not every other
        self.uncond_skipped = 0  # calls that skipped the uncond pass: what NGMS saved, for tests
        # ControlNet units (app/engine/controlnet.py ControlSet), and A1111's state.sampling_step/sampling_steps
        # that decide when they are active: the index of the sampler's last finished step, and the pass's steps.
        self.control: Any = None
        self.sampling_step, self.sampling_steps = 0, 1
        # DeepCache (app/engine/sampling/deepcache.py FeatureCache): which model call and batch this is decides
        # whether the UNet runs full or reuses its deep features.
        self.feature_cache: Any = None
        # Inpainting: ``mask`` keeps (1: original latents), ``nmask`` = 1 - mask repaints.
        self.init_latent: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.nmask: torch.Tensor | None = None
        self.last_denoised: torch.Tensor | None = None  # the latest estimate of the clean latents
        # DDIM CFG++ (A1111 1.10): the guidance scale shrunk by 1/12.5, and the uncond noise kept for its update.
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond: torch.Tensor | None = None

    def reset(self) -> None:
        """Start a pass: the call counter (prompt editing) from 0, as A1111's initialize does per pass."""
        self.step = 0
        self.sampling_step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted
        batch = x.shape[0]
        if self.predicts_eps and self.mask is not None:
            x = self._blend(x)
        cond = cond_at(self.cond, self.step).expand(batch, -1, -1)
        if (self.step % 2 or self.s_min_uncond_all) and self.s_min_uncond > 0 \
                and float(sigma[0]) < self.s_min_uncond:  # A1111's rule
            self.uncond_skipped += 1
            out_cond = self.inner(x, sigma, cond=cond, image_cond=self.image_cond,
                                  **self._control(torch.ones(batch, dtype=torch.bool)), **self._cache(0))
            return self._finish(x, sigma, out_cond, out_cond.clone(), 1.0)
        uncond = cond_at(self.uncond, self.step).expand(batch, -1, -1)
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        image_cond = None if self.image_cond is None else torch.cat([self.image_cond, self.image_cond])
        rows = torch.arange(2 * batch) < batch  # which rows carry the prompt (ControlNet's cond-only mode)
        if cond.shape[1] == uncond.shape[1]:
            out = self.inner(x_in, sigma_in, cond=torch.cat([cond, uncond]), image_cond=image_cond,
                             **self._control(rows), **self._cache(0))
        else:  # A1111's default: no padding, two model calls
            halves = (slice(0, batch), slice(batch, 2 * batch))
            out = torch.cat([self.inner(x_in[h], sigma_in[h], cond=c,
                                        image_cond=None if image_cond is None else image_cond[h],
                                        **self._control(rows[h]), **self._cache(slot))
                             for slot, (h, c) in enumerate(zip(halves, (cond, uncond)))])
        return self._finish(x, sigma, out[:batch], out[batch:], self.cond_scale)

    def _finish(self, x: torch.Tensor, sigma: torch.Tensor, out_cond: torch.Tensor, out_uncond: torch.Tensor,
                cond_scale: float) -> torch.Tensor:
        """Guidance on the model's outputs, the inpainting blend and the denoised estimate."""
        if self.need_last_noise_uncond:
            self.last_noise_uncond = out_uncond.clone()
        guided = out_uncond + (out_cond - out_uncond) * (cond_scale * self.cond_scale_multiplier)
        if not self.predicts_eps and self.mask is not None:
            guided = self._blend(guided)
        if self.predicts_eps:
            assert self.alphas_cumprod is not None
            self.last_denoised = pred_x0(self.alphas_cumprod, x, guided, sigma)
        else:
            self.last_denoised = guided
        self.step += 1
        return guided

    def _control(self, rows: torch.Tensor) -> dict:
        if self.control is None:
            return {}
        self.control.step, self.control.steps = self.sampling_step, self.sampling_steps
        return {"control": (self.control, rows)}

    def _cache(self, slot: int) -> dict:
        return {} if self.feature_cache is None else {"cache": (self.feature_cache, self.step, slot)}

    def _blend(self, latent: torch.Tensor) -> torch.Tensor:
        assert self.init_latent is not None and self.mask is not None and self.nmask is not None
        return latent * self.nmask + self.init_latent * self.mask
