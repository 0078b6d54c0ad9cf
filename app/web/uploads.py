"""Untrusted images from requests (init images, PNG Info): base64 or data
URLs or raw bytes, checked for size before any pixel is decoded: against the
upload limits always, and against what the request will do with the image
(a mask's, an upscale's size) where that is smaller. A PNG of a few KB can
claim 4096x4096, 64 MB of pixels once decoded."""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Callable

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from app.engine.metadata import read_parameters
from app.engine.types import ValidationError
from app.web.errors import ApiError
from app.web.settings import engine_limits

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# A compressed text chunk (zTXt, iTXt) inflates about 1000x: Pillow's own ceiling (64 MB of text
# per image) let an 87 KB upload cost a GB of memory and a 390 MB answer from png-info. An
# A1111 infotext is a few KB and a ComfyUI workflow a few hundred; 2 MB in all is plenty.
MAX_TEXT_BYTES = 2 << 20
PngImagePlugin.MAX_TEXT_CHUNK = min(PngImagePlugin.MAX_TEXT_CHUNK, MAX_TEXT_BYTES)
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, MAX_TEXT_BYTES)
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_base64(text, field: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string or ``data:image/...;base64,`` URL."""
    if not isinstance(text, str):
        raise ApiError(400, f"{field}: must be a base64 string or a data URL", field, type(text).__name__)
    body = _DATA_URL.sub("", text.strip(), count=1)
    body = re.sub(r"\s+", "", body)
    # 4 base64 characters carry 3 bytes: refuse before decoding a huge string.
    if len(body) * 3 // 4 > max_bytes:
        raise ApiError(413, f"{field}: the image is larger than the limit of {max_bytes} bytes", field,
                       f"about {len(body) * 3 // 4} bytes")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{field}: not valid base64 ({exc})", field, text[:40]) from exc


def open_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """An opened image whose header has been checked; pixels not decoded yet."""
    if len(data) > max_bytes:
        raise ApiError(413, f"{field}: the image is larger than the limit of {max_bytes} bytes", field,
                       f"{len(data)} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size below
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{field}: the image claims more than the limit of {max_pixels} pixels ({exc})",
                       field, f"{len(data)} bytes") from exc
    except ValueError as exc:
        if "MAX_TEXT" in str(exc) or "text chunks" in str(exc):
            raise _too_much_text(field, data) from exc
        raise ApiError(400, f"{field}: not a PNG, JPEG, WebP, BMP or GIF image", field, f"{len(data)} bytes") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ApiError(400, f"{field}: not a PNG, JPEG, WebP, BMP or GIF image", field, f"{len(data)} bytes") from exc
    w, h = image.size
    # Checked from the header, before .load(): a small file may claim a huge canvas.
    if w * h > max_pixels or w < 1 or h < 1:
        raise ApiError(413, f"{field}: the image is {w}x{h} pixels; the limit is {max_pixels} pixels", field, f"{w}x{h}")
    return image


def load_rgb(image: Image.Image, field: str, fit: tuple[int, int] | None = None) -> Image.Image:
    """Decode pixels as RGB; shrink (keeping the aspect) to fit within ``fit``."""
    try:
        image.load()
        rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{field}: the image data is broken ({exc})", field, None) from exc
    if fit and (rgb.width > fit[0] or rgb.height > fit[1]):
        rgb.thumbnail(fit, Image.Resampling.LANCZOS)
    return rgb


def decode_init_image(value, config, field: str = "init_image", fit: bool = True,
                      check_size: Callable[[tuple[int, int]], object] | None = None) -> Image.Image:
    """A request's image (base64/data URL string or raw bytes) as RGB, within the upload
    limits. ``fit``: an init image is shrunk to fit the largest generation size; an
    image to upscale is not (its result's size is what the limits check). ``check_size``
    gets the size from the header and raises if the request cannot use it, before decoding."""
    data = value if isinstance(value, (bytes, bytearray)) else decode_base64(value, field, config["MAX_UPLOAD_BYTES"])
    image = open_image(bytes(data), field, config["MAX_UPLOAD_BYTES"], config["MAX_UPLOAD_PIXELS"])
    if check_size is not None:
        check_size(image.size)
    return load_rgb(image, field, fit=(config["MAX_WIDTH"], config["MAX_HEIGHT"]) if fit else None)


def _too_much_text(field: str, data: bytes) -> ApiError:
    return ApiError(413, f"{field}: the image's text chunks hold more than {MAX_TEXT_BYTES >> 20} MB once inflated",
                    field, f"{len(data)} bytes")


def decode_mask(value, config, field: str = "mask") -> Image.Image:
    """An inpainting mask (base64/data URL string or raw bytes), pixels decoded, its mode kept
    (the engine reads its alpha if it has transparency, else its grey level)."""
    data = value if isinstance(value, (bytes, bytearray)) else decode_base64(value, field, config["MAX_UPLOAD_BYTES"])
    image = open_image(bytes(data), field, config["MAX_UPLOAD_BYTES"], config["MAX_UPLOAD_PIXELS"])
    # Validation refuses a mask larger than the largest image made (GenerationRequest.validate):
    # said here from the header, as it would be after decoding up to MAX_UPLOAD_PIXELS of it.
    w, h = image.size
    max_pixels = engine_limits(config).max_pixels
    if w * h > max_pixels:
        raise ValidationError(field, f"{w}x{h}", f"is more than {max_pixels} pixels")
    try:
        image.load()
        return image.convert("RGBA") if image.mode in ("RGBA", "LA", "PA", "P") else image.convert("L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{field}: the image data is broken ({exc})", field, None) from exc


def png_info(value, config, field: str = "image") -> tuple[str | None, dict]:
    """The ``parameters`` text and the other text chunks of an uploaded image."""
    data = decode_base64(value, field, config["MAX_UPLOAD_BYTES"])
    image = open_image(data, field, config["MAX_UPLOAD_BYTES"], config["MAX_UPLOAD_PIXELS"])
    try:
        # PIL reads text chunks that follow the pixels only by decoding the whole file.
        parameters = read_parameters(image)
    except ValueError as exc:
        if "MAX_TEXT" in str(exc) or "text chunks" in str(exc):
            raise _too_much_text(field, data) from exc
        raise ApiError(400, f"{field}: the image data is broken ({exc})", field, f"{len(data)} bytes") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise ApiError(400, f"{field}: the image data is broken ({exc})", field, f"{len(data)} bytes") from exc
    info = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    return parameters, info
