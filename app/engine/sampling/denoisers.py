"""Model wrappers that turn a UNet into a k-diffusion denoiser ``D(x, sigma)``, as A1111 1.10 builds them.

``DiscreteDenoiser`` reproduces k-diffusion's ``CompVisDenoiser`` (epsilon models) and ``CompVisVDenoiser``
(v-prediction models) with ``quantize=False`` (A1111's default ``enable_quantization`` off): the sigma table
comes from the model's ``alphas_cumprod``, timesteps are interpolated in log-sigma, so they are fractional.
``LCMDenoiser`` reproduces A1111's ``sd_samplers_lcm.LCMCompVisDenoiser``.
``alphas_cumprod_from_config`` rebuilds the buffer the way ldm's ``register_schedule`` does.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

PREDICTIONS = ("epsilon", "v_prediction")


def alphas_cumprod_from_config(beta_start: float, beta_end: float, num_train_timesteps: int,
                               beta_schedule: str = "scaled_linear") -> Tensor:
    """The float32 ``alphas_cumprod`` of an ldm model, from a diffusers scheduler config's fields.

    diffusers' "scaled_linear" is ldm's "linear" (betas linear in sqrt space) and diffusers' "linear" is ldm's
    "sqrt_linear". ldm builds the betas in float64 with torch, takes the cumulative product in float64 numpy and
    only then stores a float32 buffer; doing it in float32 throughout would shift the sigmas in the last digits.
    """
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r} (scaled_linear or linear)")
    alphas_cumprod = np.cumprod(1.0 - betas.numpy(), axis=0)
    return torch.tensor(alphas_cumprod, dtype=torch.float32)


def _append_dims(x: Tensor, ndim: int) -> Tensor:
    """``x`` (per-sample values) broadcastable against a tensor of ``ndim`` dimensions."""
    return x[(...,) + (None,) * (ndim - x.ndim)]


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _interpolated_sigma(log_sigmas: Tensor, t: Tensor) -> Tensor:
    """Sigma at a fractional index ``t`` of the table: linear interpolation of log sigma between neighbours."""
    t = t.float()
    low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - frac) * log_sigmas[low] + frac * log_sigmas[high]).exp()


class _SigmaTable:
    """A model's noise levels: ``sigmas`` ascending from its training table, and how to call it."""

    def __init__(self, alphas_cumprod: Tensor, prediction: str, apply_model: Callable[..., Tensor]):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.alphas_cumprod = alphas_cumprod
        self.prediction = prediction
        self.apply_model = apply_model
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]


class DiscreteDenoiser(_SigmaTable):
    """k-diffusion's CompVisDenoiser / CompVisVDenoiser (quantize off) over ``alphas_cumprod``.

    ``apply_model(x, t, **kwargs)`` is the UNet (with its conditioning in kwargs); it returns eps or v
    according to ``prediction``. ``sigmas`` ascend, like k-diffusion's buffer, and live on the device of
    ``alphas_cumprod``.
    """

    sigma_data = 1.0


    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of each sigma: where its log falls between two table entries (clamped to the table)."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        # index of the last table entry not above log_sigma, kept one short of the end so low+1 exists
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        log_low, log_high = self.log_sigmas[low], self.log_sigmas[high]
        w = ((log_low - log_sigma) / (log_low - log_high)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return _interpolated_sigma(self.log_sigmas, t)

    def get_sigmas(self, n: int | None = None) -> Tensor:
        """``n`` sigmas at timesteps evenly spaced from the last to 0, then 0; all 1000 (descending) when n is None."""
        if n is None:
            return _append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return _append_zero(self.t_to_sigma(t))

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, ...]:
        """k-diffusion's shapes: ``(c_out, c_in)`` for epsilon, ``(c_skip, c_out, c_in)`` for v."""
        c_in = 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        if self.prediction == "epsilon":
            return -sigma, c_in
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = -sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        return c_skip, c_out, c_in

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """The denoised estimate of ``x`` at per-sample noise levels ``sigma`` (shape (batch,))."""
        scalings = [_append_dims(s, x.ndim) for s in self.get_scalings(sigma)]
        c_in = scalings[-1]
        out = self.apply_model(x * c_in, self.sigma_to_t(sigma), **kwargs)
        if self.prediction == "epsilon":
            return x + out * scalings[0]
        c_skip, c_out = scalings[0], scalings[1]
        return out * c_out + x * c_skip


class LCMDenoiser(_SigmaTable):
    """A1111's LCMCompVisDenoiser: 50 of the 1000 training timesteps (every 20th, ending at 999).

    Timesteps are the nearest table entry mapped back to the 1000-step scale (integers), and the eps estimate
    goes through LCM's consistency boundary scalings. The UNet output is read as eps whatever ``prediction``
    says, because A1111 does so for v-models too; ``prediction`` is kept only for the common constructor.
    """

    sigma_data = 1.0
    original_timesteps = 50
    boundary_sigma_data = 0.5
    timestep_scaling = 10.0

    def __init__(self, alphas_cumprod: Tensor, prediction: str, apply_model: Callable[..., Tensor]):
        timesteps = len(alphas_cumprod)
        self.skip_steps = timesteps // self.original_timesteps
        picked = torch.arange(timesteps - 1, -1, -self.skip_steps)[:self.original_timesteps].flip(0)
        super().__init__(alphas_cumprod[picked.to(alphas_cumprod.device)].to(torch.float32), prediction, apply_model)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Integer timestep (1000-step scale) of the table entry nearest in log sigma."""
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        index = ((t - (self.skip_steps - 1)) / self.skip_steps).float().clamp(min=0, max=len(self.sigmas) - 1)
        return _interpolated_sigma(self.log_sigmas, index)

    def get_sigmas(self, n: int | None = None) -> Tensor:
        if n is None:
            return _append_zero(self.sigmas.flip(0))
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        t = torch.linspace(start.item(), end.item(), n, device=self.sigmas.device)
        return _append_zero(self.t_to_sigma(t))

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_out, c_in)`` of the eps parameterization."""
        return -sigma, 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def get_scaled_out(self, sigma: Tensor, output: Tensor, input: Tensor) -> Tensor:
        """LCM's boundary condition: blend the denoised ``output`` with ``input`` by the scaled timestep."""
        scaled_t = _append_dims(self.sigma_to_t(sigma), output.ndim) * self.timestep_scaling
        sd2 = self.boundary_sigma_data ** 2
        c_skip = sd2 / (scaled_t ** 2 + sd2)
        c_out = scaled_t / (scaled_t ** 2 + sd2) ** 0.5
        return c_out * output + c_skip * input

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        c_out, c_in = [_append_dims(s, x.ndim) for s in self.get_scalings(sigma)]
        eps = self.apply_model(x * c_in, self.sigma_to_t(sigma), **kwargs)
        return self.get_scaled_out(sigma, x + eps * c_out, x)
