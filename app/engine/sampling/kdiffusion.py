"""The k-diffusion samplers A1111 1.10 offers, reproducing k_diffusion.sampling 0.1.1.post1 step for step
(sample_euler ... sample_dpmpp_3m_sde, same signatures, defaults and callback dicts), plus A1111's
`restart_sampler` (modules/sd_samplers_extra.py) and `sample_lcm` (modules/sd_samplers_lcm.py).

Noise: A1111 replaces every torch.randn_like inside k-diffusion by its own generator. Here every random draw,
including the churn noise of euler/heun/dpm_2 and Restart's re-noising, goes through one
`noise_sampler(sigma, sigma_next)` argument, called exactly where and as often as k-diffusion draws (euler/heun/dpm_2
draw on every step even without churn). None means torch.randn_like(x); for the SDE samplers None means
k-diffusion's default, an unseeded Brownian tree.

`disable` (k-diffusion's tqdm switch) is accepted for signature parity; progress is reported through `callback`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchsde
from scipy import integrate
from torch import Tensor

from app.engine.sampling.dpm_solver import (
    Callback,
    Denoiser,
    NoiseSampler,
    get_ancestral_step,
    noise_or_randn,
    sample_dpm_adaptive,
    sample_dpm_fast,
)

__all__ = [
    "get_ancestral_step", "to_d", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2",
    "sample_dpm_2_ancestral", "sample_lms", "sample_dpm_fast", "sample_dpm_adaptive", "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "restart_sampler",
    "sample_lcm",
]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative dx/dsigma for a denoiser output."""
    return (x - denoised) / sigma[(...,) + (None,) * (x.ndim - sigma.ndim)]


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _brownian(x: Tensor, sigmas: Tensor) -> NoiseSampler:
    """k-diffusion's BrownianTreeNoiseSampler default: one tree over [smallest positive sigma, sigma_max] whose
    entropy comes from torch's global generator, so a manual_seed makes it repeatable."""
    t0, t1 = sigmas[sigmas > 0].min(), sigmas.max()
    entropy = torch.randint(0, 2**63 - 1, []).item()
    tree = torchsde.BrownianTree(t0, torch.zeros_like(x), t1, entropy=entropy)

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        return tree(lo, hi) * sign / (hi - lo).abs().sqrt()

    return sample


def _report(callback: Callback | None, x: Tensor, i: int, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _karras(n: int, sigma_min: float, sigma_max: float, device: torch.device, rho: float = 7.0) -> Tensor:
    """k-diffusion's get_sigmas_karras (n levels plus a trailing 0), bit for bit: Restart depends on exact equality."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    levels = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([levels, levels.new_zeros([1])]).to(device)


def _churn(x: Tensor, sigmas: Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
           noise: NoiseSampler) -> tuple[Tensor, Tensor]:
    """Karras et al. Algorithm 2's churn: raise sigma_i to sigma_hat by adding noise. The draw happens every step."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = noise(sigma, sigmas[i + 1]) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# A step from sigma to sigma_next given the denoiser output at sigma: (model, x, denoised, sigma, sigma_next, s_in,
# extra_args) -> x. The samplers below that differ only in this step share one loop.
Step = Callable[[Denoiser, Tensor, Tensor, Tensor, Tensor, Tensor, dict], Tensor]


def _euler(model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, s_in: Tensor,
           extra_args: dict) -> Tensor:
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma)


def _heun(model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, s_in: Tensor,
          extra_args: dict) -> Tensor:
    """Heun's step (Euler when it lands on sigma 0)."""
    if sigma_next == 0:
        return _euler(model, x, denoised, sigma, sigma_next, s_in, extra_args)
    d = to_d(x, sigma, denoised)
    x_2 = x + d * (sigma_next - sigma)
    d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
    return x + (d + d_2) / 2 * (sigma_next - sigma)


def _dpm2(model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, s_in: Tensor,
          extra_args: dict) -> Tensor:
    """DPM-Solver-2 style step (Euler when it lands on sigma 0): derivative at the log-space midpoint sigma,
    applied over the whole step."""
    if sigma_next == 0:
        return _euler(model, x, denoised, sigma, sigma_next, s_in, extra_args)
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    x_2 = x + to_d(x, sigma, denoised) * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_next - sigma)


def _dpmpp_2s(model: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, s_in: Tensor,
              extra_args: dict) -> Tensor:
    """DPM-Solver++(2S) (Euler when it lands on sigma 0): one data-prediction evaluation at the log-sigma midpoint."""
    if sigma_next == 0:
        return _euler(model, x, denoised, sigma, sigma_next, s_in, extra_args)
    t, t_next = _t(sigma), _t(sigma_next)
    h = t_next - t
    s = t + 0.5 * h
    x_mid = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
    denoised_mid = model(x_mid, _sigma(s) * s_in, **extra_args)
    return (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_mid


def _churned_sampler(name: str, step: Step) -> Callable[..., Tensor]:
    """k-diffusion's sample_euler / sample_heun / sample_dpm_2: the same loop (churn, denoise at sigma_hat, report)
    around a different step from sigma_hat to the next sigma."""
    @torch.no_grad()
    def sample(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None, s_churn: float = 0.0,
               s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
        extra_args = extra_args or {}
        noise = noise_or_randn(x, noise_sampler)
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise)
            denoised = model(x, sigma_hat * s_in, **extra_args)
            _report(callback, x, i, sigmas[i], sigma_hat, denoised)
            x = step(model, x, denoised, sigma_hat, sigmas[i + 1], s_in, extra_args)
        return x

    sample.__name__ = sample.__qualname__ = name
    return sample


def _ancestral_sampler(name: str, step: Step, noise_after_euler: bool = True) -> Callable[..., Tensor]:
    """k-diffusion's sample_euler_ancestral / sample_dpm_2_ancestral / sample_dpmpp_2s_ancestral: the same loop
    (denoise, split the step into sigma_down and sigma_up, step down, add sigma_up of noise) around a different step.
    noise_after_euler=False: dpm_2_ancestral adds no noise on a step where sigma_down is 0 (its Euler fallback),
    even when sigma_next is not."""
    @torch.no_grad()
    def sample(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
               s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
        extra_args = extra_args or {}
        noise = noise_or_randn(x, noise_sampler)
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in, **extra_args)
            sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
            _report(callback, x, i, sigmas[i], sigmas[i], denoised)
            x = step(model, x, denoised, sigmas[i], sigma_down, s_in, extra_args)
            if sigmas[i + 1] > 0 and (noise_after_euler or sigma_down != 0):
                x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        return x

    sample.__name__ = sample.__qualname__ = name
    return sample


sample_euler = _churned_sampler("sample_euler", _euler)
sample_heun = _churned_sampler("sample_heun", _heun)
sample_dpm_2 = _churned_sampler("sample_dpm_2", _dpm2)
sample_euler_ancestral = _ancestral_sampler("sample_euler_ancestral", _euler)
sample_dpm_2_ancestral = _ancestral_sampler("sample_dpm_2_ancestral", _dpm2, noise_after_euler=False)
sample_dpmpp_2s_ancestral = _ancestral_sampler("sample_dpmpp_2s_ancestral", _dpmpp_2s)


def _lms_coefficient(order: int, sigmas: Sequence[float], i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial through the last `order` sigmas."""
    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return prod

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None, order: int = 4) -> Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    nodes = sigmas.detach().cpu().numpy()  # float32 values, as k-diffusion integrates them
    history: list[Tensor] = []  # derivatives, oldest first, at most `order`
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        history = (history + [to_d(x, sigmas[i], denoised)])[-order:]
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur = min(i + 1, order)
        coeffs = [_lms_coefficient(cur, nodes, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history)))
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                     callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, r: float = 1 / 2) -> Tensor:
    extra_args = extra_args or {}
    noise = noise_sampler if noise_sampler is not None else _brownian(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # first stage: ancestral step from t to the intermediate time s
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_down = _t(sd)
        x_2 = (_sigma(s_down) / _sigma(t)) * x - (t - s_down).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s) * s_in, **extra_args)
        # second stage: ancestral step over the whole interval with the blended denoised estimate
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_down = _t(sd)
        blended = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_down) / _sigma(t)) * x - (t - t_down).expm1() * blended
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> Tensor:
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        estimate = denoised
        if previous is not None and sigmas[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        solver_type: str = "midpoint") -> Tensor:
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = extra_args or {}
    noise = noise_sampler if noise_sampler is not None else _brownian(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    last: tuple[Tensor, Tensor] | None = None  # (denoised, h) of the previous step
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = _t(sigmas[i + 1]) - _t(sigmas[i])
        eta_h = eta * h
        decay = (-h - eta_h).expm1().neg()
        x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + decay * denoised
        if last is not None:
            previous, h_last = last
            r = h_last / h
            if solver_type == "heun":
                x = x + (decay / (-h - eta_h) + 1) * (1 / r) * (denoised - previous)
            else:
                x = x + 0.5 * decay * (1 / r) * (denoised - previous)
        if eta:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        last = (denoised, h)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    extra_args = extra_args or {}
    noise = noise_sampler if noise_sampler is not None else _brownian(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    history: list[tuple[Tensor, Tensor]] = []  # (denoised, h) of the previous steps, newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = _t(sigmas[i + 1]) - _t(sigmas[i])
        h_eta = h * (eta + 1)
        x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        if len(history) == 2:
            (denoised_1, h_1), (denoised_2, h_2) = history
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif history:
            denoised_1, h_1 = history[0]
            x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
        if eta:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        history = [(denoised, h)] + history[:1]
    return x


def _restart_plan(sigmas: Tensor, restart_list: dict | None) -> list[tuple[Tensor, Tensor]]:
    """A1111's Restart schedule: the (sigma, sigma_next) Heun steps, restart segments included.

    Without a restart_list and with 20+ steps, A1111 rebuilds a shorter Karras ladder over the same range and
    restarts once from sigma~0.1 up to sigma~2 with 9 steps (36+ steps: twice, steps//4 each), so the total
    number of Heun steps stays the requested one.
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = _karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), sigmas.device)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    at_index = {int((sigmas - level).abs().argmin()): plan for level, plan in restart_list.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in at_index:
            continue
        n, times, sigma_top = at_index[i + 1]
        top = int((sigmas - sigma_top).abs().argmin())
        if top < i + 1:
            ladder = _karras(n, sigmas[i + 1].item(), sigmas[top].item(), sigmas.device)[:-1]
            pairs.extend(list(zip(ladder[:-1], ladder[1:])) * times)
    return pairs


@torch.no_grad()
def restart_sampler(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None, s_noise: float = 1.0,
                    restart_list: dict | None = None, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """A1111's Restart sampler (Xu et al. 2023). restart_list maps {sigma: [steps, times, sigma_max]}; callback's
    'sigma' is the step's target level and 'sigma_hat' its start level, 'i' counts Heun steps. Each jump back up
    draws noise_sampler(last_sigma, sigma)."""
    extra_args = extra_args or {}
    noise = noise_or_randn(x, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    last_sigma = None
    for step, (sigma, sigma_next) in enumerate(_restart_plan(sigmas, restart_list)):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, step, sigma_next, sigma, denoised)
        x = _heun(model, x, denoised, sigma, sigma_next, s_in, extra_args)
        last_sigma = sigma_next
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
    """A1111's LCM sampler: jump to the denoised estimate, then re-noise to the next sigma."""
    extra_args = extra_args or {}
    noise = noise_or_randn(x, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x
