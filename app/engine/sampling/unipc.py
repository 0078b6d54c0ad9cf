"""UniPC multistep solver as A1111 1.10 runs it (modules/models/diffusion/uni_pc/uni_pc.py).

Reproduces NoiseScheduleVP('discrete'), UniPC.multistep_uni_pc_bh_update and UniPC.sample(method="multistep")
with predict_x0=True and no thresholding, the only configuration A1111 uses. The variants are A1111's
uni_pc_variant choices bh1 and bh2 (vary_coeff is not reproduced); skip types time_uniform, time_quadratic, logSNR.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp increasing; beyond the ends it extends the outer segments.

    A point on a knot uses the segment ending there, as uni_pc.interpolate_fn does with its sort.
    """
    idx = torch.searchsorted(xp, x.to(xp.dtype).contiguous()).clamp(1, xp.shape[0] - 1)
    x_lo, x_hi, y_lo, y_hi = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return y_lo + (x - x_lo) * (y_hi - y_lo) / (x_hi - x_lo)


class DiscreteVPSchedule:
    """log(alpha_t) of a discrete model as a function of continuous t, knots at t_n = (n + 1) / N."""

    def __init__(self, alphas_cumprod: Tensor):
        self.total_n = alphas_cumprod.shape[0]
        self.log_alpha = 0.5 * torch.log(alphas_cumprod)
        self.t_knots = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        return _interp(t.reshape(-1), self.t_knots.to(t.device), self.log_alpha.to(t.device))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_mean_coeff(t))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    def lam(self, t: Tensor) -> Tensor:
        """Half log-SNR: log(alpha_t) - log(sigma_t)."""
        lmc = self.log_mean_coeff(t)
        return lmc - 0.5 * torch.log(1.0 - torch.exp(2.0 * lmc))

    def inverse_lam(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1, device=lam.device), -2.0 * lam)
        xp = torch.flip(self.log_alpha.to(lam.device), [0])
        fp = torch.flip(self.t_knots.to(lam.device), [0])
        return _interp(log_alpha.reshape(-1), xp, fp)

    def time_steps(self, skip_type: str, t_start: float, t_end: float, n: int) -> Tensor:
        """The n + 1 continuous times from t_start down to t_end (on the CPU, as UniPC.get_time_steps)."""
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, n + 1)
        if skip_type == "time_quadratic":
            # A1111's img2img start is a float32 tensor, so its square root is taken in float32; the end's in double.
            start = (torch.tensor(t_start, dtype=torch.float32) ** 0.5).item()
            return torch.linspace(start, t_end**0.5, n + 1).pow(2)
        if skip_type == "logSNR":
            lam_start = self.lam(torch.tensor(t_start)).item()
            lam_end = self.lam(torch.tensor(t_end)).item()
            return self.inverse_lam(torch.linspace(lam_start, lam_end, n + 1))
        raise ValueError(f"unsupported UniPC skip type {skip_type!r}")


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - 1))


def _weighted_sum(weights: Tensor, diffs: Tensor) -> Tensor:
    return torch.einsum("k,bk...->b...", weights, diffs)


class UniPCSolver:
    """UniPC-bh with data prediction; `eps_model(x, t_input)` gets A1111's model time (t - 1/N) * 1000."""

    def __init__(self, eps_model: Callable[[Tensor, Tensor], Tensor], schedule: DiscreteVPSchedule,
                 variant: str = "bh1", after_update: Callable[[Tensor, Tensor | None], None] | None = None):
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unsupported UniPC variant {variant!r}")
        self.eps_model = eps_model
        self.ns = schedule
        self.variant = variant
        self.after_update = after_update

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        eps = self.eps_model(x, (t - 1.0 / self.ns.total_n) * 1000.0)
        return (x - _bcast(self.ns.std(t), x) * eps) / _bcast(self.ns.alpha(t), x)

    def update(self, x: Tensor, model_prev: list[Tensor], t_prev: list[Tensor], t: Tensor, order: int,
               use_corrector: bool) -> tuple[Tensor, Tensor | None]:
        """One UniP step to t (order `order` from the newest history), then UniC when use_corrector."""
        ns = self.ns
        lam_s = ns.lam(t_prev[-1])
        m_s = model_prev[-1]
        alpha_t = torch.exp(ns.log_mean_coeff(t))
        h = ns.lam(t) - lam_s

        rks, diffs = [], []
        for i in range(1, order):
            rk = ((ns.lam(t_prev[-(i + 1)]) - lam_s) / h)[0]
            rks.append(rk.item())
            diffs.append((model_prev[-(i + 1)] - m_s) / rk)
        rks_t = torch.tensor(rks + [1.0], device=x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        # rows r_k^(i-1) and right-hand side i! * h*phi_(i+1)(hh) / B(h), built by phi's recurrence
        rows, rhs = [], []
        h_phi = h_phi_1 / hh - 1
        factorial = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            rhs.append((h_phi * factorial / b_h).item())
            factorial *= i + 1
            h_phi = h_phi / hh - 1 / factorial
        r_mat = torch.stack(rows)
        b_vec = torch.tensor(rhs, device=x.device)

        d1s = torch.stack(diffs, dim=1) if diffs else None
        x_lin = _bcast(ns.std(t) / ns.std(t_prev[-1]), x) * x - _bcast(alpha_t * h_phi_1, x) * m_s
        scale = _bcast(alpha_t * b_h, x)
        x_t = x_lin
        if d1s is not None:
            rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            x_t = x_lin - scale * _weighted_sum(rhos_p, d1s)
        if not use_corrector:
            return x_t, None

        rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_mat, b_vec)
        model_t = self.data_prediction(x_t, t)
        corr = rhos_c[-1] * (model_t - m_s)
        if d1s is not None:
            corr = _weighted_sum(rhos_c[:-1], d1s) + corr
        return x_lin - scale * corr, model_t

    def sample(self, x: Tensor, steps: int, t_start: float | None = None, order: int = 3,
               skip_type: str = "time_uniform", lower_order_final: bool = True) -> Tensor:
        """UniPC.sample(method="multistep"): `steps` model calls from t_start (default 1) to 1/N."""
        if steps < order:
            raise ValueError(f"UniPC order {order} needs at least {order} steps, got {steps}")
        t_end = 1.0 / self.ns.total_n
        times = self.ns.time_steps(skip_type, 1.0 if t_start is None else t_start, t_end, steps).to(x.device)
        batch = x.shape[0]

        t_vec = times[0].expand(batch)
        model_prev, t_prev = [self.data_prediction(x, t_vec)], [t_vec]
        for step in range(1, steps + 1):
            t_vec = times[step].expand(batch)
            if step < order:
                step_order = step  # warm-up: the history is not yet long enough
            else:
                step_order = min(order, steps + 1 - step) if lower_order_final else order
            x, model_x = self.update(x, model_prev, t_prev, t_vec, step_order, use_corrector=step < steps)
            if self.after_update is not None:
                self.after_update(x, model_x)
            if step < steps:
                model_prev.append(model_x)
                t_prev.append(t_vec)
                if len(model_prev) > order:
                    model_prev.pop(0)
                    t_prev.pop(0)
        return x
