"""A request's A1111 infotext, both ways: the entries its fields give by their facts
(``about(label=...)`` in app/engine/types.py; app/engine/fields.py) and the request fields an
infotext describes, which the page's PNG drop, "paste parameters" and /sdapi/v1/png-info read.
The text's format itself (writing, splitting, the PNG chunk) is app/engine/metadata.py's."""
from __future__ import annotations

from app.engine.fields import CHANGED, ELSEWHERE, entry_text, kind, parse_value, size_pair
from app.engine.metadata import NEGATIVE_TEMPLATE_LABEL, TEMPLATE_LABEL, parse_infotext
from app.engine.schedulers import from_infotext
from app.engine.types import GenerationRequest, described

# Where the entries written from the fields' facts stood before they were derived from them, kept so that
# an image's infotext stays the same; entries of other fields follow in declaration order.
_ENTRY_ORDER = ("Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise", "Clip skip", "Tiling", "Seed resize from",
                "ENSD", "RNG")


def request_entries(request: GenerationRequest) -> dict:
    """The infotext entries the request's fields give by their facts (``about(label=...)`` in
    app/engine/types.py): a field's value where it differs from its default, or what its own entry
    function writes. Fields whose feature writes their entry (``ELSEWHERE``) are left to it."""
    found: list[tuple[str, object]] = []
    for name, (f, about_) in described().items():
        if not about_.label or about_.write == ELSEWHERE:
            continue
        value = getattr(request, name)
        if callable(about_.write):
            value = about_.write(request)
        elif about_.write == CHANGED:
            value = entry_text(value) if value != f.default else None
        if value is not None:
            found.append((about_.label, value))
    last = len(_ENTRY_ORDER)
    found.sort(key=lambda item: _ENTRY_ORDER.index(item[0]) if item[0] in _ENTRY_ORDER else last)
    return dict(found)


def request_from_infotext(text: str) -> dict:
    """The request fields an A1111 infotext describes (the page's PNG drop and "paste parameters" fill
    exactly these): prompt, size, sampler with its schedule type, seeds, noise (``RNG``: an infotext
    without it was made with A1111's default source, GPU), sampler settings, hires fix, inpainting,
    variation seeds. Keys the infotext lacks are left out; values it cannot give are left out too."""
    p = parse_infotext(text)
    # An image of a dynamic-prompt template gives the template back: with the seed, the same prompt again
    out: dict = {"prompt": p.get(TEMPLATE_LABEL, p["prompt"]),
                 "negative_prompt": p.get(NEGATIVE_TEMPLATE_LABEL, p["negative_prompt"])}

    def number(key: str, kind_: type = float) -> float | int | None:
        return parse_value(kind_, p[key]) if key in p else None

    def put(field: str, value: object) -> None:
        if value is not None:
            out[field] = value

    size = size_pair(p.get("Size"))
    put("width", size[0])
    put("height", size[1])
    for name, (f, about_) in described().items():  # the fields that name their label (app/engine/types.py)
        if about_.label in p:
            text = p[about_.label]
            for key, value in (about_.read(text) if about_.read else {name: parse_value(kind(f), text)}).items():
                put(key, value)
    out.setdefault("randn_source", "GPU")
    if "Sampler" in p:
        put("scheduler", from_infotext(p["Sampler"], p.get("Schedule type")))
    put("eta", number("Eta DDIM") if "Eta DDIM" in p else number("Eta"))
    if "Variation seed" in p:
        put("subseed", number("Variation seed", int))
        put("subseed_strength", number("Variation seed strength"))
    if any(k in p for k in ("Hires upscale", "Hires resize", "Hires upscaler")):
        out["enable_hr"] = True
        put("hr_scale", number("Hires upscale"))
        hires = size_pair(p.get("Hires resize"))
        put("hr_resize_x", hires[0])
        put("hr_resize_y", hires[1])
        put("hr_upscaler", p.get("Hires upscaler"))
        put("hr_second_pass_steps", number("Hires steps", int))
    from app.engine.inpaint import FILL_MODES

    fills = {name: value for value, name in FILL_MODES.items()}
    put("inpainting_fill", fills.get(p.get("Masked content", "")))
    if "Inpaint area" in p:
        out["inpaint_full_res"] = p["Inpaint area"] == "Only masked"
    if "Mask mode" in p:
        out["inpainting_mask_invert"] = p["Mask mode"] == "Inpaint not masked"
    if "Face restoration" in p:
        out["restore_faces"] = True
        out["face_restorer"] = p["Face restoration"]
    if "ADetailer model" in p:  # ADetailer's keys (app/engine/faces/detail.py writes them for face detailing)
        out["face_detail"] = True
        for key, field in (("ADetailer prompt", "face_detail_prompt"),
                           ("ADetailer negative prompt", "face_detail_negative_prompt")):
            put(field, p.get(key))
        put("face_detail_strength", number("ADetailer denoising strength"))
        put("face_detail_confidence", number("ADetailer confidence"))
        put("face_detail_dilate", number("ADetailer dilate erode", int))
        put("face_detail_mask_blur", number("ADetailer mask blur", int))
        put("face_detail_padding", number("ADetailer inpaint padding", int))
    from app.engine.controlnet import units_from_infotext

    put("controlnet", units_from_infotext(p) or None)
    return out
