"""A1111's Extras as a job (issue #24): upscale an image with one or two
upscalers (the second blended in at a visibility), then restore faces with
GFPGAN and CodeFormer, in A1111's order (its postprocessing scripts' order:
upscale 1000, GFPGAN 2000, CodeFormer 3000).

The request is a ``GenerationRequest`` whose ``extras`` holds A1111's extras
fields and whose ``init_image`` is the source, so an Extras job is queued,
stored (SQLite or Redis), run by the GPU worker and kept in the gallery like
any generation. The result's infotext is the source's with A1111's
postprocessing keys (``Postprocess upscale by: 2, Postprocess upscaler: ...``,
``GFPGAN visibility``, ``CodeFormer visibility``, ``CodeFormer weight``).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image

from app.engine.base import GenerationResult, Limits, StepInfo, ValidationError
from app.engine.metadata import parse_infotext, quote

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest

# A1111's API defaults (ExtrasBaseRequest), and ``source_infotext``: the source image's own infotext.
EXTRAS_DEFAULTS: dict[str, Any] = {
    "resize_mode": 0,  # 0: scale by upscaling_resize, 1: scale to upscaling_resize_w x upscaling_resize_h
    "upscaling_resize": 2,
    "upscaling_resize_w": 512,  # 0 (our addition): from the other side, keeping the aspect
    "upscaling_resize_h": 512,
    "upscaling_crop": True,
    "upscaler_1": "None",  # "None": a Lanczos resize (see run_extras)
    "upscaler_2": "None",
    "extras_upscaler_2_visibility": 0,
    "gfpgan_visibility": 0,
    "codeformer_visibility": 0,
    "codeformer_weight": 0,
    "source_infotext": "",
}
FACE_FIELDS = ("gfpgan_visibility", "codeformer_visibility")
UNIT_FIELDS = ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight")


def upscaler_names() -> list[str]:
    """Every upscaler as /sdapi/v1/upscalers lists them, in its order ("None" first: SD upscale's
    ``upscaler_index`` counts in this list)."""
    from app.engine import upscalers

    return [u.name for u in upscalers.available()]


def check_upscaler(field: str, name: Any) -> str:
    """The upscaler's own name (names match case-insensitively), or a ValidationError naming ``field``; a
    built-in model that cannot be downloaded (offline) and is not there yet is refused now, before any work."""
    from app.engine import upscalers
    from app.engine.upscalers.download import check_reachable

    found = upscalers.find(name)
    if found is None:
        raise ValidationError(field, name, "no such upscaler on this server; see /sdapi/v1/upscalers")
    check_reachable(field, found.name)
    return found.name


def faces_available() -> bool:
    try:
        import app.engine.faces  # noqa: F401  (issue #24's face restoration; absent on older builds)
    except ImportError:
        return False
    return True


def extras_values(values: dict) -> dict:
    """A1111's defaults filled in for the fields not given (None: not given)."""
    return {**EXTRAS_DEFAULTS, **{k: v for k, v in values.items() if v is not None}}


def validate_extras(request: "GenerationRequest", limits: Limits) -> None:
    """Every extras field, and the result's size against the limits, before anything is queued."""
    extras = request.extras
    if not isinstance(extras, dict):
        raise ValidationError("extras", extras, "must be an object of A1111's extras fields")
    for key in extras:
        if key not in EXTRAS_DEFAULTS:
            raise ValidationError(key, extras[key], "unknown field; the fields are " + ", ".join(EXTRAS_DEFAULTS))
    e = extras_values(extras)
    image = request.init_image
    if image is None or not hasattr(image, "size"):
        raise ValidationError("image", None, "is required: an uploaded image or a gallery image")
    for field in ("upscaler_1", "upscaler_2"):
        if field in extras or e[field] != "None":
            extras[field] = e[field] = check_upscaler(field, e[field])
    for field in UNIT_FIELDS:
        value = e[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValidationError(field, value, "must be a number between 0 and 1")
    if any(e[field] > 0 for field in FACE_FIELDS) and not faces_available():
        field = next(f for f in FACE_FIELDS if e[f] > 0)
        raise ValidationError(field, e[field], "face restoration is not available on this server")
    if e["resize_mode"] not in (0, 1) or isinstance(e["resize_mode"], bool):
        raise ValidationError("resize_mode", e["resize_mode"], "must be 0 (scale by) or 1 (scale to)")
    if not isinstance(e["upscaling_crop"], bool):
        raise ValidationError("upscaling_crop", e["upscaling_crop"], "must be true or false")
    if not isinstance(e["source_infotext"], str):
        raise ValidationError("source_infotext", e["source_infotext"], "must be a string")
    check_extras_size(image.size, e, limits)


def check_extras_size(size: tuple[int, int], e: dict, limits: Limits) -> None:
    """The result's size against the limits, named as the extras field that asked for it; from an
    upload's header, before its pixels are decoded, and again at validation."""
    from app.engine.upscale import upscale_size

    try:
        upscale_size(size, limits=limits, **size_args(e))
    except ValidationError as exc:
        field = {"scale": "upscaling_resize", "width": "upscaling_resize_w", "height": "upscaling_resize_h"}
        raise ValidationError(field.get(exc.field, exc.field), exc.value, exc.message) from None


def size_args(e: dict) -> dict:
    """``upscale``'s size arguments for the extras fields."""
    if e["resize_mode"] == 1:
        return {"scale": None, "width": e["upscaling_resize_w"] or None, "height": e["upscaling_resize_h"] or None,
                "crop": e["upscaling_crop"]}
    return {"scale": e["upscaling_resize"], "width": None, "height": None, "crop": True}


def run_extras(request: "GenerationRequest", limits: Limits, on_step: Callable[[StepInfo], None] | None = None,
               cancel: threading.Event | None = None, model: str = "") -> "GenerationResult":
    """The Extras job's one image; progress is counted in hundredths of each operation (upscale, restorers)."""
    from app.engine.base import GenerationCancelled
    from app.engine.upscale import upscale

    started = time.perf_counter()
    e = extras_values(request.extras or {})
    image = request.init_image.convert("RGB")
    info: dict[str, Any] = {}
    # Each stage gets ``part(done, total)`` for its progress within (tiles of a model upscaler, faces).
    stages: list[Callable[[Image.Image, Callable[[int, int], None]], Image.Image]] = []
    args = size_args(e)
    # "None" still resizes, with Lanczos, as A1111's "None" upscaler did in its extras before 1.0 (and as
    # this server's /api/upscale always has); only "None" at the same size is no upscale at all.
    if e["upscaler_1"] != "None" or _upscaled_size(image.size, args, limits) != image.size:

        def upscaled(im: Image.Image, part: Callable[[int, int], None]) -> Image.Image:
            if e["resize_mode"] == 1:
                info["Postprocess upscale to"] = f"{e['upscaling_resize_w']}x{e['upscaling_resize_h']}"
            else:
                info["Postprocess upscale by"] = e["upscaling_resize"]
            out = upscale(im, upscaler=e["upscaler_1"], limits=limits, progress=part, **args)
            info["Postprocess upscaler"] = e["upscaler_1"]
            if e["upscaler_2"] != "None" and e["extras_upscaler_2_visibility"] > 0:
                second = upscale(im, upscaler=e["upscaler_2"], limits=limits, progress=part, **args)
                out = Image.blend(out, second.convert(out.mode), e["extras_upscaler_2_visibility"])
                info["Postprocess upscaler 2"] = e["upscaler_2"]
            return out

        stages.append(upscaled)
    if e["gfpgan_visibility"] > 0:
        def gfpgan(im: Image.Image, part: Callable[[int, int], None]) -> Image.Image:
            info["GFPGAN visibility"] = round(e["gfpgan_visibility"], 3)
            return _restore(im, part, "GFPGAN", e["gfpgan_visibility"])

        stages.append(gfpgan)
    if e["codeformer_visibility"] > 0:
        def codeformer(im: Image.Image, part: Callable[[int, int], None]) -> Image.Image:
            info["CodeFormer visibility"] = round(e["codeformer_visibility"], 3)
            info["CodeFormer weight"] = round(e["codeformer_weight"], 3)
            return _restore(im, part, "CodeFormer", e["codeformer_visibility"], e["codeformer_weight"])

        stages.append(codeformer)
    for done, stage in enumerate(stages):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(done, len(stages))
        def part(step: int, steps: int, at: int = done) -> None:
            if on_step is not None and steps:  # progress in hundredths of a stage
                on_step(StepInfo(step=at * 100 + min(99, 100 * step // steps), total=100 * len(stages), latents=None))

        image = stage(image, part)
        if on_step is not None:
            on_step(StepInfo(step=100 * (done + 1), total=100 * len(stages), latents=None))
    text = extras_infotext(e["source_infotext"], postprocess_text(info))
    seed = request.seed if request.seed is not None else 0
    return GenerationResult(images=[image], seeds=[seed], infotexts=[text], request=request, model=model,
                            width=image.width, height=image.height, seconds=time.perf_counter() - started)


def _upscaled_size(size: tuple[int, int], args: dict, limits: Limits) -> tuple[int, int]:
    from app.engine.upscale import upscale_size

    return upscale_size(size, limits=limits, **args)[0]


def _restore(image: Image.Image, part: Callable[[int, int], None], restorer: str, visibility: float,
             weight: float = 0.5) -> Image.Image:
    from app.engine.faces import restore_faces

    return restore_faces(image, restorer=restorer, visibility=visibility, codeformer_weight=weight, progress=part)


def postprocess_text(info: dict) -> str:
    """A1111's postprocessing infotext: ``key: value`` pairs, values quoted when they hold , or :."""
    return ", ".join(f"{k}: {quote(str(v))}" for k, v in info.items() if v is not None)


def extras_infotext(source: str, postprocess: str) -> str:
    """The source's infotext with the postprocessing keys added to its settings line (a new line
    when it has none), so the gallery, png-info and "reuse settings" read both."""
    source = source.strip()
    if not postprocess or not source:
        return source or postprocess
    parsed = parse_infotext(source)
    has_settings = len(parsed) > 2
    return f"{source}, {postprocess}" if has_settings else f"{source}\n{postprocess}"


def source_prompts(source: str) -> tuple[str, str]:
    """The prompt and negative prompt of a source infotext (the job's, for the gallery's search)."""
    if not source.strip():
        return "", ""
    parsed = parse_infotext(source)
    return parsed["prompt"], parsed["negative_prompt"]
