"""Inpainting with A1111's semantics (``modules/processing.py``,
``modules/masking.py``), on the loaded components.

1. The mask: white repaints. A mask with transparency uses its alpha, else
   its grey level thresholded at 128; ``invert`` swaps the areas; ``blur``
   softens the edge (Gaussian, radius in pixels).
2. Masked content (``inpainting_fill``): 0 fills the masked area with the
   blurred colours around it, 1 keeps the original, 2 replaces its latents
   with noise, 3 with zeros; then img2img at the request's strength.
3. "Only masked" (``full_res``): only the mask's bounding box plus
   ``padding`` pixels, widened to the requested aspect, is generated at the
   requested size, then scaled back and pasted into the whole image.
4. Denoising is A1111's img2img with a latent mask (app/engine/denoise.py):
   a 4-channel UNet (SD 2.1) gets the original latents blended back outside
   the mask after every model call; a 9-channel inpainting UNet also takes
   the mask and the masked image's latents as A1111 gives them.
5. The composite after decoding: the result shows only through the (blurred)
   mask, so pixels outside it are the init image's exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from app.engine.base import Limits, ValidationError, check_bool, check_int, field_range, floor_size

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

FILL_MODES = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


def binary_mask(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> Image.Image:
    """The mask as black/white "L" at ``size``: alpha if it has transparency, else grey > 128."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        grey = alpha if alpha.getextrema() != (255, 255) else mask.convert("L")
    else:
        grey = mask.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    out = grey.point(lambda v: 255 if v > 128 else 0)
    return ImageOps.invert(out) if invert else out


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with ever less blurred
    copies of the unmasked surroundings (A1111's ``masking.fill``)."""
    keep = ImageOps.invert(mask.convert("L"))
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's white pixels grown by ``padding`` (clamped to the image); None if all black."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    w, h = mask.size
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, w), min(y2 + padding, h)


def _grow(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """``lo..hi`` grown about its centre to ``want`` long, shifted back inside ``0..limit``."""
    grow = int(want - (hi - lo))
    lo -= grow // 2
    hi += grow - grow // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        hi, lo = min(hi - lo, limit), 0
    return lo, hi


def expand_to_aspect(box: tuple[int, int, int, int], width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """``box`` widened (or heightened) about its centre to the aspect of width x height, within the image."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:  # too wide: grow the height
        y1, y2 = _grow(y1, y2, (x2 - x1) / ratio, image_h)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * ratio, image_w)
    return x1, y1, x2, y2


def only_masked_box(overlay: Image.Image, width: int, height: int, padding: int) -> tuple[int, int, int, int] | None:
    """Only masked's crop box: around the (blurred) mask plus ``padding``, at the aspect of width x height."""
    region = crop_region(overlay, padding)
    return None if region is None else expand_to_aspect(region, width, height, *overlay.size)


def request_crop_box(request: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop box of a request's only-masked inpainting (None: not one, or nothing masked), as ``plan``
    finds it: what ControlNet units crop their input images to."""
    if request.mask is None or not request.inpaint_full_res or request.init_image is None:
        return None
    overlay = blur_mask(binary_mask(request.mask, request.init_image.size, request.inpainting_mask_invert),
                        request.mask_blur)
    return only_masked_box(overlay, width, height, request.inpaint_full_res_padding)


@dataclass
class InpaintPlan:
    """What to denoise (``image``/``mask`` at the working size) and how to put
    the result back (``original`` with ``overlay_mask``, into ``paste_box``)."""

    image: Image.Image  # RGB at the working size, masked content applied for fill 0
    mask: Image.Image  # L at the working size, blurred
    original: Image.Image  # what the result is composited onto: the output's size
    overlay_mask: Image.Image  # L, original's size: where the result shows
    paste_box: tuple[int, int, int, int] | None  # only-masked: the region the result goes back into


def plan(init: Image.Image, mask: Image.Image, width: int, height: int, *, blur: int, invert: bool,
         fill: int, full_res: bool, padding: int) -> InpaintPlan:
    init = init.convert("RGB")
    box = None
    if full_res:
        overlay = blur_mask(binary_mask(mask, init.size, invert), blur)
        box = only_masked_box(overlay, width, height, padding)
        original = init
        if box is not None:
            image = init.crop(box).resize((width, height), Image.Resampling.LANCZOS)
            work_mask = overlay.crop(box).resize((width, height), Image.Resampling.LANCZOS)
        else:  # nothing masked: the whole image, which the composite then keeps as it was
            image = init.resize((width, height), Image.Resampling.LANCZOS)
            work_mask = overlay.resize((width, height), Image.Resampling.LANCZOS)
    else:
        original = init if init.size == (width, height) else init.resize((width, height), Image.Resampling.LANCZOS)
        overlay = blur_mask(binary_mask(mask, (width, height), invert), blur)
        image, work_mask = original, overlay
    if fill == 0:
        image = fill_masked(image, work_mask)
    return InpaintPlan(image=image, mask=work_mask, original=original, overlay_mask=overlay, paste_box=box)


def composite(generated: Image.Image, p: InpaintPlan) -> Image.Image:
    """The output: the original with the result showing through the mask only."""
    if p.paste_box is not None:
        x1, y1, x2, y2 = p.paste_box
        layer = p.original.copy()
        layer.paste(generated.convert("RGB").resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
    else:
        layer = generated.convert("RGB")
        if layer.size != p.original.size:  # nothing was masked in only-masked mode
            layer = layer.resize(p.original.size, Image.Resampling.LANCZOS)
    return Image.composite(layer, p.original, p.overlay_mask)


def latent_mask(mask: Image.Image, width: int, height: int) -> Any:
    """The working mask at latent size, rounded to 0/1 (A1111's ``latmask`` with ``mask_round``): 1 repaints."""
    import torch

    small = mask.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    values = np.around(np.asarray(small, dtype=np.float32)[..., 0] / 255.0)
    return torch.from_numpy(values)[None, None]


def image_conditioning(denoiser: Any, p: InpaintPlan, latents: Any) -> Any:
    """What a 9-channel inpainting UNet takes beside the latents (A1111's inpainting_image_conditioning,
    mask weight 1): the rounded mask at latent size and the latents of the image with the masked area
    blanked."""
    import torch
    import torch.nn.functional as F

    mask = torch.from_numpy(np.around(np.asarray(p.mask.convert("L"), dtype=np.float32) / 255.0))[None, None]
    pixels = torch.from_numpy(np.asarray(p.image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    blanked = (pixels * (1.0 - mask)).clamp(0, 1)
    blanked_latents = denoiser.encode([Image.fromarray((blanked[0].permute(1, 2, 0).numpy() * 255).round()
                                                       .astype(np.uint8))])
    small = F.interpolate(mask, size=latents.shape[-2:]).to(blanked_latents)
    cond = torch.cat([small, blanked_latents], dim=1)
    return cond.expand(latents.shape[0], -1, -1, -1)


def run(denoiser: Any, request: Any, width: int, height: int, prompt: str,
        on_step: Any) -> tuple[Any, InpaintPlan, dict, bool]:
    """Denoise the request's masked area (A1111's img2img with a mask): the latents, the plan to
    composite with after decoding, infotext entries, and whether the run was interrupted."""
    from app.engine.sampling import run as sampling

    fill = request.inpainting_fill
    p = plan(request.init_image, request.mask, width, height, blur=request.mask_blur,
             invert=request.inpainting_mask_invert, fill=fill, full_res=request.inpaint_full_res,
             padding=request.inpaint_full_res_padding)
    count = len(denoiser.seeds)
    init = denoiser.encode([p.image]).expand(count, -1, -1, -1).to(denoiser.device)
    mask = latent_mask(p.mask, init.shape[-1], init.shape[-2]).to(init)
    if fill == 2:  # latent noise: the masked area starts as the seeds' noise
        init = init * (1 - mask) + denoiser.random_latents(tuple(init.shape[1:])).to(init) * mask
    elif fill == 3:  # latent nothing
        init = init * (1 - mask)
    image_cond = None
    if denoiser.wrappers.unet.config.in_channels == 9:
        image_cond = image_conditioning(denoiser, p, init).to(init)
    conds = denoiser.conditioning(prompt, sampling.total_steps(denoiser.choice, request.steps))
    result = denoiser.img2img(conds, init, request.steps, request.strength, on_step,
                              mask=mask.expand_as(init), image_cond=image_cond)
    extra: dict = {"Mask blur": request.mask_blur}
    if request.inpainting_mask_invert:
        extra["Mask mode"] = "Inpaint not masked"
    extra["Masked content"] = FILL_MODES[fill]
    if request.outpaint:
        extra["Outpaint"] = f"{request.outpaint}px {' '.join(outpaint_sides(request.outpaint_directions))}"
    if request.inpaint_full_res:
        extra["Inpaint area"] = "Only masked"
        extra["Masked area padding"] = request.inpaint_full_res_padding
    return result.latents, p, extra, result.interrupted


OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")


def outpaint_canvas(init: Image.Image, pixels: int, directions: tuple[str, ...]) -> tuple[Image.Image, Image.Image]:
    """The init image on a canvas grown by ``pixels`` on each named side (more where needed to keep
    the size a multiple of 8), and the mask of the new area. The new area starts as the edge
    pixels stretched outwards, a neutral start that masked content "fill" then smooths."""
    init = init.convert("RGB")
    w, h = init.size
    grow = {d: (pixels if d in directions else 0) for d in OUTPAINT_DIRECTIONS}
    for first, second, size in (("left", "right", w), ("up", "down", h)):
        short = -(size + grow[first] + grow[second]) % 8
        side = second if grow[second] or not grow[first] else first
        grow[side] += short
    left, top = grow["left"], grow["up"]
    canvas_size = (w + left + grow["right"], h + top + grow["down"])
    canvas = init.resize(canvas_size, Image.Resampling.NEAREST)  # a rough start beyond the old edges
    canvas.paste(init, (left, top))
    mask = Image.new("L", canvas_size, 255)
    mask.paste(0, (left, top, left + w, top + h))
    return canvas, mask


def outpaint_sides(directions: str) -> tuple[str, ...]:
    """``outpaint_directions`` ("left,up") as its sides, lower case."""
    return tuple(side.strip().lower() for side in directions.split(",") if side.strip())


def check(request: GenerationRequest, limits: Limits) -> None:
    """The inpainting and outpainting fields, and the mask."""
    check_int("mask_blur", request.mask_blur)
    low, high = field_range("mask_blur")
    if not low <= request.mask_blur <= high:
        raise ValidationError("mask_blur", request.mask_blur, f"must be between {low} and {high} pixels")
    check_int("inpainting_fill", request.inpainting_fill)
    if request.inpainting_fill not in FILL_MODES:
        raise ValidationError("inpainting_fill", request.inpainting_fill,
                              "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)")
    check_int("inpaint_full_res_padding", request.inpaint_full_res_padding)
    low, high = field_range("inpaint_full_res_padding")
    if not low <= request.inpaint_full_res_padding <= high:
        raise ValidationError("inpaint_full_res_padding", request.inpaint_full_res_padding,
                              f"must be between {low} and {high} pixels")
    check_bool("inpaint_full_res", request.inpaint_full_res)
    check_bool("inpainting_mask_invert", request.inpainting_mask_invert)
    check_int("outpaint", request.outpaint)
    low, high = field_range("outpaint")
    if not low <= request.outpaint <= high:
        raise ValidationError("outpaint", request.outpaint, f"must be between {low} (off) and {high} pixels")
    if request.outpaint:
        _check_outpaint(request, limits)
    if request.mask is None:
        return
    if not (hasattr(request.mask, "size") and hasattr(request.mask, "convert")):
        raise ValidationError("mask", type(request.mask).__name__, "must be an image")
    if request.init_image is None:
        raise ValidationError("mask", "mask", "needs an init image to inpaint")
    w, h = request.mask.size
    if w * h > limits.max_pixels:
        raise ValidationError("mask", f"{w}x{h}", f"is more than {limits.max_pixels} pixels")


def _check_outpaint(request: GenerationRequest, limits: Limits) -> None:
    directions = request.outpaint_directions
    sides = outpaint_sides(directions) if isinstance(directions, str) else ()
    if not sides or any(side not in OUTPAINT_DIRECTIONS for side in sides):
        raise ValidationError("outpaint_directions", directions,
                              "must name one or more of " + ", ".join(OUTPAINT_DIRECTIONS) + ", comma-separated")
    if request.init_image is None:
        raise ValidationError("outpaint", request.outpaint, "needs an init image to extend")
    if request.mask is not None:
        raise ValidationError("mask", "mask", "outpainting makes its own mask; send one or the other")
    w, h = request.init_image.size
    if request.width not in (None, floor_size(w)) or request.height not in (None, floor_size(h)):
        raise ValidationError("width", request.width, "outpainting keeps the init image's size and adds to it; "
                                                      "leave out width and height")
    grow_w = request.outpaint * sum(side in sides for side in ("left", "right"))
    grow_h = request.outpaint * sum(side in sides for side in ("up", "down"))
    new_w, new_h = w + grow_w + 8, h + grow_h + 8  # the most rounding to 8 can add
    if new_w > limits.max_width or new_h > limits.max_height or new_w * new_h > limits.max_pixels:
        raise ValidationError("outpaint", request.outpaint, f"makes a canvas of about {new_w}x{new_h}; the "
                                                            f"limits are {limits.max_width}x{limits.max_height} "
                                                            f"and {limits.max_pixels} pixels")
