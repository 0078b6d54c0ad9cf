"""app.engine.sampling.rng / philox against A1111 1.10's published numbers and rules (modules/rng.py,
modules/rng_philox.py, create_noise_sampler) and k-diffusion's BrownianTreeNoiseSampler."""
from __future__ import annotations

import threading
import types

import kdiffusion_ref
import numpy as np
import pytest
import torch

from app.engine.sampling import philox
from app.engine.sampling.rng import (
    ImageRNG,
    brownian_noise_sampler,
    create_generator,
    noise_sampler,
    randn,
    randn_local,
    slerp,
)

SHAPE = (4, 8, 8)


# -- Philox -------------------------------------------------------------------------------------------------------

# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# The docstring of A1111's rng_philox.py: Generator(seed=0).randn((3, 4)), printed to 8 digits.
A1111_DOC_SEED0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                   [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                   [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]

# What A1111's rng_philox.Generator code itself returns (float32 bit patterns, from running that module): seed 0's
# draws of (3, 4) then (6,), and the first (4,) draw of seed 2**32 + 5 (a key with a high word).
A1111_SEED0_FIRST = [0xBF6CB6AD, 0xBED9C6AF, 0xC02934C5, 0x3E14AB15, 0xBDF788DC, 0xBF1468E7,
                     0xBF1F732F, 0xBEA8225C, 0xBF898A98, 0xBEB9EE06, 0xBFD5E4FB, 0x4010FE09]
A1111_SEED0_SECOND = [0x3E392A6C, 0xBF0D6117, 0x3F6C7F09, 0xBF3C2704, 0x3FB0A3AA, 0x3F5E1D0C]
A1111_SEED_2POW32_PLUS5 = [0xC035EF93, 0x3FAB9541, 0x3E8B61D8, 0x3FBA3F80]


def _bits(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel()]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_bijection_matches_random123_vectors(counter, key, expected):
    out = philox.philox4x32_10(np.array(counter, dtype=np.uint32).reshape(4, 1), key)
    assert [int(v) for v in out[:, 0]] == list(expected)


def test_philox_generator_reproduces_a1111():
    g = philox.Generator(0)
    first = g.randn((3, 4))
    assert first.dtype == np.float32 and first.shape == (3, 4)
    assert _bits(first) == A1111_SEED0_FIRST
    # A1111's docstring shows the exact-constant Box-Muller values; its code (float32 constants) is within 3e-7.
    np.testing.assert_allclose(first, A1111_DOC_SEED0, rtol=0, atol=3e-7)
    assert g.offset == 1
    assert _bits(g.randn((6,))) == A1111_SEED0_SECOND
    assert g.offset == 2
    assert _bits(philox.Generator(2**32 + 5).randn((4,))) == A1111_SEED_2POW32_PLUS5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(3, 4), SHAPE, (4, 64, 64)])
def test_philox_equals_cuda_randn(shape):
    """A1111's claim: the port makes CUDA's torch.randn, first and later draws. CUDA's Box-Muller runs in float32
    with __sincosf, the port in float64, so a few float32 ulps may differ; the stream itself must be the same."""
    for seed in (0, 12345, 2**32 + 5):
        cuda = torch.Generator("cuda").manual_seed(seed)
        ours = philox.Generator(seed)
        for _ in range(3):
            expected = torch.randn(shape, generator=cuda, device="cuda").cpu()
            got = torch.from_numpy(ours.randn(shape))
            # For docs/samplers.md: how many values are bit for bit CUDA's (the GPU check prints it with -rA).
            print(f"philox vs cuda {shape} seed {seed}: {int((got == expected).sum())}/{got.numel()} identical, "
                  f"max difference {float((got - expected).abs().max()):.3g}")
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_source_on_cuda_uses_torch_cuda_generator():
    rng = ImageRNG(SHAPE, [7, 8], source="GPU", device="cuda")
    first, second = rng.next(), rng.next()
    cuda = [torch.Generator("cuda").manual_seed(s) for s in (7, 8)]
    assert torch.equal(first, torch.stack([torch.randn(SHAPE, generator=g, device="cuda") for g in cuda]))
    assert torch.equal(second, torch.stack([torch.randn(SHAPE, generator=g, device="cuda") for g in cuda]))
    # The CPU machine's "GPU" source (the Philox port) gives the same picture.
    cpu = ImageRNG(SHAPE, [7, 8], source="GPU", device="cpu")
    torch.testing.assert_close(cpu.next(), first.cpu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu.next(), second.cpu(), rtol=1e-5, atol=1e-5)


# -- sources ------------------------------------------------------------------------------------------------------

def _reference_draws(seed: int, shape: tuple[int, ...], n: int, source: str) -> list[torch.Tensor]:
    """The first n draws of a seed on the CPU machine: torch's CPU generator, or the Philox port for GPU/NV."""
    if source == "CPU":
        g = torch.Generator("cpu").manual_seed(seed)
        return [torch.randn(shape, generator=g) for _ in range(n)]
    g = philox.Generator(seed)
    return [torch.from_numpy(g.randn(shape)) for _ in range(n)]


def test_cpu_source_is_torch_cpu_generator():
    for seed in (0, 1234, 2**32 + 7):
        expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(randn_local(seed, SHAPE, "CPU", "cpu"), expected)
        assert torch.equal(randn(seed, SHAPE, "CPU", "cpu"), expected)
    g = create_generator(5, "CPU", "cpu")
    draws = [randn(0, SHAPE, "CPU", "cpu", generator=g) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(draws, _reference_draws(5, SHAPE, 3, "CPU")))


@pytest.mark.parametrize("source", ["GPU", "NV"])
def test_gpu_and_nv_sources_off_cuda_use_philox(source):
    out = randn_local(0, (3, 4), source, "cpu")
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert _bits(out.numpy()) == A1111_SEED0_FIRST
    g = create_generator(0, source, "cpu")
    assert isinstance(g, philox.Generator)
    randn(0, (3, 4), source, "cpu", generator=g)
    assert _bits(randn(0, (6,), source, "cpu", generator=g).numpy()) == A1111_SEED0_SECOND


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="noise source"):
        create_generator(1, "TPU", "cpu")


# -- ImageRNG -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_batch_noise_equals_each_image_alone(source):
    kwargs = {"subseeds": [5, 6, 7], "subseed_strength": 0.3, "source": source, "eta_noise_seed_delta": 31337}
    batch = ImageRNG(SHAPE, [11, 22, 33], **kwargs)
    alone = [ImageRNG(SHAPE, [seed], **{**kwargs, "subseeds": [sub]}) for seed, sub in zip([11, 22, 33], [5, 6, 7])]
    for _ in range(3):
        together = batch.next()
        assert together.shape == (3, *SHAPE)
        assert torch.equal(together, torch.cat([rng.next() for rng in alone]))


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_next_continues_each_generator_after_first(source):
    rng = ImageRNG(SHAPE, [3, 4], source=source)
    refs = [_reference_draws(seed, SHAPE, 3, source) for seed in (3, 4)]
    for step in range(3):
        assert torch.equal(rng.next(), torch.stack([r[step] for r in refs]))


def test_eta_noise_seed_delta_changes_next_but_not_first():
    plain = ImageRNG(SHAPE, [100, 200], source="CPU")
    delta = ImageRNG(SHAPE, [100, 200], source="CPU", eta_noise_seed_delta=31337)
    assert torch.equal(plain.next(), delta.next())
    refs = [_reference_draws(seed + 31337, SHAPE, 2, "CPU") for seed in (100, 200)]
    second = delta.next()
    assert not torch.equal(second, plain.next())
    assert torch.equal(second, torch.stack([r[0] for r in refs]))
    assert torch.equal(delta.next(), torch.stack([r[1] for r in refs]))


def _slerp_reference(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp formula in float64 numpy (vectors along dim 1)."""
    a, b = low.double().numpy(), high.double().numpy()
    cos = ((a / np.linalg.norm(a, axis=1, keepdims=True)) * (b / np.linalg.norm(b, axis=1, keepdims=True))).sum(1)
    omega = np.arccos(cos)
    mixed = (np.sin((1 - val) * omega) / np.sin(omega))[:, None] * a + (np.sin(val * omega) / np.sin(omega))[:, None] * b
    return torch.from_numpy(mixed).float()


@pytest.mark.parametrize("source", ["GPU", "CPU"])
def test_variation_seed_mixes_towards_the_subseed(source):
    seed_noise, sub_noise = randn_local(10, SHAPE, source), randn_local(99, SHAPE, source)
    none = ImageRNG(SHAPE, [10], subseeds=[99], subseed_strength=0.0, source=source)
    assert torch.equal(none.first(), seed_noise[None])
    full = ImageRNG(SHAPE, [10], subseeds=[99], subseed_strength=1.0, source=source)
    torch.testing.assert_close(full.first()[0], sub_noise, rtol=1e-5, atol=1e-5)
    quarter = ImageRNG(SHAPE, [10], subseeds=[99], subseed_strength=0.25, source=source)
    mixed = quarter.next()[0]
    torch.testing.assert_close(mixed, _slerp_reference(0.25, seed_noise, sub_noise), rtol=1e-5, atol=1e-5)
    assert torch.equal(mixed, slerp(0.25, seed_noise, sub_noise))
    assert torch.equal(quarter.next()[0], _reference_draws(10, SHAPE, 2, source)[1])  # the seed's stream goes on
    # A subseed list shorter than the batch: the missing ones count as 0 (A1111's rule).
    short = ImageRNG(SHAPE, [10, 11], subseeds=[99], subseed_strength=0.5, source=source).first()
    assert torch.equal(short[1], slerp(0.5, randn_local(11, SHAPE, source), randn_local(0, SHAPE, source)))


def test_slerp_near_parallel_falls_back_to_a1111s_swapped_linear_mix():
    low = randn_local(1, SHAPE, "CPU")
    high = low * 2.0
    assert torch.equal(slerp(0.2, low, high), low * 0.2 + high * 0.8)


@pytest.mark.parametrize("source", ["GPU", "CPU"])
def test_seed_resize_pastes_the_other_sizes_noise_in_the_middle(source):
    # From a larger size (96x128 px = 12x16 latents): the middle 8x8 of that noise.
    rng = ImageRNG(SHAPE, [8], seed_resize_from_h=96, seed_resize_from_w=128, source=source)
    big = randn_local(8, (4, 12, 16), source)
    assert torch.equal(rng.next()[0], big[:, 2:10, 4:12])
    # The image's own generator was drawn once (for the canvas), so next() is its second draw.
    assert torch.equal(rng.next()[0], _reference_draws(8, SHAPE, 2, source)[1])
    # From a smaller size (32x48 px = 4x6 latents): pasted centred onto the seed's own noise at this size.
    small_noise = randn_local(8, (4, 4, 6), source)
    out = ImageRNG(SHAPE, [8], seed_resize_from_h=32, seed_resize_from_w=48, source=source).first()[0]
    canvas = _reference_draws(8, SHAPE, 1, source)[0]
    assert torch.equal(out[:, 2:6, 1:7], small_noise)
    outside = torch.ones(SHAPE, dtype=torch.bool)
    outside[:, 2:6, 1:7] = False
    assert torch.equal(out[outside], canvas[outside])
    # Variation at the resize size, then pasted.
    varied = ImageRNG(SHAPE, [8], subseeds=[9], subseed_strength=0.5, seed_resize_from_h=32, seed_resize_from_w=48,
                      source=source).first()[0]
    assert torch.equal(varied[:, 2:6, 1:7], slerp(0.5, small_noise, randn_local(9, (4, 4, 6), source)))
    # The same size, or only one side given: no resize.
    for h, w in ((64, 64), (32, 0)):
        plain = ImageRNG(SHAPE, [8], seed_resize_from_h=h, seed_resize_from_w=w, source=source)
        assert torch.equal(plain.first()[0], canvas)


def test_noise_sampler_draws_the_next_noise():
    rng, twin = ImageRNG(SHAPE, [1, 2]), ImageRNG(SHAPE, [1, 2])
    sample = noise_sampler(rng)
    for sigma, sigma_next in ((14.6, 9.0), (9.0, 4.0)):
        assert torch.equal(sample(torch.tensor(sigma), torch.tensor(sigma_next)), twin.next())


# -- Brownian noise -----------------------------------------------------------------------------------------------

def _kdiffusion_sampling() -> types.ModuleType:
    return kdiffusion_ref.load()[0]


SIGMAS = torch.tensor([14.6146, 9.7248, 6.3311, 3.9973, 2.3825, 1.2859, 0.5964, 0.0292, 0.0])


def _sigma_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The calls an SDE sampler makes: each step, and a midpoint (DPM++ SDE) for each positive step."""
    pairs = []
    for s, s_next in zip(SIGMAS[:-2], SIGMAS[1:-1]):
        mid = (s.log() + s_next.log()).div(2).exp()
        pairs += [(s, mid), (mid, s_next), (s, s_next)]
    return pairs + [(SIGMAS[3], SIGMAS[2])]  # an upward call too


def _a1111_torchsde_randn(source: str):
    def torchsde_randn(size, dtype, device, seed):
        return randn_local(seed, size, source, "cpu").to(device=device, dtype=dtype)
    return torchsde_randn


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_brownian_noise_equals_kdiffusion_under_a1111s_torchsde_randn(source, monkeypatch):
    from torchsde._brownian import brownian_interval

    x = torch.zeros(2, *SHAPE)
    seeds = [1234, 98765]
    ours = brownian_noise_sampler(x, SIGMAS, seeds, source, "cpu")
    monkeypatch.setattr(brownian_interval, "_randn", _a1111_torchsde_randn(source))
    sampling = _kdiffusion_sampling()
    reference = sampling.BrownianTreeNoiseSampler(x, SIGMAS[SIGMAS > 0].min(), SIGMAS.max(), seed=seeds)
    for sigma, sigma_next in _sigma_pairs():
        expected = reference(sigma, sigma_next)
        got = ours(sigma, sigma_next)
        assert got.shape == x.shape
        assert torch.equal(got, expected)


def test_cpu_source_brownian_noise_is_plain_torchsde():
    """torchsde's own draw is torch's CPU generator seeded with the same seed: the CPU source changes nothing."""
    x = torch.zeros(2, *SHAPE)
    reference = _kdiffusion_sampling().BrownianTreeNoiseSampler(x, SIGMAS[SIGMAS > 0].min(), SIGMAS.max(),
                                                                seed=[5, 6])
    ours = brownian_noise_sampler(x, SIGMAS, [5, 6], "CPU", "cpu")
    for sigma, sigma_next in _sigma_pairs():
        assert torch.equal(ours(sigma, sigma_next), reference(sigma, sigma_next))


def test_brownian_batch_noise_equals_each_image_alone():
    x = torch.zeros(2, *SHAPE)
    batch = brownian_noise_sampler(x, SIGMAS, [77, 88], "GPU", "cpu")
    alone = [brownian_noise_sampler(x[:1], SIGMAS, [seed], "GPU", "cpu") for seed in (77, 88)]
    for sigma, sigma_next in _sigma_pairs():
        assert torch.equal(batch(sigma, sigma_next), torch.cat([s(sigma, sigma_next) for s in alone]))


def test_brownian_needs_one_seed_per_image():
    with pytest.raises(ValueError, match="seeds"):
        brownian_noise_sampler(torch.zeros(2, *SHAPE), SIGMAS, [1], "GPU", "cpu")


def test_torchsde_replacement_is_scoped_and_thread_safe():
    from torchsde._brownian import brownian_interval

    original = brownian_interval._randn

    def run(source: str) -> list[torch.Tensor]:
        sampler = brownian_noise_sampler(torch.zeros(1, *SHAPE), SIGMAS, [31], source, "cpu")
        return [sampler(s, s_next) for s, s_next in _sigma_pairs()]

    expected = {source: run(source) for source in ("CPU", "NV")}
    assert brownian_interval._randn is original
    assert not torch.equal(expected["CPU"][0], expected["NV"][0])
    results: dict[str, list[list[torch.Tensor]]] = {"CPU": [], "NV": []}

    def worker(source: str) -> None:
        for _ in range(5):
            results[source].append(run(source))

    threads = [threading.Thread(target=worker, args=(source,)) for source in ("CPU", "NV")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for source, runs in results.items():
        assert len(runs) == 5
        assert all(torch.equal(a, b) for got in runs for a, b in zip(got, expected[source]))
    assert brownian_interval._randn is original
