"""Image metadata in AUTOMATIC1111's format, which sd-parsers,
sd-prompt-reader, Civitai and A1111's own PNG Info read back: the
``parameters`` text chunk in a PNG, the EXIF UserComment in a JPEG or WebP."""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from app.engine.base import Quoted
from app.engine.schedulers import find_scheduler, from_infotext, split_name

PARAMETERS_KEY = "parameters"
# The file types an image can be saved as, by suffix.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
LOSSY_QUALITY = 90  # JPEG and WebP
# sd-dynamic-prompts' infotext lines after the settings: the templates an image's prompts were drawn from
TEMPLATE_LABEL = "Template"
NEGATIVE_TEMPLATE_LABEL = "Negative Template"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\0"  # EXIF's character code for UCS-2; A1111 (piexif) writes big-endian after it


def _clean(value: object) -> str:
    # A ',' or ':' inside a value would split the settings line in the readers.
    return re.sub(r"[,:\n\r]", "", str(value)).strip()


def quote(text: str) -> str:
    if not any(ch in text for ch in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(*, prompt: str, negative_prompt: str, steps: int, sampler: str, cfg_scale: float,
             seed: int, width: int, height: int, model: str,
             denoising_strength: float | None = None, extra: dict | None = None, model_hash: str | None = None,
             vae: str | None = None, vae_hash: str | None = None) -> str:
    """The three-part A1111 text: prompt, ``Negative prompt:`` line, settings line.
    ``model_hash`` and ``vae_hash``: A1111's short hashes (10 hex digits of the
    file's SHA-256), written before the name as A1111 writes them."""
    choice = find_scheduler(sampler)
    settings: dict = {"Steps": steps, "Sampler": choice.sampler.name if choice else sampler}
    # A1111 1.9+ names the schedule that ran ("Karras" for DPM++ 2M's Automatic), none when the
    # model's own sigmas ran (Euler's Automatic) or the sampler has its own timesteps (DDIM).
    schedule_type = choice.infotext_schedule if choice else None
    if schedule_type:
        settings["Schedule type"] = schedule_type
    settings.update({
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
    })
    if model_hash:
        settings["Model hash"] = model_hash
    settings["Model"] = _clean(model)
    if vae_hash:
        settings["VAE hash"] = vae_hash
    if vae:
        settings["VAE"] = _clean(vae)
    if denoising_strength is not None:
        settings["Denoising strength"] = f"{denoising_strength:g}"
    for key, value in (extra or {}).items():
        settings[key] = quote(value.replace("\n", " ")) if isinstance(value, Quoted) else _clean(value)
    lines = [prompt.strip()]
    if negative_prompt.strip():
        lines.append("Negative prompt: " + negative_prompt.strip())
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items()))
    return "\n".join(lines)


def png_bytes(image: Image.Image, parameters: str | None) -> bytes:
    """Encode ``image`` as PNG with the ``parameters`` text chunk.
    Deterministic: the same pixels and text give the same bytes."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        # tEXt like A1111; PIL switches to iTXt by itself for non-Latin-1 prompts.
        info.add_text(PARAMETERS_KEY, parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image, parameters))
    return path


def image_format(path: str | os.PathLike) -> str:
    """PIL's format name for a path's suffix; ValueError naming the suffixes we write."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"output: must end in {', '.join(IMAGE_FORMATS)} (got {str(path)!r})")
    return IMAGE_FORMATS[suffix]


def save_image(image: Image.Image, path: str | os.PathLike, parameters: str | None) -> Path:
    """Write ``image`` in the format its suffix names (see IMAGE_FORMATS) with
    the infotext where A1111 puts it: a PNG text chunk, or for JPEG and WebP
    the EXIF UserComment."""
    path = Path(path)
    kind = image_format(path)
    if kind == "PNG":
        return save_png(image, path, parameters)
    exif = Image.Exif()
    if parameters:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + parameters.encode("utf-16-be")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, format=kind, quality=LOSSY_QUALITY, exif=exif)
    return path


def read_parameters(image: Image.Image) -> str | None:
    """The infotext of an opened PNG (``parameters`` chunk), JPEG or WebP (EXIF UserComment), or None."""
    text = getattr(image, "text", None) or {}
    found = text.get(PARAMETERS_KEY) or image.info.get(PARAMETERS_KEY)
    if found:
        return found
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(_UNICODE_PREFIX):
        return comment[len(_UNICODE_PREFIX):].decode("utf-16-be", errors="replace") or None
    return None


def with_templates(infotext: str, entries: dict[str, str]) -> str:
    """The infotext with ``Template: ...`` and ``Negative Template: ...`` lines after it, as the
    extension writes them."""
    return infotext + "".join(f"\n{key}: {value}" for key, value in entries.items())


def split_templates(text: str) -> tuple[str, dict[str, str]]:
    """An infotext without its template lines, and those lines' values by key. The template lines
    follow the settings line: a line starting ``Template:`` or ``Negative Template:`` right after a line
    of settings begins them."""
    lines = text.rstrip("\n").split("\n")
    labels = (TEMPLATE_LABEL + ":", NEGATIVE_TEMPLATE_LABEL + ":")
    start = next((i for i in range(1, len(lines)) if lines[i].startswith(labels)
                  and lines[i - 1].count(": ") >= 3), None)
    if start is None:
        return text, {}
    found: dict[str, list[str]] = {}
    key = None
    for line in lines[start:]:
        label = next((lb for lb in labels if line.startswith(lb)), None)
        if label is not None:
            key = label[:-1]
            found[key] = [line[len(label):].lstrip()]
        elif key is not None:
            found[key].append(line)
    return "\n".join(lines[:start]), {k: "\n".join(v).strip() for k, v in found.items()}


# A value is plain text up to the next comma, or a JSON string (A1111's ``quote``; see Quoted).
_SETTING = re.compile(r'\s*([^:,]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict:
    """Split an A1111 infotext back into prompt, negative prompt and settings,
    as A1111's ``parse_generation_parameters`` does: the last line is the
    settings if it holds at least three ``key: value`` pairs, each other line
    is stripped, and a line starting ``Negative prompt:`` begins the negative
    prompt. (Prompts holding that separator are refused at validation.) sd-dynamic-prompts' lines after
    the settings (``Template:``, ``Negative Template:``) are read as those keys."""
    text, templates = split_templates(text.strip())
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(_SETTING.findall(lines[-1])) >= 3 else ""
    body = lines[:-1] if settings_line else lines
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in body:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    result.update({k.strip(): _unquote(v.strip()) for k, v in _SETTING.findall(settings_line)})
    result.update(templates)
    if "Sampler" in result and "Schedule type" not in result:
        # Old infotexts name the schedule in the sampler ("DPM++ 2M Karras"); read them as 1.9+ writes them.
        # ``from_infotext(Sampler, Schedule type)`` gives the request's scheduler value back.
        known = from_infotext(result["Sampler"])
        if known:
            result["Sampler"], result["Schedule type"] = split_name(known)
    return result


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value
