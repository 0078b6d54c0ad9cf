"""Hires fix (A1111's ``StableDiffusionProcessingTxt2Img`` with ``enable_hr``):
a first pass at the requested size, an upscale, then an img2img pass at the
larger size on the same components.

1. The target size: ``hr_scale`` times the first pass, or ``hr_resize_x/y``
   (one given: the other keeps the aspect; both: the image is scaled to cover
   them and the overflow cropped from the middle), rounded down to 8 pixels.
2. The upscale: "Latent" variants interpolate the latents (no decode);
   "Lanczos" and "None" decode, resize the image with Lanczos and encode again.
3. The second pass: ``hr_second_pass_steps`` steps (0: the first pass's) at
   ``strength`` (A1111's ``denoising_strength``), the same seeds' noise.
"""
from __future__ import annotations

from typing import Any

from app.engine.types import floor_size

# A1111's upscaler name -> torch interpolate mode and antialias (modules/shared_items.py latent_upscale_modes).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("Lanczos", "None")
HR_UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)


def find_upscaler(name: str) -> str | None:
    """The canonical name, case-insensitive; None if this server has no such upscaler."""
    for known in HR_UPSCALERS:
        if known.lower() == name.strip().lower():
            return known
    return None


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
    """Denoising steps the second pass runs (diffusers' img2img: int(steps * strength))."""
    steps = request.hr_second_pass_steps or request.steps
    return min(int(steps * request.strength), steps)


def upscale_latents(latents: Any, size: tuple[int, int], cover: tuple[int, int], upscaler: str) -> Any:
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALERS[upscaler]
    scaled = F.interpolate(latents.float(), size=(cover[1] // 8, cover[0] // 8), mode=mode,
                           antialias=antialias).to(latents.dtype)
    return center_crop(scaled, size[0] // 8, size[1] // 8)


def center_crop(latents: Any, w: int, h: int) -> Any:
    top, left = (latents.shape[-2] - h) // 2, (latents.shape[-1] - w) // 2
    return latents[..., top:top + h, left:left + w]


def upscale_images(images: list, size: tuple[int, int], cover: tuple[int, int]) -> list:
    from PIL import Image

    out = []
    for im in images:
        big = im.resize(cover, Image.Resampling.LANCZOS)
        left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
        out.append(big.crop((left, top, left + size[0], top + size[1])))
    return out


def run(pipe, img2img, request: Any, width: int, height: int, kwargs: dict, phase: dict,
        generators: Any) -> tuple[Any, dict]:
    """Both passes; ``phase`` tells the step callback which pass runs
    (offset and total steps). Returns the second pass's output and infotext entries."""
    size = target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    cover = cover_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
    cover = (max(cover[0], size[0]), max(cover[1], size[1]))
    latent = request.hr_upscaler in LATENT_UPSCALERS
    phase.update(offset=0, total=request.steps + second_pass_steps(request))
    first = pipe(width=width, height=height, output_type="latent" if latent else "pil", **kwargs)
    if phase.get("stopped"):  # cancelled in the first pass: its partial images, at the first pass's size
        if latent:
            import torch

            with torch.no_grad():
                decoded = pipe.vae.decode(first.images / pipe.vae.config.scaling_factor, return_dict=False)[0]
            first.images = pipe.image_processor.postprocess(decoded)
        return first, {}
    if latent:
        image: Any = upscale_latents(first.images, size, cover, request.hr_upscaler)
    else:
        image = upscale_images(first.images, size, cover)
    phase.update(offset=request.steps)
    second = dict(kwargs, num_inference_steps=request.hr_second_pass_steps or request.steps, generator=generators())
    output = img2img(image=image, strength=request.strength, **second)
    extra: dict = {}
    if request.hr_resize_x or request.hr_resize_y:
        extra["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    else:
        extra["Hires upscale"] = f"{request.hr_scale:g}"
    if request.hr_second_pass_steps:
        extra["Hires steps"] = request.hr_second_pass_steps
    extra["Hires upscaler"] = request.hr_upscaler
    return output, extra
