"""Face detailing, ADetailer's core: each face the detector finds is masked
(its box, grown by ``dilate`` pixels as ADetailer's dilate/erode) and
inpainted again, "only masked" at the image's full size, with its own prompt
(default: the image's) and denoising strength, from the image's seed. The
inpainting is the engine's own (app/engine/inpaint.py), so pixels outside a
face's blurred mask keep their values exactly.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from PIL import Image

from app.engine.base import Quoted
from app.engine.faces import detect

DETECTOR_NAME = "retinaface"  # what "ADetailer model" says: our detector, not ADetailer's YOLO files


def face_masks(image: Image.Image, confidence: float, dilate: int) -> list[Image.Image]:
    """One white-box mask per face found, grown (or with a negative ``dilate``, shrunk) by
    ``dilate // 2`` pixels a side (a ``dilate``-wide square kernel, as ADetailer dilates)."""
    masks = []
    grow = dilate // 2 if dilate >= 0 else -(-dilate // 2)
    for face in detect.detect_faces(image, confidence):
        x1, y1, x2, y2 = face.box
        box = (round(x1) - grow, round(y1) - grow, round(x2) + grow, round(y2) + grow)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        mask = Image.new("L", image.size, 0)
        mask.paste(255, box)
        if mask.getbbox() is not None:
            masks.append(mask)
    return masks


def inpaint_request(request: Any, image: Image.Image, mask: Image.Image, seed: int, subseed: int) -> Any:
    """The inpainting request for one face of one image: only masked at the image's size."""
    return replace(request, prompt=request.face_detail_prompt or request.prompt,
                   negative_prompt=request.face_detail_negative_prompt or request.negative_prompt,
                   init_image=image, mask=mask, width=image.width, height=image.height, num_images=1,
                   seed=seed, subseed=subseed, strength=request.face_detail_strength,
                   mask_blur=request.face_detail_mask_blur, inpainting_fill=1, inpaint_full_res=True,
                   inpaint_full_res_padding=request.face_detail_padding, inpainting_mask_invert=False,
                   outpaint=0, enable_hr=False, save_steps=0, restore_faces=False, face_detail=False,
                   controlnet=[])  # ADetailer runs without ControlNet unless told (ad_controlnet_model)


def detail_faces(request: Any, image: Image.Image, seed: int, subseed: int,
                 inpaint: Callable[[Any], Image.Image]) -> Image.Image:
    """``image`` with each face inpainted in turn by ``inpaint(request)`` (the engine's run)."""
    for mask in face_masks(image, request.face_detail_confidence, request.face_detail_dilate):
        image = inpaint(inpaint_request(request, image, mask, seed, subseed))
    return image


def infotext_entries(request: Any) -> dict:
    """ADetailer's infotext keys, with what ran here (our detector's name as the model)."""
    if not request.face_detail:
        return {}
    extra: dict = {"ADetailer model": DETECTOR_NAME}
    if request.face_detail_prompt:
        extra["ADetailer prompt"] = Quoted(request.face_detail_prompt)
    if request.face_detail_negative_prompt:
        extra["ADetailer negative prompt"] = Quoted(request.face_detail_negative_prompt)
    extra.update({
        "ADetailer confidence": f"{request.face_detail_confidence:g}",
        "ADetailer dilate erode": request.face_detail_dilate,
        "ADetailer mask blur": request.face_detail_mask_blur,
        "ADetailer denoising strength": f"{request.face_detail_strength:g}",
        "ADetailer inpaint only masked": "True",
        "ADetailer inpaint padding": request.face_detail_padding,
    })
    return extra
