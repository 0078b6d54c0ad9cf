"""Hires fix (A1111's ``StableDiffusionProcessingTxt2Img`` with ``enable_hr``):
a first pass at the requested size, an upscale, then an img2img pass at the
larger size on the same components.

1. The target size: ``hr_scale`` times the first pass, or ``hr_resize_x/y``
   (one given: the other keeps the aspect; both: the image is scaled to cover
   them and the overflow cropped from the middle), rounded down to 8 pixels.
2. The upscale: "Latent" variants interpolate the latents (no decode); any
   other upscaler (Lanczos, None, Nearest, or a model such as R-ESRGAN 4x+ from
   app/engine/upscalers) decodes, upscales the image and encodes it again.
3. The second pass: ``hr_second_pass_steps`` steps (0: the first pass's) at
   ``strength`` (A1111's ``denoising_strength``), with fresh noise from the
   same seeds at the new size and the prompt schedule counted past the
   first pass's steps (A1111's hires offsets for prompt editing).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from app.engine import upscalers
from app.engine.base import DEFAULT_LIMITS, Limits, ValidationError, check_bool, check_int, check_number, field_range, floor_size

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

# A1111's upscaler name -> torch interpolate mode and antialias (modules/shared_items.py latent_upscale_modes).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def hr_upscalers() -> list[str]:
    """What ``hr_upscaler`` may be, in A1111's order: the latent modes, then the image upscalers."""
    return [*LATENT_UPSCALERS, *upscalers.names()]


def find_upscaler(name: str) -> str | None:
    """The canonical name, case-insensitive; None if this server has no such upscaler. Reads no model file."""
    for known in LATENT_UPSCALERS:
        if known.lower() == name.strip().lower():
            return known
    found = upscalers.find(name)
    return found.name if found else None


def cover_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The size the first pass is upscaled to, before any crop (A1111's hr_upscale_to_x/y)."""
    if not resize_x and not resize_y:
        return int(width * scale), int(height * scale)
    if not resize_y:
        return resize_x, resize_x * height // width
    if not resize_x:
        return resize_y * width // height, resize_y
    if width / height < resize_x / resize_y:
        return resize_x, resize_x * height // width
    return resize_y * width // height, resize_y


def target_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int]:
    """The final image size: the cover size, cropped to hr_resize_x/y when both are given; multiples of 8."""
    x, y = cover_size(width, height, scale, resize_x, resize_y)
    if resize_x and resize_y:
        x, y = resize_x, resize_y
    return floor_size(x), floor_size(y)


def second_pass_steps(request: Any) -> int:
    """Denoising steps the second pass runs: A1111 runs exactly ``hr_second_pass_steps`` (or the
    first pass's steps), stretching its schedule so that many fall below the denoising strength."""
    return request.hr_second_pass_steps or request.steps


def upscale_latents(latents: Any, size: tuple[int, int], cover: tuple[int, int], upscaler: str) -> Any:
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALERS[upscaler]
    scaled = F.interpolate(latents.float(), size=(cover[1] // 8, cover[0] // 8), mode=mode,
                           antialias=antialias).to(latents.dtype)
    return center_crop(scaled, size[0] // 8, size[1] // 8)


def center_crop(latents: Any, w: int, h: int) -> Any:
    top, left = (latents.shape[-2] - h) // 2, (latents.shape[-1] - w) // 2
    return latents[..., top:top + h, left:left + w]


def upscale_images(images: list, size: tuple[int, int], cover: tuple[int, int], upscaler: str = "Lanczos",
                   device: str | None = None) -> list:
    """The decoded first pass upscaled to ``cover`` and cropped to ``size``; a model upscaler runs on
    ``device`` (the engine's: cuda:1 for an engine there, not the first GPU)."""
    out = []
    for im in images:
        big = upscalers.upscale_to(upscaler, im, cover, device=device)
        left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
        out.append(big.crop((left, top, left + size[0], top + size[1])))
    return out


def run(denoiser: Any, request: Any, width: int, height: int, prompt: str, on_step: Callable[[int, Any], None],
        steps_done: Callable[[], int]) -> tuple[Any, list, dict, bool]:
    """Both passes (A1111's txt2img with ``sample_hr_pass``). Returns the final latents (None when
    decoded images are returned instead), the first pass's images when cancelled there, infotext
    entries, and whether the run was interrupted. ``on_step`` gets the step count over both passes."""
    from app.engine.sampling import run as sampling

    size = target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    cover = cover_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    cover = (max(cover[0], size[0]), max(cover[1], size[1]))
    total = sampling.total_steps(denoiser.choice, request.steps)
    first = denoiser.txt2img(denoiser.conditioning(prompt, total), width, height, on_step)
    if first.interrupted:  # cancelled in the first pass: its partial images, at the first pass's size
        return None, [] if first.latents is None else denoiser.decode(first.latents), {}, True
    if request.hr_upscaler in LATENT_UPSCALERS:
        latents = upscale_latents(first.latents, size, cover, request.hr_upscaler)
    else:
        latents = denoiser.encode(upscale_images(denoiser.decode(first.latents), size, cover, request.hr_upscaler,
                                                  str(denoiser.device)))
    extra = _infotext_entries(request)
    if request.strength == 0:  # A1111's second pass then has an empty schedule: the upscale is the result
        return latents, [], extra, False
    hr_steps = second_pass_steps(request)
    conds = denoiser.conditioning(prompt, total, sampling.total_steps(denoiser.choice, hr_steps))
    offset = steps_done()
    second = denoiser.img2img(conds, latents, hr_steps, request.strength,
                              lambda step, denoised: on_step(offset + step, denoised), fixed_steps=True)
    return second.latents, [], extra, second.interrupted


def _infotext_entries(request: Any) -> dict:
    extra: dict = {}
    if request.hr_resize_x or request.hr_resize_y:
        extra["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    else:
        extra["Hires upscale"] = f"{request.hr_scale:g}"
    if request.hr_second_pass_steps:
        extra["Hires steps"] = request.hr_second_pass_steps
    extra["Hires upscaler"] = request.hr_upscaler
    return extra


def check(request: GenerationRequest, limits: Limits) -> None:
    """The hires fix's fields (``hr_upscaler`` made canonical); with ``enable_hr``, what it cannot
    run with and its final size. Also run without ``enable_hr``: the fields are the form's."""
    check_bool("enable_hr", request.enable_hr)
    check_number("hr_scale", request.hr_scale)
    low, high = field_range("hr_scale")
    if not low <= request.hr_scale <= high:
        raise ValidationError("hr_scale", request.hr_scale, f"must be between {low} and {high}")
    for name in ("hr_resize_x", "hr_resize_y"):
        check_int(name, getattr(request, name))
        if getattr(request, name) < 0:
            raise ValidationError(name, getattr(request, name), "must be 0 (from hr_scale) or a size in pixels")
    check_int("hr_second_pass_steps", request.hr_second_pass_steps)
    if not 0 <= request.hr_second_pass_steps <= limits.max_steps:
        raise ValidationError("hr_second_pass_steps", request.hr_second_pass_steps,
                              f"must be between 0 (the first pass's) and {limits.max_steps}")
    upscaler = find_upscaler(request.hr_upscaler) if isinstance(request.hr_upscaler, str) else None
    if upscaler is None:
        raise ValidationError("hr_upscaler", request.hr_upscaler, "no such upscaler on this server: a latent mode "
                              "or a name from /sdapi/v1/upscalers")
    request.hr_upscaler = upscaler
    if not request.enable_hr:
        return
    from app.engine.upscalers.download import check_reachable

    check_reachable("hr_upscaler", upscaler)  # offline and not downloaded: say so now, not after the first pass
    if request.init_image is not None:
        raise ValidationError("enable_hr", True, "hires fix is for txt2img; leave out the init image")
    if request.save_steps:
        raise ValidationError("save_steps", request.save_steps, "step previews are not kept with hires fix")
    if request.width and request.height:
        check_hires_size(request, request.width, request.height, limits)


def check_hires_size(request: GenerationRequest, width: int, height: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """The hires fix's final size against the limits, naming the field that set it."""
    w, h = target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    field = "hr_resize_x" if request.hr_resize_x or request.hr_resize_y else "hr_scale"
    value = getattr(request, field)
    if min(w, h) < limits.min_size or w > limits.max_width or h > limits.max_height or w * h > limits.max_pixels:
        raise ValidationError(field, value, f"makes a {w}x{h} image; the limits are {limits.max_width}x"
                                            f"{limits.max_height} and {limits.max_pixels} pixels")
