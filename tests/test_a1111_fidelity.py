"""The engine's sampling path against A1111 1.10's, pair by pair (issue #21).

For every sigma sampler x schedule type, on the demo UNet read as an epsilon
and as a v-prediction model, the engine's txt2img pass (app/engine/denoise.py)
is compared with a reference assembled the way A1111 assembles it:
k-diffusion 0.1.1.post1's own sampler function and CompVis(V)Denoiser (the
release A1111 pins; tests/kdiffusion_ref.py), A1111's CFG combination, the
sampler's A1111 default schedule for "Automatic", the next-to-last-sigma
discard, the start ``noise * sigmas[0]``, ancestral noise drawn through a
TorchHijack from each image's generator, and k-diffusion's Brownian tree with
A1111's seeded normal draws for the SDE samplers. Same conditioning, same seeds:
final latents must agree to relative L2 < 1e-4 in fp32.

Restart and LCM are A1111's own samplers (not k-diffusion's): their reference
is our implementation checked against A1111's rules in test_sampling_kdiffusion;
here the rest of their path (denoiser, CFG, schedule, noise) is the reference's.
The timestep samplers are checked against A1111's rules in
test_sampling_timesteps and, at the end, for their number of model calls.
"""
from __future__ import annotations

import inspect

import kdiffusion_ref
import pytest
import torch

from app.engine.denoise import Denoiser, ModelWrappers
from app.engine.sampling import kdiffusion as ours
from app.engine.sampling import schedules
from app.engine.sampling.denoisers import LCMDenoiser
from app.engine.sampling.rng import ImageRNG, torchsde_seeded_by
from app.engine.schedulers import SCHEDULE_TYPES, SCHEDULERS, TIMESTEPS
from app.engine.types import GenerationRequest

SIZE = 64  # 8x8 latents
STEPS = 6
SEEDS = [1234, 1235]
CFG = 7.0

# A1111 1.10's sampler table (modules/sd_samplers_kdiffusion.py), written out here as the reference's facts:
# function, default schedule, discard next-to-last sigma, Brownian noise, extra options.
A1111 = {
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", False, False, {}),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", False, True, {}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", False, True, {}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", "exponential", False, True, {"solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", False, False, {}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", "exponential", True, True, {}),
    "Euler a": ("sample_euler_ancestral", None, False, False, {}),
    "Euler": ("sample_euler", None, False, False, {}),
    "LMS": ("sample_lms", None, False, False, {}),
    "Heun": ("sample_heun", None, False, False, {}),
    "DPM2": ("sample_dpm_2", "karras", True, False, {}),
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", True, False, {}),
    "DPM fast": ("sample_dpm_fast", None, False, False, {}),
    "DPM adaptive": ("sample_dpm_adaptive", None, False, False, {}),
    "Restart": ("restart_sampler", "karras", False, False, {}),
    "LCM": ("sample_lcm", None, False, False, {}),
}
SIGMA_SAMPLERS = [s.name for s in SCHEDULERS if s.kind != TIMESTEPS]
PAIRS = [(sampler, schedule.label) for sampler in SIGMA_SAMPLERS for schedule in SCHEDULE_TYPES]


def test_the_table_is_a1111s():
    assert sorted(A1111) == sorted(SIGMA_SAMPLERS)
    assert [s.name for s in SCHEDULERS] == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
        "PLMS", "UniPC", "LCM"]


@pytest.fixture(scope="module")
def conds(engine):
    """Fixed conditioning, the same for both sides (the text encoding has its own tests)."""
    dim = engine.pipe.text_encoder.config.hidden_size
    g = torch.Generator().manual_seed(0)
    return torch.randn((1, 77, dim), generator=g), torch.randn((1, 77, dim), generator=g)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def wrappers(request, engine):
    return ModelWrappers(engine.pipe, {**dict(engine.pipe.scheduler.config), "prediction_type": request.param})


class _LDM:
    """What k-diffusion's CompVis wrappers read from an ldm model: the demo UNet and its noise table."""

    def __init__(self, wrappers: ModelWrappers):
        self.alphas_cumprod = wrappers.alphas_cumprod
        self.unet = wrappers.unet

    def apply_model(self, x, t, cond):
        return self.unet(x, t.float(), encoder_hidden_states=cond, return_dict=False)[0].float()


class _CFG:
    """A1111's CFGDenoiser for one prompt, the way its forward combines: cond first, uncond last."""

    def __init__(self, inner, cond, uncond):
        self.inner, self.cond, self.uncond = inner, cond, uncond

    def __call__(self, x, sigma, **_):
        n = x.shape[0]
        c = torch.cat([self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1)])
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=c)
        return out[n:] + (out[:n] - out[n:]) * CFG


class _TorchHijack:
    """A1111's TorchHijack: k-diffusion's torch.randn_like draws the image RNG's next noise."""

    def __init__(self, rng):
        self.rng = rng

    def __getattr__(self, name):
        return self.randn_like if name == "randn_like" else getattr(torch, name)

    def randn_like(self, x):
        return self.rng.next()


def _reference(sampler: str, schedule_label: str, wrappers: ModelWrappers, cond, uncond,
               always_discard: bool = False) -> torch.Tensor:
    """``always_discard``: A1111's option "Always discard next-to-last sigma" (get_sigmas: discard if the
    sampler does, or if the option is on)."""
    sampling, external = kdiffusion_ref.load()
    func_name, default, discard, brownian, options = A1111[sampler]
    discard = discard or always_discard
    ldm = _LDM(wrappers)
    if sampler == "LCM":
        inner = LCMDenoiser(wrappers.alphas_cumprod, wrappers.prediction, lambda x, t, cond: ldm.apply_model(x, t, cond))
    elif wrappers.prediction == "v_prediction":
        inner = external.CompVisVDenoiser(ldm, quantize=False)
    else:
        inner = external.CompVisDenoiser(ldm, quantize=False)
    # KDiffusionSampler.get_sigmas with default options
    name = default if schedule_label == "Automatic" else next(t.name for t in SCHEDULE_TYPES
                                                              if t.label == schedule_label)
    steps = STEPS + (1 if discard else 0)
    lo, hi = inner.sigmas[0].item(), inner.sigmas[-1].item()
    if name is None:
        sigmas = inner.get_sigmas(steps)
    elif name in ("karras", "exponential", "polyexponential"):
        sigmas = getattr(sampling, f"get_sigmas_{name}")(steps, lo, hi)
    else:  # A1111's own schedule functions, checked against its formulas in test_sampling_schedules
        sigmas = schedules.FUNCTIONS[name](steps, lo, hi, inner)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    rng = ImageRNG((4, SIZE // 8, SIZE // 8), SEEDS)
    x = rng.next() * sigmas[0]
    func = getattr(ours if sampler in ("Restart", "LCM") else sampling, func_name)
    kwargs = dict(options)
    params = inspect.signature(func).parameters
    if "eta" in params:
        kwargs["eta"] = 1.0  # A1111's eta_ancestral
    if "n" in params:
        kwargs["n"] = STEPS
    if "sigma_min" in params:
        kwargs["sigma_min"], kwargs["sigma_max"] = lo, hi
    else:
        kwargs["sigmas"] = sigmas
    if sampler in ("Restart", "LCM"):
        kwargs["noise_sampler"] = lambda s, s_next: rng.next()
    model = _CFG(inner, cond, uncond)
    saved = sampling.torch
    sampling.torch = _TorchHijack(rng)
    try:
        with torchsde_seeded_by("GPU", "cpu"), torch.no_grad():
            if brownian:
                kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                            seed=SEEDS)
            return func(model, x, disable=True, **kwargs)
    finally:
        sampling.torch = saved


def _ours(sampler: str, schedule_label: str, wrappers: ModelWrappers, engine, cond, uncond,
          **request) -> tuple[torch.Tensor, Denoiser]:
    name = sampler if schedule_label == "Automatic" else f"{sampler} {schedule_label}"
    gen = GenerationRequest(prompt="x", scheduler=name, steps=STEPS, guidance_scale=CFG, seed=SEEDS[0],
                            num_images=len(SEEDS), **request).validate()
    denoiser = Denoiser(engine.pipe, wrappers, gen, SEEDS, [0, 1], None)
    with torch.no_grad():
        result = denoiser.txt2img(([(STEPS, cond)], [(STEPS, uncond)]), SIZE, SIZE, None)
    return result.latents, denoiser


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("sampler,schedule", PAIRS)
def test_every_pair_matches_a1111(engine, wrappers, conds, sampler, schedule):
    cond, uncond = conds
    got, _ = _ours(sampler, schedule, wrappers, engine, cond, uncond)
    expected = _reference(sampler, schedule, wrappers, cond, uncond)
    assert torch.isfinite(expected).all()
    assert _relative_l2(got, expected) < 1e-4, (sampler, schedule, wrappers.prediction)


def test_eta_0_turns_euler_a_into_euler(engine, wrappers, conds):
    euler_a, _ = _ours("Euler a", "Automatic", wrappers, engine, *conds, eta=0.0)
    euler, _ = _ours("Euler", "Automatic", wrappers, engine, *conds)
    assert _relative_l2(euler_a, euler) < 1e-6
    ancestral, _ = _ours("Euler a", "Automatic", wrappers, engine, *conds)
    assert _relative_l2(ancestral, euler) > 1e-2


def test_the_schedule_type_changes_the_picture(engine, wrappers, conds):
    karras, _ = _ours("Euler", "Karras", wrappers, engine, *conds)
    plain, _ = _ours("Euler", "Automatic", wrappers, engine, *conds)
    assert _relative_l2(karras, plain) > 1e-3


def _conds_per_call(engine, **request) -> list:
    """The conditioning each UNet call of a generation got (the cond half of the CFG batch)."""
    from app.engine.prompts import encode_schedule

    seen = []
    hook = engine.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"][0]), with_kwargs=True)
    try:
        engine.generate(GenerationRequest(width=64, height=64, seed=3, **request))
    finally:
        hook.remove()
    fox, cat = (encode_schedule(engine.pipe, text, 1)[0].cond[0] for text in ("fox", "cat"))
    return ["fox" if torch.equal(c, fox) else "cat" if torch.equal(c, cat) else "?" for c in seen]


def test_prompt_editing_switches_the_conditioning_at_its_step(engine):
    # [fox:cat:10] over 20 steps: A1111's schedule [[10, fox], [20, cat]], picked per model call by
    # "call <= end_at_step", so calls 0..10 see fox and the rest cat.
    used = _conds_per_call(engine, prompt="[fox:cat:10]", negative_prompt="", steps=20,
                           scheduler="Euler")
    assert used == ["fox"] * 11 + ["cat"] * 9
    # A fraction is of the steps; a second-order sampler counts its steps twice (Heun: 2 calls a step,
    # the last step 1: 39 calls, switching after call 20 of A1111's 40).
    used = _conds_per_call(engine, prompt="[fox:cat:0.5]", negative_prompt="", steps=20,
                           scheduler="Heun")
    assert used == ["fox"] * 21 + ["cat"] * 18


def test_alternation_switches_every_call(engine):
    used = _conds_per_call(engine, prompt="[fox|cat]", negative_prompt="", steps=6, scheduler="Euler")
    # A1111: [[1, fox], [2, cat], [3, fox] ...] picked by "call <= end_at_step": call 0 and 1 both see fox.
    assert used == ["fox", "fox", "cat", "fox", "cat", "fox"]


@pytest.mark.parametrize("sampler,calls,first,last", [
    ("DDIM", 19, 951, 51),  # A1111: timesteps range(0, 1000, 50) + 1, the loop stops before the first
    ("DDIM CFG++", 19, 951, 51),
    ("PLMS", 20, 951, 51),  # its first step evaluates twice (951, then 901 for the pseudo improved Euler)
    ("UniPC", 20, None, None),  # continuous time: fractional timesteps
])
def test_timestep_samplers_call_the_model_as_a1111(engine, sampler, calls, first, last):
    seen = []
    hook = engine.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(float(args[1][0])))
    try:
        engine.generate(GenerationRequest(prompt="a fox", width=64, height=64, steps=20, seed=3, scheduler=sampler))
    finally:
        hook.remove()
    assert len(seen) == calls
    if first is not None:
        assert (seen[0], seen[-1]) == (first, last)
    assert all(a >= b for a, b in zip(seen, seen[1:]))


def _reference_img2img(sampler: str, wrappers: ModelWrappers, cond, uncond, init, steps: int, strength: float,
                       fixed: bool, always_discard: bool = False) -> torch.Tensor:
    """A1111's KDiffusionSampler.sample_img2img: setup_img2img_steps, the tail of the schedule from
    t_enc, the start init + noise * sigma, DPM fast/adaptive's range from that tail."""
    sampling, external = kdiffusion_ref.load()
    func_name, default, discard, brownian, options = A1111[sampler]
    discard = discard or always_discard
    ldm = _LDM(wrappers)
    inner = (external.CompVisVDenoiser if wrappers.prediction == "v_prediction" else external.CompVisDenoiser)(
        ldm, quantize=False)
    if fixed:  # the hires pass: steps given, the schedule stretched
        total, t_enc = int(steps / min(strength, 0.999)), steps - 1
    else:
        total, t_enc = steps, int(min(strength, 0.999) * steps)
    n = total + (1 if discard else 0)
    lo, hi = inner.sigmas[0].item(), inner.sigmas[-1].item()
    sigmas = inner.get_sigmas(n) if default is None else getattr(sampling, f"get_sigmas_{default}")(n, lo, hi)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sched = sigmas[total - t_enc - 1:]
    rng = ImageRNG(tuple(init.shape[1:]), SEEDS)
    xi = init + rng.next() * sched[0]
    func = getattr(sampling, func_name)
    params = inspect.signature(func).parameters
    kwargs = dict(options)
    if "eta" in params:
        kwargs["eta"] = 1.0
    if "sigma_min" in params:
        kwargs.update(sigma_min=sched[-2], sigma_max=sched[0])
    if "n" in params:
        kwargs["n"] = len(sched) - 1
    if "sigmas" in params:
        kwargs["sigmas"] = sched
    saved = sampling.torch
    sampling.torch = _TorchHijack(rng)
    try:
        with torchsde_seeded_by("GPU", "cpu"), torch.no_grad():
            if brownian:
                kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(init, sigmas[sigmas > 0].min(),
                                                                            sigmas.max(), seed=SEEDS)
            return func(_CFG(inner, cond, uncond), xi, disable=True, **kwargs)
    finally:
        sampling.torch = saved


def _ours_img2img(sampler: str, wrappers: ModelWrappers, engine, cond, uncond, init, strength: float, fixed: bool,
                  **request) -> torch.Tensor:
    gen = GenerationRequest(prompt="x", scheduler=sampler, steps=STEPS, guidance_scale=CFG, seed=SEEDS[0],
                            num_images=len(SEEDS), **request).validate()
    denoiser = Denoiser(engine.pipe, wrappers, gen, SEEDS, [0, 1], None)
    with torch.no_grad():
        return denoiser.img2img(([(STEPS, cond)], [(STEPS, uncond)]), init, STEPS, strength, None,
                                fixed_steps=fixed).latents


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM2", "DPM fast", "DPM++ SDE", "DPM++ 3M SDE"])
@pytest.mark.parametrize("strength,fixed", [(0.6, False), (0.35, True)])
def test_img2img_and_the_hires_pass_match_a1111(engine, wrappers, conds, sampler, strength, fixed):
    cond, uncond = conds
    init = torch.randn((len(SEEDS), 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(5))
    got = _ours_img2img(sampler, wrappers, engine, cond, uncond, init, strength, fixed)
    expected = _reference_img2img(sampler, wrappers, cond, uncond, init, STEPS, strength, fixed)
    assert _relative_l2(got, expected) < 1e-4, (sampler, strength, fixed, wrappers.prediction)


# A1111's option "Always discard next-to-last sigma" (issue #23's second demonstration field): DPM2 already
# discards, so the option changes nothing there.
@pytest.mark.parametrize("sampler,schedule", [("Euler", "Automatic"), ("Euler a", "Automatic"), ("Heun", "Karras"),
                                              ("DPM++ 2M", "Automatic"), ("DPM++ 2M SDE", "Automatic"),
                                              ("DPM2", "Automatic")])
def test_always_discard_next_to_last_sigma_matches_a1111(engine, wrappers, conds, sampler, schedule):
    got, _ = _ours(sampler, schedule, wrappers, engine, *conds, always_discard_next_to_last_sigma=True)
    expected = _reference(sampler, schedule, wrappers, *conds, always_discard=True)
    assert _relative_l2(got, expected) < 1e-4, (sampler, schedule, wrappers.prediction)
    plain, _ = _ours(sampler, schedule, wrappers, engine, *conds)
    assert (_relative_l2(got, plain) < 1e-6) == (sampler == "DPM2")


@pytest.mark.parametrize("strength,fixed", [(0.6, False), (0.35, True)])
def test_always_discard_next_to_last_sigma_in_img2img_and_hires_matches_a1111(engine, wrappers, conds, strength,
                                                                              fixed):
    init = torch.randn((len(SEEDS), 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(5))
    got = _ours_img2img("DPM++ 2M", wrappers, engine, *conds, init, strength, fixed,
                        always_discard_next_to_last_sigma=True)
    expected = _reference_img2img("DPM++ 2M", wrappers, *conds, init, STEPS, strength, fixed, always_discard=True)
    assert _relative_l2(got, expected) < 1e-4, (strength, fixed, wrappers.prediction)
    assert _relative_l2(got, _ours_img2img("DPM++ 2M", wrappers, engine, *conds, init, strength, fixed)) > 1e-4
