"""app.engine.sampling.timesteps / unipc against A1111 1.10's rules (sd_samplers_timesteps*.py, uni_pc.py).

The references here are independent float64 computations of the published update formulas (DDIM, PLMS,
UniPC-bh with phi functions from their series) on a smooth toy eps model with a CFG-like cond/uncond split.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.engine.sampling import timesteps as ts_mod
from app.engine.sampling.timesteps import (
    TimestepsDenoiser,
    ddim,
    ddim_cfgpp,
    get_timesteps,
    img2img_steps,
    plms,
    pred_x0,
    sample_img2img,
    sample_txt2img,
    unipc,
)


def ldm_alphas_cumprod(dtype=torch.float32):
    """SD's schedule as LDM builds it: scaled-linear betas and the cumulative product in float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).to(dtype)


AC = ldm_alphas_cumprod()
AC64 = AC.double()


def eps_parts(x, t):
    """Smooth cond / uncond eps of x and the (possibly fractional) timestep t of shape (batch,)."""
    tt = t.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1)) / 1000
    cond = 0.6 * torch.tanh(x * (1 + tt)) + 0.3 * torch.sin(3 * tt + x)
    uncond = 0.5 * torch.tanh(0.8 * x) + 0.2 * tt
    return cond, uncond


class ToyModel:
    """Stands for the lead's CFG denoiser: eps after CFG, last_noise_uncond on request, every call recorded."""

    def __init__(self, cond_scale=7.0):
        self.alphas_cumprod = AC
        self.cond_scale = cond_scale
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.calls = []

    def __call__(self, x, t, **kwargs):
        self.calls.append((x.clone(), t.clone(), kwargs))
        cond, uncond = eps_parts(x, t)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = uncond.clone()
        return uncond + (cond - uncond) * (self.cond_scale * self.cond_scale_multiplier)

    def call_times(self):
        return [float(t[0]) for _, t, _ in self.calls]


def ref_eps(x, t, scale):
    cond, uncond = eps_parts(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))
    return uncond + (cond - uncond) * scale, uncond


def start_latent(seed=0):
    return torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- timesteps


@pytest.mark.parametrize("steps, expected", [
    (20, list(range(1, 1000, 50))),
    (10, list(range(1, 1000, 100))),
    (7, [1, 143, 285, 427, 569, 711, 853, 995]),  # 1000 // 7 = 142 leaves an 8th entry
    (3, [1, 334, 667, 999]),  # 1000 + 1 clipped to 999
    (1, [1]),
])
def test_get_timesteps_follows_a1111_range(steps, expected):
    got = get_timesteps(steps)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


def test_get_timesteps_clips_to_999_and_discards_penultimate_by_one_more_step():
    assert get_timesteps(1000).tolist() == list(range(1, 1000)) + [999]
    assert get_timesteps(19, discard_next_to_last_sigma=True).tolist() == get_timesteps(20).tolist()


# ---------------------------------------------------------------- DDIM


def ref_ddim(x, timesteps, eta=0.0, noises=None, cfgpp=False, cond_scale=7.0):
    """DDIM (Song et al. eq. 12) from the last timestep down to timesteps[0], in float64."""
    x = x.double()
    t_list = timesteps.tolist()
    for k, j in enumerate(range(len(t_list) - 1, 0, -1)):
        a_t, a_prev = AC64[t_list[j]], AC64[t_list[j - 1]]
        eps, uncond = ref_eps(x, t_list[j], cond_scale / 12.5 if cfgpp else cond_scale)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
        x0 = (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - sigma**2) * (uncond if cfgpp else eps)
        if noises is not None:
            x = x + sigma * noises[k].double()
    return x


def test_ddim_calls_and_result_match_the_formula():
    model, x = ToyModel(), start_latent()
    steps = []
    out = ddim(model, x.clone(), get_timesteps(20), extra_args={"cond": "c"}, callback=steps.append)
    # A1111 loops len(timesteps) - 1 times: 19 calls for 20 steps, t = 951 ... 51 (1 is never evaluated)
    assert model.call_times() == [float(t) for t in range(951, 50, -50)]
    assert all(kw == {"cond": "c"} for _, _, kw in model.calls)
    assert [s["i"] for s in steps] == list(range(19)) and steps[-1]["x"] is not None
    torch.testing.assert_close(out.double(), ref_ddim(x, get_timesteps(20)), atol=1e-4, rtol=1e-4)
    # the callback's denoised is the x0 predicted from the last evaluated step
    x_in, t_in, _ = model.calls[-1]
    a = AC64[51]
    eps, _ = ref_eps(x_in.double(), 51, 7.0)
    torch.testing.assert_close(steps[-1]["denoised"].double(), (x_in - (1 - a).sqrt() * eps) / a.sqrt(), atol=1e-5, rtol=1e-5)


def test_ddim_eta_zero_ignores_the_noise_but_still_draws_it():
    x = start_latent()
    draws = []

    def loud(t, t_prev):
        draws.append((t, t_prev))
        return torch.full_like(x, 1e3)

    quiet = ddim(ToyModel(), x.clone(), get_timesteps(10))
    noisy = ddim(ToyModel(), x.clone(), get_timesteps(10), noise_sampler=loud)
    assert torch.equal(quiet, noisy)
    assert draws == [(901 - 100 * k, 801 - 100 * k) for k in range(9)]


def test_ddim_eta_draws_noise_with_the_ddim_sigma():
    x = start_latent()
    noises = [torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + k)) for k in range(9)]
    it = iter(noises)
    out = ddim(ToyModel(), x.clone(), get_timesteps(10), eta=0.7, noise_sampler=lambda s, sn: next(it))
    torch.testing.assert_close(out.double(), ref_ddim(x, get_timesteps(10), eta=0.7, noises=noises), atol=1e-4, rtol=1e-4)

    class ZeroEps(ToyModel):
        def __call__(self, x, t, **kwargs):
            return torch.zeros_like(x)

    # with eps = 0 a single step 51 -> 1 is sqrt(a_prev / a_t) x + sigma * noise, sigma = sqrt(1-a')/sqrt(1-a) sqrt(1-a/a')
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    one = ddim(ZeroEps(), x.clone(), torch.tensor([1, 51]), eta=1.0, noise_sampler=lambda s, sn: noise)
    a_t, a_prev = AC64[51], AC64[1]
    sigma = torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    torch.testing.assert_close((one.double() - torch.sqrt(a_prev / a_t) * x.double()) / noise.double(),
                               torch.full(x.shape, float(sigma), dtype=torch.float64), atol=1e-4, rtol=1e-4)


def test_ddim_cfgpp_uses_the_uncond_direction_and_cfg_over_12_5():
    model, x = ToyModel(cond_scale=9.0), start_latent()
    out = ddim_cfgpp(model, x.clone(), get_timesteps(10))
    assert model.cond_scale_multiplier == pytest.approx(1 / 12.5) and model.need_last_noise_uncond is True
    assert len(model.calls) == 9
    expected = ref_ddim(x, get_timesteps(10), cfgpp=True, cond_scale=9.0)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out.double(), ref_ddim(x, get_timesteps(10), cond_scale=9.0 / 12.5), atol=1e-3)


# ---------------------------------------------------------------- PLMS


def ref_plms(x, timesteps, cond_scale=7.0):
    """PLMS (Liu et al. 2022): improved-Euler warm-up, then Adams-Bashforth 2, 3, 4 on eps, in float64."""
    x = x.double()
    t_list = timesteps.tolist()
    history = []

    def move(x, eps, t, t_prev):
        a_t, a_prev = AC64[t], AC64[t_prev]
        return torch.sqrt(a_prev) * (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t) + torch.sqrt(1 - a_prev) * eps

    for j in range(len(t_list) - 1, 0, -1):
        t, t_prev = t_list[j], t_list[j - 1]
        eps, _ = ref_eps(x, t, cond_scale)
        ab = {1: [3 / 2, -1 / 2], 2: [23 / 12, -16 / 12, 5 / 12], 3: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
        if not history:
            eps_next, _ = ref_eps(move(x, eps, t, t_prev), t_prev, cond_scale)
            eps_prime = (eps + eps_next) / 2
        else:
            coeffs = ab[len(history)]
            eps_prime = sum(c * e for c, e in zip(coeffs, [eps] + history[::-1]))
        x = move(x, eps_prime, t, t_prev)
        history = (history + [eps])[-3:]
    return x


def test_plms_warm_up_and_multistep_match_the_formula():
    model, x = ToyModel(), start_latent()
    out = plms(model, x.clone(), get_timesteps(20))
    # 19 steps, the first one evaluating twice: len(timesteps) calls
    assert len(model.calls) == 20
    assert model.call_times()[:3] == [951.0, 901.0, 901.0]
    # the second call is at the DDIM (eta 0) prediction from the first eps
    a_t, a_prev = AC64[951], AC64[901]
    eps0, _ = ref_eps(x.double(), 951, 7.0)
    euler = torch.sqrt(a_prev) * (x.double() - torch.sqrt(1 - a_t) * eps0) / torch.sqrt(a_t) + torch.sqrt(1 - a_prev) * eps0
    torch.testing.assert_close(model.calls[1][0].double(), euler, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_plms(x, get_timesteps(20)), atol=1e-4, rtol=1e-4)


def test_plms_first_step_is_the_eps_average():
    x = start_latent()
    out = plms(ToyModel(), x.clone(), torch.tensor([1, 501]))
    torch.testing.assert_close(out.double(), ref_plms(x, torch.tensor([1, 501])), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- UniPC


def phi(k, z):
    """phi_k(z) = sum_j z^j / (j + k)!"""
    return sum(z**j / math.factorial(j + k) for j in range(60))


def ref_unipc(x, steps, order=3, variant="bh1", t_start=1.0, cond_scale=7.0):
    """UniPC-bh (Zhao et al. 2023, alg. with B(h) = h or e^h - 1) on data prediction, in float64.

    Time grid uniform in t from t_start to 1/N, log alpha piecewise linear on the knots (n + 1) / N; the model gets
    (t - 1/N) * 1000. Warm-up orders 1..order-1, lower order at the end, no corrector after the last step.
    """
    n_train = 1000
    knots = np.arange(1, n_train + 1) / n_train
    log_alpha = 0.5 * np.log(AC64.numpy())

    def lmc(t):
        return float(np.interp(t, knots, log_alpha))

    def alpha(t):
        return math.exp(lmc(t))

    def sigma(t):
        return math.sqrt(1 - math.exp(2 * lmc(t)))

    def lam(t):
        return math.log(alpha(t)) - math.log(sigma(t))

    def data(x, t):
        eps, _ = ref_eps(x, (t - 1 / n_train) * 1000, cond_scale)
        return (x - sigma(t) * eps) / alpha(t)

    times = np.linspace(t_start, 1 / n_train, steps + 1)
    x = x.double()
    hist = [(times[0], data(x, times[0]))]
    for step in range(1, steps + 1):
        t = times[step]
        p = step if step < order else min(order, steps + 1 - step)
        s, m_s = hist[-1]
        h = lam(t) - lam(s)
        r = [(lam(hist[-1 - k][0]) - lam(s)) / h for k in range(1, p)]
        d = [(hist[-1 - k][1] - m_s) / r[k - 1] for k in range(1, p)]
        z = -h
        b_h = z if variant == "bh1" else math.expm1(z)
        big_r = np.array([[rk ** (i - 1) for rk in r + [1.0]] for i in range(1, p + 1)])
        b = np.array([math.factorial(i) * z * phi(i + 1, z) / b_h for i in range(1, p + 1)])
        x_lin = sigma(t) / sigma(s) * x - alpha(t) * math.expm1(z) * m_s
        x_pred = x_lin
        if p >= 2:
            rho_p = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1])
            x_pred = x_lin - alpha(t) * b_h * sum(c * dk for c, dk in zip(rho_p, d))
        if step == steps:
            return x_pred
        m_t = data(x_pred, t)
        rho_c = [0.5] if p == 1 else np.linalg.solve(big_r, b)
        corr = sum(c * dk for c, dk in zip(rho_c[:-1], d)) + rho_c[-1] * (m_t - m_s)
        x = x_lin - alpha(t) * b_h * corr
        hist = (hist + [(t, m_t)])[-order:]
    return x


@pytest.mark.parametrize("steps", [3, 4, 5, 8])
def test_unipc_matches_the_bh1_algorithm(steps):
    model, x = ToyModel(), start_latent()
    got = unipc(model, x.clone(), get_timesteps(steps))
    n = len(get_timesteps(steps))  # UniPC runs len(timesteps) steps: 8 -> 8, but 7 would run 8
    assert len(model.calls) == n
    expected_t = [(t - 0.001) * 1000 for t in np.linspace(1.0, 0.001, n + 1)[:n]]
    assert model.call_times() == pytest.approx(expected_t, abs=1e-3)
    torch.testing.assert_close(got.double(), ref_unipc(x, n), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("steps, variant, order, img2img", [
    (3, "bh1", 3, False), (7, "bh1", 3, False), (20, "bh1", 3, False), (6, "bh2", 3, False),
    (5, "bh1", 2, False), (5, "bh2", 1, False), (20, "bh1", 3, True),
])
def test_unipc_in_float64_equals_the_algorithm_to_rounding(steps, variant, order, img2img):
    """In float32 the 1 / r_k divisions amplify rounding to ~1e-4; in float64 any algorithmic slip would show."""
    keep = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, x = ToyModel(), start_latent().double()
        model.alphas_cumprod = AC64
        timesteps = get_timesteps(steps)[:15] if img2img else get_timesteps(steps)
        got = unipc(model, x.clone(), timesteps, is_img2img=img2img, variant=variant, order=order)
        t_start = 0.702 if img2img else 1.0
        expected = ref_unipc(x, len(timesteps), order=order, variant=variant, t_start=t_start)
    finally:
        torch.set_default_dtype(keep)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_unipc_bh2_and_other_orders_match_and_differ_from_bh1():
    x = start_latent()
    assert len(get_timesteps(6)) == 7  # 1000 // 6 = 166: UniPC runs 7 steps
    bh2 = unipc(ToyModel(), x.clone(), get_timesteps(6), variant="bh2")
    torch.testing.assert_close(bh2.double(), ref_unipc(x, 7, variant="bh2"), atol=1e-3, rtol=1e-3)
    assert not torch.allclose(bh2, unipc(ToyModel(), x.clone(), get_timesteps(6)), atol=1e-2)
    for order in (1, 2):
        got = unipc(ToyModel(), x.clone(), get_timesteps(5), order=order)
        torch.testing.assert_close(got.double(), ref_unipc(x, 5, order=order), atol=1e-3, rtol=1e-3)


def test_unipc_single_first_order_step_is_a_ddim_step():
    model, x = ToyModel(), start_latent()
    got = unipc(model, x.clone(), get_timesteps(1), order=1)
    assert len(model.calls) == 1
    # t = 1 -> 1/N: alpha_s^2 = a[999], alpha_t^2 = a[0]; DDIM: alpha_t x0 + sigma_t eps
    eps, _ = ref_eps(x.double(), 999.0, 7.0)
    a_s, a_t = AC64[999], AC64[0]
    x0 = (x.double() - torch.sqrt(1 - a_s) * eps) / torch.sqrt(a_s)
    torch.testing.assert_close(got.double(), torch.sqrt(a_t) * x0 + torch.sqrt(1 - a_t) * eps, atol=1e-4, rtol=1e-4)


def test_unipc_callbacks_and_too_few_steps():
    steps = []
    unipc(ToyModel(), start_latent(), get_timesteps(5), callback=steps.append)
    assert [s["i"] for s in steps] == [0, 1, 2, 3, 4]
    assert all(s["denoised"] is not None for s in steps[:-1]) and steps[-1]["denoised"] is None
    with pytest.raises(ValueError):
        unipc(ToyModel(), start_latent(), get_timesteps(2))


def test_unipc_img2img_starts_after_the_last_timestep():
    model, x = ToyModel(), start_latent()
    timesteps = get_timesteps(20)[:15]  # ... 701
    got = unipc(model, x.clone(), timesteps, is_img2img=True)
    assert len(model.calls) == 15
    assert model.call_times()[0] == pytest.approx(701.0, abs=1e-3)
    torch.testing.assert_close(got.double(), ref_unipc(x, 15, t_start=0.702), atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- drivers


UNSET = object()


def recorder(with_eta=False, with_img2img=False):
    """A sampler stand-in with one of A1111's signatures; records what the driver passed explicitly."""
    seen = {}

    def base(x, timesteps, extra_args, **kwargs):
        seen.update(x=x, timesteps=timesteps, extra_args=extra_args, kwargs={k: v for k, v in kwargs.items() if v is not UNSET})
        return x

    if with_eta:
        def func(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=UNSET, noise_sampler=UNSET):
            return base(x, timesteps, extra_args, eta=eta, noise_sampler=noise_sampler)
    elif with_img2img:
        def func(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=UNSET):
            return base(x, timesteps, extra_args, is_img2img=is_img2img)
    else:
        def func(model, x, timesteps, extra_args=None, callback=None, disable=None):
            return base(x, timesteps, extra_args)
    return func, seen


def test_txt2img_driver_passes_eta_only_where_the_signature_takes_it():
    x, ns = start_latent(), (lambda s, sn: None)
    func, seen = recorder(with_eta=True)
    assert sample_txt2img(func, ToyModel(), x, 20, {"cond": 1}, None, 0.3, ns) is x
    assert seen["timesteps"].tolist() == get_timesteps(20).tolist()
    assert seen["kwargs"] == {"eta": 0.3, "noise_sampler": ns} and seen["extra_args"] == {"cond": 1}
    func, seen = recorder()
    sample_txt2img(func, ToyModel(), x, 20, None, None, 0.3, ns)
    assert seen["kwargs"] == {}
    func, seen = recorder(with_img2img=True)
    sample_txt2img(func, ToyModel(), x, 20)
    assert seen["kwargs"] == {}


@pytest.mark.parametrize("steps, strength, fixed, total, t_enc", [
    (20, 0.75, None, 20, 15),
    (20, 1.0, None, 20, 19),  # strength capped at 0.999
    (30, 0.33, None, 30, 9),
    (10, 0.5, 10, 20, 9),  # hires / fixed steps: int(10 / 0.5) steps, t_enc = 10 - 1
    (15, 0.7, 15, 21, 14),
])
def test_img2img_steps_and_start_latent(steps, strength, fixed, total, t_enc):
    assert img2img_steps(steps, strength, fixed) == (total, t_enc)
    init, noise = start_latent(1), start_latent(2)
    func, seen = recorder(with_img2img=True)
    sample_img2img(func, ToyModel(), init, noise, steps, strength, fixed_steps=fixed)
    timesteps = get_timesteps(total)
    assert seen["timesteps"].tolist() == timesteps[:t_enc].tolist()
    assert seen["kwargs"] == {"is_img2img": True}
    a = AC[timesteps[t_enc]]
    torch.testing.assert_close(seen["x"], init * a.sqrt() + noise * (1 - a).sqrt())


def test_img2img_ddim_runs_from_the_step_below_the_noise_level():
    model, init, noise = ToyModel(), start_latent(1), start_latent(2)
    out = sample_img2img(ts_mod.ddim, model, init, noise, 20, 0.75)
    # noise at timesteps[15] = 751, first evaluation at timesteps[14] = 701, 14 calls (A1111's off-by-one)
    assert model.call_times() == [float(t) for t in range(701, 50, -50)]
    a = AC64[751]
    xi = init.double() * a.sqrt() + noise.double() * (1 - a).sqrt()
    torch.testing.assert_close(out.double(), ref_ddim(xi, get_timesteps(20)[:15]), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- eps wrappers


def test_timesteps_denoiser_eps_and_v():
    x = start_latent()
    v = start_latent(5)
    t = torch.tensor([500.7, 20.2])
    seen = []

    def apply_model(x_in, t_in, **kwargs):
        seen.append((t_in, kwargs))
        return v

    assert TimestepsDenoiser(AC, "epsilon", apply_model)(x, t, cond="c") is v
    assert seen[-1][1] == {"cond": "c"}
    eps = TimestepsDenoiser(AC64, "v_prediction", apply_model)(x, t)
    assert torch.equal(seen[-1][0], t)  # the UNet gets the timestep as given
    a = AC64[[500, 20]].reshape(-1, 1, 1, 1)  # indices truncated
    torch.testing.assert_close(eps.double(), a.sqrt() * v.double() + (1 - a).sqrt() * x.double(), atol=1e-6, rtol=1e-6)
    half = TimestepsDenoiser(AC64, "v_prediction", apply_model, buffer_dtype=torch.float16)
    assert half.sqrt_alphas_cumprod.dtype == torch.float16
    torch.testing.assert_close(half(x, t), eps, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError):
        TimestepsDenoiser(AC, "sample", apply_model)
    # the preview latent inverts x = sqrt(a) x0 + sqrt(1 - a) eps
    x0 = start_latent(6)
    noised = a.sqrt().float() * x0 + (1 - a).sqrt().float() * eps
    torch.testing.assert_close(pred_x0(AC, noised, eps, t), x0, atol=1e-5, rtol=1e-5)
