"""app.engine.sampling.denoisers and .schedules against k-diffusion 0.1.1.post1 and A1111 1.10's formulas.

k-diffusion's pieces (CompVis denoisers, karras/exponential/polyexponential) must agree bit for bit; A1111's own
schedules are recomputed here in float64 numpy from their published formulas and must agree to float32 precision.
"""
from __future__ import annotations

import kdiffusion_ref
import numpy as np
import pytest
import torch
from scipy import stats

from app.engine.sampling import schedules
from app.engine.sampling.denoisers import DiscreteDenoiser, LCMDenoiser, alphas_cumprod_from_config
from app.engine.sampling.schedules import get_sigmas as sampling_sigmas
from app.engine.schedulers import AUTOMATIC, SCHEDULE_TYPES, find_schedule_type

SD2 = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}
F32 = {"rtol": 2e-6, "atol": 1e-7}


@pytest.fixture(scope="module")
def ac() -> torch.Tensor:
    return alphas_cumprod_from_config(**SD2)


def toy_unet(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A fixed linear map of x that also depends on t and on the conditioning."""
    weight = torch.linspace(-0.5, 0.7, x.shape[1] ** 2).reshape(x.shape[1], x.shape[1])
    mixed = torch.einsum("oc,bchw->bohw", weight, x)
    return mixed * torch.cos(t.float() / 300)[:, None, None, None] + cond[:, :, None, None]


class FakeLDM:
    """What k-diffusion's CompVis wrappers read from an ldm model."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod

    def apply_model(self, x, t, cond):
        return toy_unet(x, t, cond)


def np_sigmas(ac: torch.Tensor) -> np.ndarray:
    a = ac.double().numpy()
    return np.sqrt((1 - a) / a)


# --- alphas_cumprod --------------------------------------------------------------------------------------------

def test_sd2_alphas_cumprod_and_sigma_range(ac):
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    expected = np.cumprod(1 - betas)
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    np.testing.assert_allclose(ac.numpy(), expected, rtol=1e-6)
    sigmas = DiscreteDenoiser(ac, "v_prediction", toy_unet).sigmas
    assert round(sigmas[-1].item(), 4) == 14.6146 and round(sigmas[0].item(), 4) == 0.0292


def test_linear_beta_schedule_and_unknown():
    got = alphas_cumprod_from_config(0.0001, 0.02, 1000, "linear")
    np.testing.assert_allclose(got.numpy(), np.cumprod(1 - np.linspace(0.0001, 0.02, 1000)), rtol=1e-6)
    with pytest.raises(ValueError):
        alphas_cumprod_from_config(0.0001, 0.02, 1000, "squaredcos_cap_v2")


# --- DiscreteDenoiser against k-diffusion ----------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_discrete_denoiser_equals_kdiffusion(ac, prediction):
    _, external = kdiffusion_ref.load()
    wrapper = external.CompVisDenoiser if prediction == "epsilon" else external.CompVisVDenoiser
    ref = wrapper(FakeLDM(ac), quantize=False)
    ours = DiscreteDenoiser(ac, prediction, toy_unet)

    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.log_sigmas, ref.log_sigmas)
    assert torch.equal(ours.sigma_min, ref.sigma_min) and torch.equal(ours.sigma_max, ref.sigma_max)

    gen = torch.Generator().manual_seed(0)
    probe = torch.cat([torch.rand(64, generator=gen) * 16, ref.sigmas[::97], torch.tensor([1e-3, 20.0])])
    assert torch.equal(ours.sigma_to_t(probe), ref.sigma_to_t(probe))
    t = torch.cat([torch.rand(64, generator=gen) * 999, torch.tensor([0.0, 999.0, 500.0])])
    assert torch.equal(ours.t_to_sigma(t), ref.t_to_sigma(t))
    for n in (None, 1, 7, 20, 150):
        assert torch.equal(ours.get_sigmas(n), ref.get_sigmas(n))
    sigma = torch.tensor([14.6, 0.7])
    assert all(torch.equal(a, b) for a, b in zip(ours.get_scalings(sigma), ref.get_scalings(sigma), strict=True))

    x = torch.randn(2, 4, 8, 8, generator=gen) * 3
    cond = torch.randn(2, 4, generator=gen)
    assert torch.equal(ours(x, sigma, cond=cond), ref(x, sigma, cond=cond))


def test_denoiser_passes_fractional_t_and_kwargs(ac):
    seen = {}

    def unet(x, t, **kwargs):
        seen.update(t=t, kwargs=kwargs)
        return torch.zeros_like(x)

    den = DiscreteDenoiser(ac, "epsilon", unet)
    sigma = den.t_to_sigma(torch.tensor([412.25]))
    x = torch.ones(1, 4, 8, 8)
    assert torch.equal(den(x, sigma, cond="c"), x)  # eps 0 -> denoised is x itself
    assert seen["kwargs"] == {"cond": "c"}
    assert seen["t"].item() == pytest.approx(412.25, abs=1e-3)
    with pytest.raises(ValueError):
        DiscreteDenoiser(ac, "sample", unet)


# --- LCMDenoiser against an independent float64 computation ------------------------------------------------------

def test_lcm_denoiser(ac):
    den = LCMDenoiser(ac, "v_prediction", toy_unet)
    table = np_sigmas(ac)[19::20]  # timesteps 19, 39, ..., 999
    assert den.skip_steps == 20 and den.sigmas.shape == (50,)
    np.testing.assert_allclose(den.sigmas.numpy(), table, **F32)

    probe = torch.tensor([14.0, 3.3, 0.5, 0.1, 0.001, 30.0])
    nearest = np.abs(np.log(probe.double().numpy())[None, :] - np.log(table)[:, None]).argmin(axis=0)
    t = den.sigma_to_t(probe)
    assert t.dtype == torch.int64 and t.tolist() == (nearest * 20 + 19).tolist()

    for n in (1, 4, 8):
        ts = np.linspace(999, 19, n)
        idx = np.clip((ts - 19) / 20, 0, 49)
        expected = np.exp(np.interp(idx, np.arange(50), np.log(table)))
        got = den.get_sigmas(n)
        np.testing.assert_allclose(got[:-1].numpy(), expected, rtol=1e-5)
        assert got[-1] == 0 and len(got) == n + 1

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen) * 5
    cond = torch.randn(2, 4, generator=gen)
    sigma = torch.tensor([14.6, 0.9])
    s = sigma.double()[:, None, None, None]
    t = den.sigma_to_t(sigma)
    eps = toy_unet((x.double() / torch.sqrt(s ** 2 + 1)).float(), t, cond).double()  # eps, even for v-models
    denoised = x.double() - s * eps
    st = t.double()[:, None, None, None] * 10
    expected = st / torch.sqrt(st ** 2 + 0.25) * denoised + 0.25 / (st ** 2 + 0.25) * x.double()
    torch.testing.assert_close(den(x, sigma, cond=cond).double(), expected, rtol=1e-5, atol=1e-5)


# --- schedules -------------------------------------------------------------------------------------------------

def get_sigmas(schedule, steps, den, sampler_default, discard):
    """The catalogue's resolution (Automatic -> the sampler's default) and then the schedule."""
    found = find_schedule_type(schedule) if schedule is not None else AUTOMATIC
    name = sampler_default if found is AUTOMATIC else found.name
    return sampling_sigmas(name, steps, den, discard_next_to_last_sigma=discard)


def test_table_matches_a1111_api(ac):
    rows = [s.api_entry() for s in SCHEDULE_TYPES]
    assert [(r["name"], r["label"]) for r in rows] == [
        ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"),
        ("beta", "Beta")]
    assert {r["name"] for r in rows if r["need_inner_model"]} == {"uniform", "sgm_uniform", "simple", "normal",
                                                                    "ddim", "beta"}
    assert {r["name"]: r["default_rho"] for r in rows if r["default_rho"] != -1} == {"karras": 7.0,
                                                                                      "polyexponential": 1.0}
    assert {r["name"]: r["aliases"] for r in rows if r["aliases"]} == {"sgm_uniform": ["SGMUniform"]}
    assert rows[0]["aliases"] is None


def test_resolved_schedule():
    from app.engine.schedulers import find_scheduler

    assert find_scheduler("DPM++ 2M").resolved_schedule == "karras"
    assert find_scheduler("Euler").resolved_schedule is None
    assert find_scheduler("DPM++ 2M SGM Uniform").resolved_schedule == "sgm_uniform"
    assert find_scheduler("DPM++ 2M SDE").resolved_schedule == "exponential"
    assert find_scheduler("DDIM Karras").resolved_schedule is None  # timestep samplers keep their timesteps
    assert find_scheduler("Euler Bogus") is None


@pytest.mark.parametrize("name", ["karras", "exponential", "polyexponential"])
@pytest.mark.parametrize("steps", [1, 6, 25])
def test_kdiffusion_schedules_bitwise(ac, name, steps):
    sampling, _ = kdiffusion_ref.load()
    den = DiscreteDenoiser(ac, "v_prediction", toy_unet)
    lo, hi = den.sigmas[0].item(), den.sigmas[-1].item()
    expected = getattr(sampling, f"get_sigmas_{name}")(steps, lo, hi)
    assert torch.equal(get_sigmas(name, steps, den, None, False), expected)


def test_automatic_and_uniform_are_kdiffusion_get_sigmas(ac):
    _, external = kdiffusion_ref.load()
    ref = external.CompVisVDenoiser(FakeLDM(ac), quantize=False)
    den = DiscreteDenoiser(ac, "v_prediction", toy_unet)
    for schedule in ("Automatic", "uniform"):
        got = get_sigmas(schedule, 20, den, None, False)
        assert torch.equal(got, ref.get_sigmas(20))
    karras = get_sigmas("Automatic", 20, den, "karras", False)
    assert torch.equal(karras, get_sigmas("karras", 20, den, None, False))


def np_sigma_to_t(log_table: np.ndarray, sigma: float) -> float:
    return float(np.interp(np.log(sigma), log_table, np.arange(len(log_table))))


def np_t_to_sigma(log_table: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(t, np.arange(len(log_table)), log_table))


def expected_a1111(name: str, n: int, table: np.ndarray) -> np.ndarray:
    """A1111 1.10's schedule formulas, in float64 numpy."""
    lo, hi, log_table = table[0], table[-1], np.log(table)
    t_hi, t_lo = np_sigma_to_t(log_table, hi), np_sigma_to_t(log_table, lo)
    if name == "sgm_uniform":
        return np.append(np_t_to_sigma(log_table, np.linspace(t_hi, t_lo, n + 1)[:-1]), 0)
    if name == "normal":
        return np.append(np_t_to_sigma(log_table, np.linspace(t_hi, t_lo, n)), 0)
    if name == "simple":
        return np.append([table[-(1 + int(i * 1000 / n))] for i in range(n)], 0)
    if name == "ddim":
        return np.append(table[1::max(1000 // n, 1)][::-1], 0)
    if name == "kl_optimal":
        k = np.arange(n + 1) / n
        return np.tan(k * np.arctan(lo) + (1 - k) * np.arctan(hi))
    if name == "beta":
        return np.append(lo + stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (hi - lo), 0)
    if name == "align_your_steps":
        ays = np.array([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029])
        if n == 11:
            return np.append(ays, 0)
        return np.append(np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(ays[::-1])))[::-1], 0)
    raise AssertionError(name)


A1111_OWN = ["sgm_uniform", "normal", "simple", "ddim", "kl_optimal", "beta", "align_your_steps"]


@pytest.mark.parametrize("name", A1111_OWN)
@pytest.mark.parametrize("steps", [3, 10, 11, 20, 30])
def test_a1111_schedules_against_formulas(ac, name, steps):
    den = DiscreteDenoiser(ac, "epsilon", toy_unet)
    got = get_sigmas(name, steps, den, None, False)
    expected = expected_a1111(name, steps, np_sigmas(ac))
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=1e-6)


def test_a1111_schedules_on_sgm_uniform_follow_kdiffusion_methods(ac):
    """sgm_uniform/normal call the denoiser's sigma_to_t / t_to_sigma: same numbers with k-diffusion's wrapper."""
    _, external = kdiffusion_ref.load()
    ref = external.CompVisDenoiser(FakeLDM(ac), quantize=False)
    den = DiscreteDenoiser(ac, "epsilon", toy_unet)
    lo, hi = den.sigmas[0].item(), den.sigmas[-1].item()
    for name in ("sgm_uniform", "normal"):
        assert torch.equal(getattr(schedules, name)(12, lo, hi, den), getattr(schedules, name)(12, lo, hi, ref))


def test_lengths_and_final_zero(ac):
    """steps + 1 sigmas ending in 0, except A1111's kl_optimal (ends at sigma_min) and ddim (1000 % steps)."""
    den = DiscreteDenoiser(ac, "epsilon", toy_unet)
    for name in [t.name for t in SCHEDULE_TYPES]:
        for steps in (4, 20, 30):
            got = get_sigmas(name, steps, den, None, False)
            if name == "ddim":
                assert len(got) == -(-999 // (1000 // steps)) + 1 and got[-1] == 0
            elif name == "kl_optimal":
                assert len(got) == steps + 1 and got[-1].item() == pytest.approx(den.sigmas[0].item(), rel=1e-5)
            else:
                assert len(got) == steps + 1 and got[-1] == 0, name
            assert torch.all(got[:-1] > got[1:]) or name == "kl_optimal" and torch.all(got[:-1] >= got[1:])
    assert len(get_sigmas("ddim", 30, den, None, False)) == 32
    assert get_sigmas("align_your_steps", 11, den, None, False)[[0, -2]].tolist() == pytest.approx([14.615, 0.029])


@pytest.mark.parametrize("name", ["Automatic", "karras", "exponential", "sgm_uniform", "beta"])
def test_discard_next_to_last_sigma(ac, name):
    den = DiscreteDenoiser(ac, "epsilon", toy_unet)
    full = get_sigmas(name, 21, den, None, False)
    got = get_sigmas(name, 20, den, None, True)
    assert len(got) == 21 and torch.equal(got, torch.cat([full[:-2], full[-1:]]))


def test_lcm_schedules_use_its_table(ac):
    den = LCMDenoiser(ac, "epsilon", toy_unet)
    assert torch.equal(get_sigmas("Automatic", 6, den, None, False),
                       den.get_sigmas(6))
    karras = get_sigmas("karras", 6, den, None, False)
    assert karras[[0, -2]].tolist() == pytest.approx([den.sigmas[-1].item(), den.sigmas[0].item()], rel=1e-6)
    assert den.sigmas[0].item() > 0.1  # its smallest sigma is timestep 19's, not the full table's 0.0292
