"""The face options of a request (restoration, then ADetailer-style detailing), checked before
the job is queued: the fields first, then whether the models they need can be had."""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.engine.base import Limits, ValidationError, check_bool, check_int, check_range, check_text
from app.engine.faces.restore import RESTORERS, find_restorer, weights_needed
from app.engine.faces.weights import missing_offline
from app.engine.loras.tags import split_lora_tags
from app.engine.prompts import prompt_syntax_problem

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest


def check(request: GenerationRequest, limits: Limits) -> None:
    """The face fields (``face_restorer`` made canonical); ValidationError on the first bad one."""
    check_bool("restore_faces", request.restore_faces)
    check_bool("face_detail", request.face_detail)
    restorer = find_restorer(request.face_restorer)
    if restorer is None:
        raise ValidationError("face_restorer", request.face_restorer, "must be one of " + ", ".join(RESTORERS))
    request.face_restorer = restorer
    for name in ("code_former_weight", "face_detail_strength", "face_detail_confidence"):
        check_range(name, getattr(request, name))
    for name in ("face_detail_dilate", "face_detail_mask_blur", "face_detail_padding"):
        check_int(name, getattr(request, name))
        check_range(name, getattr(request, name))
    for name in ("face_detail_prompt", "face_detail_negative_prompt"):
        text = getattr(request, name)
        check_text(name, text, limits)
        try:  # <lora:...> tags work in the face prompt too (it is a prompt of its own run)
            problem = prompt_syntax_problem(split_lora_tags(text)[0], steps=request.steps)
        except ValueError as exc:
            problem = str(exc)
        if problem:
            raise ValidationError(name, text, problem)
    if request.face_detail and request.save_steps:
        raise ValidationError("save_steps", request.save_steps, "step previews are not kept with face detailing")
    # last: the fields are checked first, then whether the models can be had
    why = missing_offline(weights_needed(request.restore_faces, restorer, request.face_detail))
    if why:
        name = "restore_faces" if request.restore_faces else "face_detail"
        raise ValidationError(name, True, why)
