"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) as k-diffusion 0.1.1.post1 runs it for A1111's "DPM fast" and
"DPM adaptive": k_diffusion.sampling.DPMSolver (fixed-step 1/2/3-order schedule and the embedded 1(2)/2(3)
adaptive pair), PIDStepSizeController and the samplers sample_dpm_fast / sample_dpm_adaptive, plus
get_ancestral_step which the ancestral samplers of kdiffusion.py share.

Time here is t = -log(sigma). Every random draw goes through `noise_sampler(sigma, sigma_next)`, in k-diffusion's
order (the fixed-step solver draws on every step, even with eta=0 where the draw is scaled by 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
Denoiser = Callable[..., Tensor]
Callback = Callable[[dict], None]


def noise_or_randn(x: Tensor, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    """The caller's noise source, else torch.randn_like(x) as k-diffusion's default_noise_sampler."""
    return noise_sampler if noise_sampler is not None else (lambda sigma, sigma_next: torch.randn_like(x))


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor | float]:
    """Split a step sigma_from -> sigma_to into a deterministic step down to sigma_down plus fresh noise sigma_up."""
    if not eta:
        return sigma_to, 0.0
    variance = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = min(sigma_to, eta * variance**0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


class PIDStepSizeController:
    """PID control of the log-sigma step size; a step is accepted when the proposed growth factor is large enough."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float = 1,
                 accept_safety: float = 0.81, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.history: list[float] = []  # inverse errors: current, previous accepted, the one before

    def propose_step(self, error: Tensor | float) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.history:
            self.history = [inv] * 3
        self.history[0] = inv
        raw = self.history[0] ** self.b1 * self.history[1] ** self.b2 * self.history[2] ** self.b3
        factor = 1 + math.atan(raw - 1)  # soft limiter: keeps the growth factor in (1 - pi/2, 1 + pi/2)
        accepted = factor >= self.accept_safety
        if accepted:
            self.history[1:] = self.history[:2]
        self.h *= factor
        return accepted


class DPMSolver:
    """Exponential-integrator steps on the noise prediction eps = (x - denoised) / sigma.

    `eps_cache` dicts let a higher-order step reuse the model evaluations of the lower-order one that shares its
    start point (the adaptive solver runs both on the same step).
    """

    def __init__(self, model: Callable[..., Tensor], extra_args: dict | None = None,
                 info_callback: Callable[[dict], None] | None = None):
        self.model = model
        self.extra_args = extra_args or {}
        self.info_callback = info_callback

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            denoised = self.model(x, self.sigma(t) * x.new_ones([x.shape[0]]), **self.extra_args)
            cache[key] = (x - denoised) / self.sigma(t)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict, r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict, r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        phi_r2 = (r2 * h).expm1() / (r2 * h) - 1
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps - self.sigma(s2) * (r2 / r1) * phi_r2 * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        phi = h.expm1() / h - 1
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * phi * (eps_r2 - eps)

    def _ancestral_target(self, t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
        """Where the deterministic part of an eta>0 step lands (never past t_end) and how much noise restores t_next."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sigma_down))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5

    def fast(self, x: Tensor, t_start: Tensor, t_end: Tensor, nfe: int, eta: float, s_noise: float,
             noise: NoiseSampler) -> Tensor:
        """nfe model calls spread over floor(nfe/3)+1 equal log-sigma steps, third order except the last one(s)."""
        if eta and not t_end > t_start:
            raise ValueError("eta must be 0 for reverse sampling")
        steps = nfe // 3 + 1
        ts = torch.linspace(t_start, t_end, steps + 1, device=x.device)
        orders = [3] * (steps - 2) + [2, 1] if nfe % 3 == 0 else [3] * (steps - 1) + [nfe % 3]
        solvers = {1: self.step_1, 2: self.step_2, 3: self.step_3}
        for i, order in enumerate(orders):
            t, t_next = ts[i], ts[i + 1]
            t_down, sigma_up = self._ancestral_target(t, t_next, t_end, eta)
            cache: dict = {}
            eps = self.eps(cache, "eps", x, t)
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": i, "t": t, "t_up": t, "denoised": x - self.sigma(t) * eps})
            x = solvers[order](x, t, t_down, cache)
            x = x + sigma_up * s_noise * noise(self.sigma(t), self.sigma(t_next))
        return x

    def adaptive(self, x: Tensor, t_start: Tensor, t_end: Tensor, noise: NoiseSampler, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                 icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                 s_noise: float = 1.0) -> tuple[Tensor, dict]:
        """Embedded pair (1 in 2, or 2 with r1=1/3 in 3) whose difference drives the PID step size."""
        if order not in (2, 3):
            raise ValueError("order should be 2 or 3")
        forward = t_end > t_start
        if eta and not forward:
            raise ValueError("eta must be 0 for reverse sampling")
        atol_t, rtol_t = torch.as_tensor(atol), torch.as_tensor(rtol)
        pid = PIDStepSizeController(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff,
                                    1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        s, x_prev = t_start, x
        while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_down, sigma_up = self._ancestral_target(s, t, t_end, eta)
            cache: dict = {}
            denoised = x - self.sigma(s) * self.eps(cache, "eps", x, s)
            if order == 2:
                x_low = self.step_1(x, s, t_down, cache)
                x_high = self.step_2(x, s, t_down, cache)
            else:
                x_low = self.step_2(x, s, t_down, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_down, cache)
            tolerance = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / tolerance) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high + sigma_up * s_noise * noise(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised,
                                    "error": error, "h": pid.h, **info})
        return x, info


def _dpm_info(callback: Callback | None) -> Callback | None:
    if callback is None:
        return None
    sigma = DPMSolver.sigma
    return lambda info: callback({"sigma": sigma(info["t"]), "sigma_hat": sigma(info["t_up"]), **info})


@torch.no_grad()
def sample_dpm_fast(model: Denoiser, x: Tensor, sigma_min: float, sigma_max: float, n: int,
                    extra_args: dict | None = None, callback: Callback | None = None, disable: bool | None = None,
                    eta: float = 0.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = DPMSolver(model, extra_args, _dpm_info(callback))
    t_start, t_end = DPMSolver.t(torch.as_tensor(sigma_max)), DPMSolver.t(torch.as_tensor(sigma_min))
    return solver.fast(x, t_start, t_end, n, eta, s_noise, noise_or_randn(x, noise_sampler))


@torch.no_grad()
def sample_dpm_adaptive(model: Denoiser, x: Tensor, sigma_min: float, sigma_max: float,
                        extra_args: dict | None = None, callback: Callback | None = None,
                        disable: bool | None = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81, eta: float = 0.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None,
                        return_info: bool = False) -> Tensor | tuple[Tensor, dict]:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = DPMSolver(model, extra_args, _dpm_info(callback))
    t_start, t_end = DPMSolver.t(torch.as_tensor(sigma_max)), DPMSolver.t(torch.as_tensor(sigma_min))
    x, info = solver.adaptive(x, t_start, t_end, noise_or_randn(x, noise_sampler), order, rtol, atol, h_init,
                              pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise)
    return (x, info) if return_info else x
