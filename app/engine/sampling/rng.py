"""Seeded noise as A1111 1.10 makes it: ``modules/rng.py`` (randn, randn_local, create_generator, slerp, ImageRNG)
and the Brownian noise of the SDE samplers (``Sampler.create_noise_sampler`` over k-diffusion's
BrownianTreeNoiseSampler, with ``sd_samplers_common.replace_torchsde_browinan`` seeding torchsde's draws).

Sources (A1111's "Random number generator source" option):
- "GPU": torch's CUDA generator on a CUDA device; on any other device the Philox port (``philox.py``), which makes
  CUDA's numbers, so a seed gives the same picture on a CPU and on a GPU.
- "CPU": ``torch.Generator("cpu")``, then moved to the device.
- "NV": the Philox port on every device (A1111's "NV" option).
Unlike A1111 nothing here touches torch's global generator: A1111's randn(seed, ...) reseeds the global one and
draws once, which is the first draw of a fresh generator.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Union

import torch

from app.engine.base import Limits, ValidationError, check_int, check_number, check_seed, field_range
from app.engine.sampling import philox
from app.engine.schedulers import RANDN_SOURCES

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

SOURCES = RANDN_SOURCES
LATENT_FACTOR = 8  # pixels per latent cell, for "resize seed from"

Generator = Union[torch.Generator, philox.Generator]

# k-diffusion queries the tree at float32 sigmas a hair outside the float endpoints it was built with; torchsde
# warns on every such call and goes on exactly as A1111's runs do. The warning says nothing to a user.
warnings.filterwarnings("ignore", message=r"Should have t[ab]", category=UserWarning, module=r"torchsde\.")


def _uses_philox(source: str, device: torch.device) -> bool:
    if source not in SOURCES:
        raise ValueError(f"unknown noise source {source!r}; expected one of {SOURCES}")
    return source == "NV" or (source == "GPU" and device.type != "cuda")


def create_generator(seed: int, source: str = "GPU", device: str | torch.device = "cpu") -> Generator:
    """A fresh generator for ``seed`` whose draws (see ``randn``) land on ``device``."""
    device = torch.device(device)
    if _uses_philox(source, device):
        return philox.Generator(seed)
    return torch.Generator(device if source == "GPU" else "cpu").manual_seed(int(seed))


def _draw(generator: Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if isinstance(generator, philox.Generator):
        return torch.from_numpy(generator.randn(shape)).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def randn(seed: int, shape: Sequence[int], source: str = "GPU", device: str | torch.device = "cpu",
          generator: Generator | None = None) -> torch.Tensor:
    """float32 standard normal noise on ``device``: the next draw of ``generator`` when given (it must come from
    ``create_generator`` with the same source and device), otherwise the first draw of ``seed``."""
    device = torch.device(device)
    if generator is None:
        generator = create_generator(seed, source, device)
    return _draw(generator, tuple(int(s) for s in shape), device)


def randn_local(seed: int, shape: Sequence[int], source: str = "GPU",
                device: str | torch.device = "cpu") -> torch.Tensor:
    """The first draw of ``seed`` (A1111's randn_local, which torchsde's Brownian draws go through)."""
    return randn(seed, shape, source, device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical mix of two (C, H, W) noises. As there, vectors are taken along dim 1 (the height), and a
    near-parallel pair falls back to a linear mix whose weights are swapped (``low * val + high * (1 - val)``)."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cos = (low_unit * high_unit).sum(1)
    if cos.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / sin).unsqueeze(1) * low + (torch.sin(val * omega) / sin).unsqueeze(1) * high


def _paste_centred(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """``small``'s middle into ``big``'s middle (A1111's seed resize: crops when ``small`` is the larger)."""
    dx, dy = (big.shape[2] - small.shape[2]) // 2, (big.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    big[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return big


class ImageRNG:
    """Per-image noise for a batch (A1111's ImageRNG): one generator per seed, so an image's noise never depends on
    its batch. ``shape`` is one image's latent shape (C, H, W).

    ``first()`` (the initial noise) draws each image's seed noise from its generator, mixes it towards the variation
    seed's first draw by ``subseed_strength`` (``slerp``; a missing subseed counts as 0), and with "resize seed
    from" (pixels; both sides > 0) takes that noise at the other size and pastes it, centred, into the generator's
    draw at this size. A1111's callers give every image of a batch the same seed when ``subseed_strength > 0`` and
    increase the subseeds instead; that choice is the caller's. With ``eta_noise_seed_delta`` the generators are then
    recreated from seed + delta, so the delta changes the later draws and never the initial noise.
    ``next()`` returns ``first()`` on its first call, then each generator's next draw, stacked (B, C, H, W).
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], *, subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from_h: int = 0, seed_resize_from_w: int = 0,
                 source: str = "GPU", device: str | torch.device = "cpu", eta_noise_seed_delta: int = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.seeds = list(seeds)
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.source = source
        self.device = torch.device(device)
        self.eta_noise_seed_delta = eta_noise_seed_delta
        self.generators = [create_generator(seed, source, self.device) for seed in self.seeds]
        self.is_first = True

    def _randn(self, seed: int, shape: tuple[int, ...], generator: Generator | None = None) -> torch.Tensor:
        return randn(seed, shape, self.source, self.device, generator)

    def first(self) -> torch.Tensor:
        noise_shape = self.shape
        if self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0:
            noise_shape = (self.shape[0], int(self.seed_resize_from_h) // LATENT_FACTOR,
                           int(self.seed_resize_from_w) // LATENT_FACTOR)
        resized = noise_shape != self.shape
        subseeds = self.subseeds if self.subseed_strength != 0 else None
        noises = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if subseeds is not None:
                subseed = subseeds[i] if i < len(subseeds) else 0
                subnoise = self._randn(subseed, noise_shape)
            noise = self._randn(seed, noise_shape) if resized else self._randn(seed, self.shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if resized:
                noise = _paste_centred(noise, self._randn(seed, self.shape, generator))
            noises.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [create_generator(seed + self.eta_noise_seed_delta, self.source, self.device)
                               for seed in self.seeds]
        return torch.stack(noises).to(self.device)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([self._randn(0, self.shape, g) for g in self.generators]).to(self.device)


def noise_sampler(rng: ImageRNG) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The samplers' ``noise_sampler(sigma, sigma_next)`` drawing from ``rng`` (A1111's randn_like hijack)."""
    return lambda sigma, sigma_next: rng.next()


# torchsde draws its Brownian noise through the module function brownian_interval._randn(size, dtype, device,
# seed). A1111 replaces it for good; we swap it in only while our trees draw, under a lock, so that other users
# of torchsde on other threads keep torchsde's own noise unless they run at the same moment.
_TORCHSDE_LOCK = threading.RLock()


@contextlib.contextmanager
def torchsde_seeded_by(source: str, device: str | torch.device) -> Iterator[None]:
    """Within the block, torchsde's seeded normal draws are ``randn_local(seed, size, source, device)``."""
    from torchsde._brownian import brownian_interval

    def seeded_randn(size, dtype, tree_device, seed):
        return randn_local(seed, size, source, device).to(device=tree_device, dtype=dtype)

    with _TORCHSDE_LOCK:
        original = brownian_interval._randn
        brownian_interval._randn = seeded_randn
        try:
            yield
        finally:
            brownian_interval._randn = original


def _ordered(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianNoiseSampler:
    """k-diffusion's BrownianTreeNoiseSampler with a list of seeds (BatchedBrownianTree): one torchsde.BrownianTree
    per image over [sigma_min, sigma_max], so an image's noise does not depend on its batch. A call returns the
    trees' increments from ``sigma`` to ``sigma_next`` divided by sqrt(|sigma_next - sigma|)."""

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seeds: Sequence[int],
                 source: str, device: str | torch.device) -> None:
        import torchsde

        if len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
        self._source, self._device = source, device
        t0, t1, self._sign = _ordered(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        w0 = torch.zeros_like(x[0])
        with torchsde_seeded_by(source, device):
            self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = _ordered(t0, t1)
        with torchsde_seeded_by(self._source, self._device):
            w = torch.stack([tree(lo, hi) for tree in self._trees]) * (self._sign * sign)
        return w / (t1 - t0).abs().sqrt()


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int], source: str = "GPU",
                           device: str | torch.device = "cpu") -> BrownianNoiseSampler:
    """A1111's create_noise_sampler for the SDE samplers: the Brownian tree between the smallest positive sigma and
    the largest, one per seed of this batch (``seeds`` are the batch's image seeds, one per row of ``x``)."""
    return BrownianNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seeds, source, device)


def check(request: GenerationRequest, limits: Limits) -> None:
    """The variation seed fields (A1111's "Extra" seed options); -1 means random or off, as A1111."""
    request.subseed = check_seed("subseed", request.subseed)
    check_number("subseed_strength", request.subseed_strength)
    low, high = field_range("subseed_strength")
    if not low <= request.subseed_strength <= high:
        raise ValidationError("subseed_strength", request.subseed_strength, f"must be between {low} and {high}")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        value = getattr(request, name)
        check_int(name, value)
        if value == -1:  # A1111's "off"
            setattr(request, name, 0)
        elif value < 0 or value > max(limits.max_width, limits.max_height):
            raise ValidationError(name, value, "must be 0 (off) or a size in pixels within the limits")
    resize = request.seed_resize_from_w or request.seed_resize_from_h
    if resize and not (request.seed_resize_from_w and request.seed_resize_from_h):
        raise ValidationError("seed_resize_from_w" if not request.seed_resize_from_w else "seed_resize_from_h", 0,
                              "seed resize needs both seed_resize_from_w and seed_resize_from_h")
