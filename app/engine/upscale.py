"""Upscaling any image (issue #12; A1111's "Extras" tab, single image): by a
factor or to a size, capped by the limits, with any upscaler of the registry
(app/engine/upscalers: Lanczos, Nearest, or a model such as R-ESRGAN 4x+)."""
from __future__ import annotations

from typing import Any

from PIL import Image

from app.engine import upscalers
from app.engine.base import DEFAULT_LIMITS, Limits, ValidationError

MAX_FACTOR = 8.0


def upscale(image: Image.Image, scale: float | None = None, width: int | None = None, height: int | None = None,
            crop: bool = True, upscaler: str = "Lanczos", limits: Limits = DEFAULT_LIMITS,
            progress: upscalers.models.Progress | None = None) -> Image.Image:
    """``image`` resized by ``scale``, or to ``width`` x ``height`` (one of them: the other keeps the
    aspect; both with ``crop``: scaled to cover and cropped in the middle, as A1111's "crop to fit").
    ``upscaler``: a name from the registry (unknown: ValidationError before any work);
    ``progress(tile, tiles)`` while a model runs."""
    entry = upscalers.require(upscaler)
    size, cover = upscale_size(image.size, scale, width, height, crop, limits)
    out = upscalers.upscale_to(entry.name, image, cover, progress)
    if cover != size:
        left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
        out = out.crop((left, top, left + size[0], top + size[1]))
    return out


def upscale_size(size: tuple[int, int], scale: float | None, width: int | None, height: int | None, crop: bool,
                 limits: Limits = DEFAULT_LIMITS) -> tuple[tuple[int, int], tuple[int, int]]:
    """(final size, size before the crop), checked against the limits before any pixel is touched."""
    w, h = size
    if width or height:
        for name, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValidationError(name, value, "must be a positive number of pixels")
        if width and height:
            cover_scale = max(width / w, height / h) if crop else None
            final = (width, height)
            cover = (max(width, round(w * cover_scale)), max(height, round(h * cover_scale))) if cover_scale else final
        elif width:
            final = cover = (width, max(1, round(h * width / w)))
        else:
            assert height
            final = cover = (max(1, round(w * height / h)), height)
    else:
        factor: Any = 2.0 if scale is None else scale
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= MAX_FACTOR:
            raise ValidationError("scale", factor, f"must be greater than 0 and at most {MAX_FACTOR:g}")
        final = cover = (max(1, round(w * factor)), max(1, round(h * factor)))
    field = "width" if width or height else "scale"
    fw, fh = final
    if fw > limits.max_width or fh > limits.max_height or fw * fh > limits.max_pixels or max(cover) > 4 * max(
            limits.max_width, limits.max_height):
        raise ValidationError(field, width or height or scale, f"makes a {fw}x{fh} image; the limits are "
                                                              f"{limits.max_width}x{limits.max_height} and "
                                                              f"{limits.max_pixels} pixels")
    return final, cover
