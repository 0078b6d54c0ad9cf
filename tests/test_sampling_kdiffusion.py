"""app.engine.sampling.kdiffusion against k-diffusion 0.1.1.post1 (the release A1111 1.10 pins), and Restart/LCM
against a re-implementation of A1111's sd_samplers_extra.restart_sampler / sd_samplers_lcm.sample_lcm rules.

Both sides sample k-diffusion's own CompVisDenoiser / CompVisVDenoiser around a small deterministic nonlinear fake
UNet with SD 2.x alphas_cumprod. Noise comes from two identical tapes: ours reads its tape through noise_sampler;
k-diffusion reads its tape through a torch hijack (as A1111's TorchHijack does) and through noise_sampler.
"""

from __future__ import annotations

import inspect
import types

import kdiffusion_ref
import pytest
import torch

from app.engine.sampling import kdiffusion as ours

SHAPE = (2, 4, 8, 8)
STEPS = 10


_sampling, _external = kdiffusion_ref.load()
KD = types.SimpleNamespace(sampling=_sampling, external=_external)


class FakeUNet:
    """apply_model(x, t, cond): nonlinear in x and t, mixes channels, so any wrong sigma or step shows."""

    def __init__(self):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.calls = 0

    def apply_model(self, x, t, cond):
        self.calls += 1
        tt = (t.float() / 1000)[:, None, None, None]
        return 0.8 * torch.tanh(x * (1 + tt)) + 0.3 * torch.sin(3 * tt + x.roll(1, dims=1)) + cond * tt


def make_denoiser(prediction: str):
    unet = FakeUNet()
    wrapper = KD.external.CompVisDenoiser if prediction == "eps" else KD.external.CompVisVDenoiser
    return wrapper(unet), unet


class Tape:
    """A deterministic noise source; records each draw's (sigma, sigma_next), or () for a bare randn_like."""

    def __init__(self, seed: int = 1234):
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[tuple] = []

    def _draw(self, args):
        self.calls.append(args)
        return torch.randn(SHAPE, generator=self.gen)

    def randn_like(self, x):
        return self._draw(())

    def noise_sampler(self, sigma, sigma_next):
        return self._draw((float(sigma), float(sigma_next)))


class TorchHijack:
    """What A1111 puts in place of k_diffusion.sampling.torch: randn_like reads the tape, the rest is torch."""

    def __init__(self, tape: Tape):
        self.tape = tape

    def __getattr__(self, item):
        return self.tape.randn_like if item == "randn_like" else getattr(torch, item)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def initial(sigma0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) * sigma0


def extra():
    return {"cond": torch.linspace(-1, 1, SHAPE[0] * SHAPE[1]).reshape(SHAPE[0], SHAPE[1], 1, 1)}


def schedule(denoiser, kind, steps=STEPS):
    if kind == "karras":
        return KD.sampling.get_sigmas_karras(steps, denoiser.sigma_min.item(), denoiser.sigma_max.item())
    return denoiser.get_sigmas(steps)


def run_both(monkeypatch, name, denoiser, x, *args, **kwargs):
    """Run ours and k-diffusion's `name` on identical noise tapes; return results, tapes and callback logs."""
    out = {}
    for side, fn in (("ours", getattr(ours, name)), ("kd", getattr(KD.sampling, name))):
        tape, log = Tape(), []
        kw = dict(kwargs, extra_args=extra(), callback=log.append)
        if "noise_sampler" in inspect.signature(fn).parameters:
            kw["noise_sampler"] = tape.noise_sampler
        with monkeypatch.context() as m:
            if side == "kd":
                m.setattr(KD.sampling, "torch", TorchHijack(tape))
            out[side] = (fn(denoiser, x.clone(), *args, **kw), tape, log)
    return out["ours"], out["kd"]


def assert_same(ours_run, kd_run):
    (x_ours, tape_ours, log_ours), (x_kd, tape_kd, log_kd) = ours_run, kd_run
    if isinstance(x_kd, tuple):
        assert x_ours[1] == x_kd[1]
        x_ours, x_kd = x_ours[0], x_kd[0]
    assert rel_l2(x_ours, x_kd) < 1e-5
    assert len(log_ours) == len(log_kd) > 0
    for a, b in zip(log_ours, log_kd):
        assert a.keys() == b.keys()
        assert a["i"] == b["i"]
        assert torch.allclose(torch.as_tensor(a["sigma"]), torch.as_tensor(b["sigma"]), rtol=1e-6)
        assert torch.allclose(torch.as_tensor(a["sigma_hat"]), torch.as_tensor(b["sigma_hat"]), rtol=1e-6)
    assert len(tape_ours.calls) == len(tape_kd.calls)
    for mine, theirs in zip(tape_ours.calls, tape_kd.calls):
        if theirs:  # k-diffusion called noise_sampler: the arguments must match too
            assert mine == pytest.approx(theirs, rel=1e-6)


CASES = [
    ("sample_euler", {}),
    ("sample_euler", {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 8.0, "s_noise": 1.003}),
    ("sample_euler_ancestral", {}),
    ("sample_euler_ancestral", {"eta": 0.6, "s_noise": 0.9}),
    ("sample_heun", {}),
    ("sample_heun", {"s_churn": 2.0, "s_tmin": 0.3}),
    ("sample_dpm_2", {}),
    ("sample_dpm_2", {"s_churn": 1.5, "s_tmax": 5.0}),
    ("sample_dpm_2_ancestral", {}),
    ("sample_dpm_2_ancestral", {"eta": 0.5}),
    ("sample_lms", {}),
    ("sample_dpmpp_2s_ancestral", {}),
    ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("sample_dpmpp_sde", {}),
    ("sample_dpmpp_sde", {"eta": 0.5, "r": 0.4}),
    ("sample_dpmpp_2m", {}),
    ("sample_dpmpp_2m_sde", {}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}),
    ("sample_dpmpp_3m_sde", {}),
    ("sample_dpmpp_3m_sde", {"eta": 0.5, "s_noise": 1.05}),
]


@pytest.mark.parametrize("kind", ["karras", "plain"])
@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n[7:]}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_kdiffusion(monkeypatch, name, kwargs, kind):
    denoiser, _ = make_denoiser("eps")
    sigmas = schedule(denoiser, kind)
    assert_same(*run_both(monkeypatch, name, denoiser, initial(sigmas[0]), sigmas, **kwargs))


@pytest.mark.parametrize("name", ["sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m", "sample_dpmpp_3m_sde"])
def test_matches_kdiffusion_v_prediction(monkeypatch, name):
    denoiser, _ = make_denoiser("v")
    sigmas = schedule(denoiser, "karras", 7)
    assert_same(*run_both(monkeypatch, name, denoiser, initial(sigmas[0]), sigmas))


@pytest.mark.parametrize("n, kwargs", [(10, {}), (12, {}), (11, {"eta": 0.5, "s_noise": 0.95})])
def test_dpm_fast_matches_kdiffusion(monkeypatch, n, kwargs):
    denoiser, _ = make_denoiser("eps")
    lo, hi = denoiser.sigma_min.item(), denoiser.sigma_max.item()
    assert_same(*run_both(monkeypatch, "sample_dpm_fast", denoiser, initial(hi), lo, hi, n, **kwargs))


@pytest.mark.parametrize("kwargs", [{}, {"order": 2}, {"eta": 0.7}, {"rtol": 0.01, "pcoeff": 0.2, "dcoeff": 0.1}])
def test_dpm_adaptive_matches_kdiffusion(monkeypatch, kwargs):
    denoiser, _ = make_denoiser("eps")
    lo, hi = denoiser.sigma_min.item(), denoiser.sigma_max.item()
    runs = run_both(monkeypatch, "sample_dpm_adaptive", denoiser, initial(hi), lo, hi, return_info=True, **kwargs)
    assert runs[1][0][1]["n_accept"] > 3
    assert_same(*runs)


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde on float32 ends, on both sides
@pytest.mark.parametrize("name", ["sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"])
def test_default_brownian_noise_matches_kdiffusion(name):
    """Without a noise_sampler both sides build an unseeded Brownian tree from torch's global generator."""
    denoiser, _ = make_denoiser("eps")
    sigmas = schedule(denoiser, "karras")
    results = []
    for fn in (getattr(ours, name), getattr(KD.sampling, name)):
        torch.manual_seed(99)
        results.append(fn(denoiser, initial(sigmas[0]), sigmas, extra_args=extra()))
    assert rel_l2(*results) < 1e-5


def test_default_noise_is_randn_like():
    denoiser, _ = make_denoiser("eps")
    sigmas = schedule(denoiser, "karras")
    results = []
    for fn in (ours.sample_euler_ancestral, KD.sampling.sample_euler_ancestral):
        torch.manual_seed(5)
        results.append(fn(denoiser, initial(sigmas[0]), sigmas, extra_args=extra()))
    assert rel_l2(*results) < 1e-6


@pytest.mark.parametrize("ancestral, plain", [("sample_euler_ancestral", "sample_euler"),
                                              ("sample_dpm_2_ancestral", "sample_dpm_2")])
def test_eta_zero_is_the_deterministic_sampler(ancestral, plain):
    denoiser, _ = make_denoiser("eps")
    sigmas = schedule(denoiser, "karras")
    x = initial(sigmas[0])
    a = getattr(ours, ancestral)(denoiser, x, sigmas, extra_args=extra(), eta=0.0)
    b = getattr(ours, plain)(denoiser, x, sigmas, extra_args=extra())
    assert rel_l2(a, b) < 1e-6


def a1111_restart(model, x, sigmas, tape, s_noise=1.0, restart_list=None):
    """A1111 1.10 restart_sampler's rules, restated on k-diffusion's get_sigmas_karras/to_d; returns
    (x, [(sigma_from, sigma_to) per Heun step])."""
    karras, s_in = KD.sampling.get_sigmas_karras, x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            n, times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras(steps - n * times, sigmas[-2].item(), sigmas[0].item())
            restart_list = {0.1: [n + 1, times, 2]}
    nearest = {int(torch.argmin(abs(sigmas - k), dim=0)): v for k, v in restart_list.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in nearest:
            n, times, top = nearest[i + 1]
            j = int(torch.argmin(abs(sigmas - top), dim=0))
            if j < i + 1:
                ladder = karras(n, sigmas[i + 1].item(), sigmas[j].item())[:-1]
                for _ in range(times):
                    plan += list(zip(ladder[:-1], ladder[1:]))
    last = None
    for old, new in plan:
        if last is not None and last < old:
            x = x + tape.randn_like(x) * s_noise * (old**2 - last**2) ** 0.5
        denoised = model(x, old * s_in, **extra())
        d = KD.sampling.to_d(x, old, denoised)
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = KD.sampling.to_d(x_2, new, model(x_2, new * s_in, **extra()))
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x, plan


@pytest.mark.parametrize("steps, restart_list, model_calls", [
    (20, None, 11 * 2 - 1 + 9 * 2),  # 20 - 9 = 11 base Karras steps (last one Euler) + one restart of 9 Heun steps
    (36, None, 18 * 2 - 1 + 2 * 9 * 2),  # from 36 steps: 36 // 4 = 9, restarted twice
    (40, None, 20 * 2 - 1 + 2 * 10 * 2),  # 40 // 4 = 10: 20 base steps + two restarts of 10 Heun steps
    (24, {0.5: [4, 3, 5.0]}, 24 * 2 - 1 + 3 * 3 * 2),  # the given sigmas + three restarts of 3 Heun steps
])
def test_restart_follows_a1111(steps, restart_list, model_calls):
    denoiser, unet = make_denoiser("eps")
    sigmas = schedule(denoiser, "karras", steps)
    x = initial(sigmas[0])
    tape_ref, tape_ours, log = Tape(), Tape(), []
    expected, plan = a1111_restart(denoiser, x, sigmas, tape_ref, 1.01, restart_list)
    unet.calls = 0
    got = ours.restart_sampler(denoiser, x, sigmas, extra_args=extra(), callback=log.append, s_noise=1.01,
                               restart_list=restart_list, noise_sampler=tape_ours.noise_sampler)
    assert unet.calls == model_calls
    assert rel_l2(got, expected) < 1e-5
    assert len(tape_ours.calls) == len(tape_ref.calls) >= 1
    assert [(float(c["sigma_hat"]), float(c["sigma"])) for c in log] == [(float(a), float(b)) for a, b in plan]
    assert [c["i"] for c in log] == list(range(len(plan)))


def test_restart_below_20_steps_is_karras_heun(monkeypatch):
    """Under 20 steps A1111's default restart_list is empty: plain Heun on the given sigmas."""
    denoiser, unet = make_denoiser("eps")
    sigmas = schedule(denoiser, "karras", 12)
    x = initial(sigmas[0])
    heun = KD.sampling.sample_heun(denoiser, x, sigmas, extra_args=extra())
    unet.calls = 0
    got = ours.restart_sampler(denoiser, x, sigmas, extra_args=extra(), noise_sampler=Tape().noise_sampler)
    assert unet.calls == 2 * 12 - 1
    assert rel_l2(got, heun) < 1e-6


def test_lcm_follows_a1111():
    """sample_lcm: x = denoised, then + sigma_next * noise while sigma_next > 0."""
    denoiser, unet = make_denoiser("eps")
    sigmas = schedule(denoiser, "plain", 4)
    x0 = initial(sigmas[0])
    tape_ref, tape_ours, log = Tape(), Tape(), []
    s_in = x0.new_ones([SHAPE[0]])
    expected = x0
    for i in range(len(sigmas) - 1):
        expected = denoiser(expected, sigmas[i] * s_in, **extra()).clone()
        if sigmas[i + 1] > 0:
            expected += sigmas[i + 1] * tape_ref.randn_like(expected)
    unet.calls = 0
    got = ours.sample_lcm(denoiser, x0, sigmas, extra_args=extra(), callback=log.append,
                          noise_sampler=tape_ours.noise_sampler)
    assert unet.calls == 4 and len(log) == 4 and len(tape_ours.calls) == len(tape_ref.calls) == 3
    assert tape_ours.calls[0] == pytest.approx((float(sigmas[0]), float(sigmas[1])))
    assert rel_l2(got, expected) < 1e-6
    assert set(log[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
