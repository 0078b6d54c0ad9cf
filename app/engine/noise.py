"""Initial noise with A1111's variation seeds (``modules/processing.py``,
``create_random_tensors`` and ``slerp``): the seed's noise spherically
interpolated towards the variation seed's by ``subseed_strength``, and
"resize seed from" (the noise a seed gives at another size, pasted in the
middle). Each image draws its noise as diffusers does for a list of CPU
generators, so with strength 0 and no resize the noise is the plain seed's,
bit for bit."""
from __future__ import annotations

from typing import Any


def seed_noise(seed: int, shape: tuple[int, ...]) -> Any:
    """What diffusers' ``randn_tensor`` draws for one image from ``torch.Generator("cpu").manual_seed(seed)``."""
    import torch

    return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)[0]


def slerp(val: float, low: Any, high: Any) -> Any:
    """A1111's slerp of two (C, H, W) noises, normalised along dim 1 as A1111 does; a near-parallel
    pair falls back to A1111's linear mix (whose weights are, as there, swapped)."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def variation_noise(seed: int, subseed: int, strength: float, shape: tuple[int, int, int],
                    resize_from: tuple[int, int] | None = None) -> Any:
    """One image's (C, H, W) initial noise. ``resize_from`` is (channels, height, width) in latents."""
    noise_shape = shape if resize_from is None else (shape[0], *resize_from)
    noise = seed_noise(seed, noise_shape)
    if strength > 0:
        noise = slerp(strength, noise, seed_noise(subseed, noise_shape))
    if noise_shape != shape:
        x = seed_noise(seed, shape)
        dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        dx, dy = max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
        noise = x
    return noise


def uses_variation(request: Any) -> bool:
    return request.subseed_strength > 0 or bool(request.seed_resize_from_w or request.seed_resize_from_h)


def initial_latents(request: Any, seeds: list[int], width: int, height: int, channels: int, dtype: Any) -> Any:
    """The batch's initial latents (diffusers scales them by the scheduler's init sigma)."""
    import torch

    from app.engine.types import MAX_SEED, SIZE_MULTIPLE

    shape = (channels, height // SIZE_MULTIPLE, width // SIZE_MULTIPLE)
    resize = None
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        resize = (request.seed_resize_from_h // SIZE_MULTIPLE, request.seed_resize_from_w // SIZE_MULTIPLE)
    subseed = request.subseed if request.subseed is not None else 0
    noises = [variation_noise(s, (subseed + i) % (MAX_SEED + 1), request.subseed_strength, shape, resize)
              for i, s in enumerate(seeds)]
    return torch.stack(noises).to(dtype)


def infotext_entries(request: Any) -> dict:
    extra: dict = {}
    if request.subseed_strength > 0:
        extra["Variation seed"] = request.subseed
        extra["Variation seed strength"] = f"{request.subseed_strength:g}"
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        extra["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
    return extra
