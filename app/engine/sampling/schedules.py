"""A1111 1.10's schedule types (modules/sd_schedulers.py) and KDiffusionSampler.get_sigmas with default options.

Each schedule maps (steps, sigma_min, sigma_max, denoiser) to a descending CPU tensor of sigmas. karras,
exponential and polyexponential are k-diffusion's get_sigmas_* formulas; the rest are A1111's own. Most give
steps + 1 sigmas ending in 0; two keep A1111's quirks: ``kl_optimal`` ends at sigma_min instead of 0, and
``ddim`` takes every (1000 // steps)-th table sigma, which is more than ``steps`` when 1000 is not a multiple.
Arithmetic follows the references' dtypes and order (float32 tensors, float64 python/numpy scalars) so the
numbers are the same, not merely close.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from scipy import stats
from torch import Tensor


class Denoiser(Protocol):
    sigmas: Tensor

    def get_sigmas(self, n: int | None = None) -> Tensor: ...
    def sigma_to_t(self, sigma: Tensor) -> Tensor: ...
    def t_to_sigma(self, t: Tensor) -> Tensor: ...


ScheduleFn = Callable[[int, float, float, Denoiser], Tensor]

KARRAS_RHO = 7.0
POLYEXPONENTIAL_RHO = 1.0
# A1111 options beta_dist_alpha / beta_dist_beta, at their defaults
BETA_ALPHA = 0.6
BETA_BETA = 0.6
# NVIDIA's Align Your Steps 10-step sigmas for SD 1.5; A1111 uses them for every model that is not SDXL
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


def _with_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def uniform(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    return denoiser.get_sigmas(n).cpu()


def karras(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser, rho: float = KARRAS_RHO) -> Tensor:
    """Karras et al. (2022): evenly spaced in sigma ** (1 / rho)."""
    ramp = torch.linspace(0, 1, n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((top + ramp * (bottom - top)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """Evenly spaced in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser,
                    rho: float = POLYEXPONENTIAL_RHO) -> Tensor:
    """Log sigma as a polynomial (power rho) of a ramp from 1 to 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return _with_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def _timesteps_between(denoiser: Denoiser, sigma_min: float, sigma_max: float, count: int) -> Tensor:
    start = denoiser.sigma_to_t(torch.tensor(sigma_max))
    end = denoiser.sigma_to_t(torch.tensor(sigma_min))
    return torch.linspace(start.item(), end.item(), count)


def _sigmas_at(denoiser: Denoiser, timesteps: Tensor) -> Tensor:
    # one timestep at a time, as A1111 does: a 0-d exp may round differently from the vectorised one
    sigmas = [float(denoiser.t_to_sigma(t)) for t in timesteps]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """n evenly spaced timesteps from sigma_max's, stopping one interval short of sigma_min's."""
    return _sigmas_at(denoiser, _timesteps_between(denoiser, sigma_min, sigma_max, n + 1)[:-1])


def normal(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """n evenly spaced timesteps from sigma_max's to sigma_min's, both included."""
    return _sigmas_at(denoiser, _timesteps_between(denoiser, sigma_min, sigma_max, n))


def kl_optimal(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """Evenly spaced in arctan(sigma); n + 1 values ending at sigma_min (no trailing 0, as in A1111)."""
    atan_min = torch.arctan(torch.tensor(sigma_min))
    atan_max = torch.arctan(torch.tensor(sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * atan_min + (1.0 - frac) * atan_max)


def align_your_steps(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """NVIDIA's SD 1.5 table; other lengths interpolate it linearly in log sigma.

    A1111 compares n with the table's 11 entries, so n == 11 uses the table as is and n == 10 is interpolated.
    """
    if n == len(AYS_SD15):
        return torch.tensor(list(AYS_SD15) + [0.0], dtype=torch.float32)
    log_ascending = np.log(np.array(AYS_SD15[::-1]))
    resampled = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(AYS_SD15)), log_ascending)
    return torch.tensor(np.append(np.exp(resampled)[::-1], 0.0), dtype=torch.float32)


def simple(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """Every (len / n)-th table sigma from the top, the index truncated."""
    stride = len(denoiser.sigmas) / n
    sigmas = [float(denoiser.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def ddim(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser) -> Tensor:
    """Table sigmas at 1, 1 + s, 1 + 2s, ... (s = len // n), reversed; ceil(999 / s) of them, not always n."""
    stride = max(len(denoiser.sigmas) // n, 1)
    sigmas = [float(denoiser.sigmas[i]) for i in range(1, len(denoiser.sigmas), stride)]
    return torch.tensor(sigmas[::-1] + [0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, denoiser: Denoiser,
         alpha: float = BETA_ALPHA, beta_: float = BETA_BETA) -> Tensor:
    """Lee et al. (2024): the Beta(alpha, beta) quantiles of a ramp from 1 to 0, mapped onto [sigma_min, sigma_max]."""
    quantiles = [stats.beta.ppf(q, alpha, beta_) for q in 1 - np.linspace(0, 1, n)]
    sigmas = [sigma_min + q * (sigma_max - sigma_min) for q in quantiles]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


# The schedule functions by A1111's API name; the names, labels and aliases are the catalogue's
# (app/engine/schedulers.py SCHEDULE_TYPES). "automatic" has no function of its own.
FUNCTIONS: dict[str, ScheduleFn] = {
    "uniform": uniform, "karras": karras, "exponential": exponential, "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform, "kl_optimal": kl_optimal, "align_your_steps": align_your_steps, "simple": simple,
    "normal": normal, "ddim": ddim, "beta": beta,
}


def get_sigmas(schedule: str | None, steps: int, denoiser: Denoiser, *, discard_next_to_last_sigma: bool) -> Tensor:
    """The sampler's sigmas on the CPU: A1111 KDiffusionSampler.get_sigmas with default options.

    ``schedule`` is the one that runs (Automatic already resolved to the sampler's own, see
    ``SchedulerChoice.resolved_schedule``); None means the denoiser's own ``get_sigmas``. sigma_min and
    sigma_max are the ends of the denoiser's table. A discarding sampler (DPM2, DPM2 a, DPM++ 3M SDE) gets one
    step more and then loses the next-to-last sigma, so it still runs ``steps`` steps.
    """
    if discard_next_to_last_sigma:
        steps += 1
    if schedule is None:
        sigmas = denoiser.get_sigmas(steps)
    else:
        sigmas = FUNCTIONS[schedule](steps, denoiser.sigmas[0].item(), denoiser.sigmas[-1].item(), denoiser)
    if discard_next_to_last_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.cpu()
