"""A1111 request fields this server cannot honour (issue #12: never ignore a
field that changes the output).

A1111 clients send every field of the request model, most at their defaults
(webuiapi sends ``restore_faces: false``, ``eta: 1.0``...). ``styles`` is honoured
(``app.engine.styles``; an unknown name is refused where it is applied).
Those stay accepted; a value that would change the image and that we cannot
honour is refused with 400 naming the field, never silently dropped.
Fields that do not change pixels (``send_images``, ``save_images``,
``do_not_save_grid``...) and fields A1111 itself does not know are left alone.
"""
from __future__ import annotations

from typing import Any

from app.engine.types import described
from app.web.errors import ApiError

# name -> (accepted values besides None, why another value is refused). None is always accepted.
_COMMON: dict[str, tuple[tuple[Any, ...], str]] = {
    # "X/Y/Z plot", "SD upscale" on img2img and "Prompts from file or textbox" are taken out before
    # this check (app/web/sdapi.py).
    "script_name": (("",), "the scripts on this server are \"X/Y/Z plot\", \"SD upscale\" on img2img and "
                           "\"Prompts from file or textbox\" (see /sdapi/v1/scripts)"),
    "refiner_checkpoint": (("", "None"), "refiner models are not supported"),
    "firstpass_image": (("",), "a first-pass image is not supported"),
    "hr_checkpoint_name": (("", "Use same checkpoint"), "the hires pass runs on the loaded model only"),
    "hr_sampler_name": (("", "Use same sampler"), "the hires pass uses the first pass's sampler"),
    "hr_scheduler": (("", "Use same scheduler"), "the hires pass uses the first pass's scheduler"),
    "hr_prompt": (("",), "the hires pass uses the first pass's prompt"),
    "hr_negative_prompt": (("",), "the hires pass uses the first pass's negative prompt"),
    "firstphase_width": ((0,), "deprecated; use hr_scale or hr_resize_x/y"),
    "firstphase_height": ((0,), "deprecated; use hr_scale or hr_resize_x/y"),
}
_IMG2IMG: dict[str, tuple[tuple[Any, ...], str]] = {
    "resize_mode": ((0,), "only resize mode 0 (just resize) is supported"),
    "initial_noise_multiplier": ((1,), "only the default noise multiplier 1 is supported"),
    "latent_mask": (("",), "a separate latent mask is not supported"),
}
# Settings that may be "overridden" to what this server does anyway.
_SETTINGS_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "samples_format": ("png",),
}
# The options that change a picture, honoured per job only (app/web/sdapi.py reads them into the request, whose
# validation checks them), with their server-wide values: the request fields' options (``about(option=...)`` in
# app/engine/types.py) and the samplers' eta defaults. POST /sdapi/v1/options refuses to change them.
PER_JOB_OPTIONS: dict[str, object] = {"eta_ancestral": 1.0, "eta_ddim": 0.0, **{
    about.option: f.default for f, about in described().values() if about.option}}
# Settings honoured per job: those, the model, the VAE and ControlNet's detectmap switch.
_SETTINGS_HONOURED = ("sd_model_checkpoint", "sd_vae", "control_net_no_detectmap", *PER_JOB_OPTIONS)


def refuse_unsupported(body: dict, img2img: bool) -> None:
    """ApiError 400 for the first field set to a value this server would have to ignore."""
    table = {**_COMMON, **(_IMG2IMG if img2img else {})}
    for name, (accepted, why) in table.items():
        value = body.get(name)
        if value is not None and not any(same_value(value, ok) for ok in accepted):
            raise ApiError(400, f"{name}: {why}", name, value)
    _check_scripts(body.get("alwayson_scripts"))
    _check_overrides(body.get("override_settings"))


def same_value(value: Any, accepted: Any) -> bool:
    """A1111's value as the one accepted: a bool only as that bool, a number as any equal number."""
    if isinstance(accepted, bool) or isinstance(value, bool):
        return value is accepted
    return type(value) in (int, float) and type(accepted) in (int, float) and value == accepted or (
        type(value) is type(accepted) and value == accepted)


def _check_scripts(scripts: Any) -> None:
    """Always-on scripts: ADetailer's core is built in (``adetailer_values``); no other is installed.
    webuiapi names ControlNet or ADetailer with empty or ``[False]`` args (off) when a server lists them;
    off is fine."""
    if scripts is None or scripts == {}:
        return
    if not isinstance(scripts, dict):
        raise ApiError(400, "alwayson_scripts: must be an object", "alwayson_scripts", scripts)
    for name, spec in scripts.items():
        if isinstance(name, str) and name.lower() == "controlnet":  # honoured: app/web/controlnet.py
            continue
        args = spec.get("args") if isinstance(spec, dict) else spec
        if args in ([], [False], None) or name.lower() == ADETAILER.lower():
            continue
        raise ApiError(400, f"alwayson_scripts: {name!r} is not available on this server (see /sdapi/v1/scripts)",
                       "alwayson_scripts", name)


def _check_overrides(overrides: Any) -> None:
    """The overrides this server cannot honour; the model and VAE are checked
    (and honoured per job) by app/web/models.py."""
    if overrides is None or overrides == {}:
        return
    if not isinstance(overrides, dict):
        raise ApiError(400, "override_settings: must be an object", "override_settings", overrides)
    for key, value in overrides.items():
        if key in _SETTINGS_HONOURED:
            continue
        accepted = _SETTINGS_DEFAULTS.get(key)
        if accepted is None or not any(same_value(value, ok) for ok in accepted):
            raise ApiError(400, f"override_settings: {key!r} cannot be changed on this server",
                           f"override_settings.{key}", value)


ADETAILER = "ADetailer"
# ADetailer's args (its ``args.py``) -> our request fields. Its tab dicts may name every arg at its default
# (as webuiapi's ADetailer helper sends them); an arg we cannot honour is accepted at its default only.
_AD_FIELDS = {
    "ad_prompt": "face_detail_prompt",
    "ad_negative_prompt": "face_detail_negative_prompt",
    "ad_confidence": "face_detail_confidence",
    "ad_dilate_erode": "face_detail_dilate",
    "ad_mask_blur": "face_detail_mask_blur",
    "ad_denoising_strength": "face_detail_strength",
    "ad_inpaint_only_masked_padding": "face_detail_padding",
}
_AD_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "ad_tab_enable": (True,), "ad_tap_enable": (True,), "ad_inpaint_only_masked": (True,),
    "ad_model_classes": ("",), "ad_mask_k_largest": (0,), "ad_mask_k": (0,), "ad_mask_min_ratio": (0,),
    "ad_mask_max_ratio": (1,), "ad_x_offset": (0,), "ad_y_offset": (0,), "ad_mask_merge_invert": ("None",),
    "ad_mask_filter_method": ("Area",), "ad_use_inpaint_width_height": (False,), "ad_inpaint_width": (512,),
    "ad_inpaint_height": (512,), "ad_use_steps": (False,), "ad_steps": (28,), "ad_use_cfg_scale": (False,),
    "ad_cfg_scale": (7, 7.0), "ad_use_checkpoint": (False,), "ad_checkpoint": ("Use same checkpoint", None),
    "ad_use_vae": (False,), "ad_vae": ("Use same VAE", None), "ad_use_sampler": (False,),
    "ad_sampler": ("DPM++ 2M", "DPM++ 2M Karras", "Euler a"), "ad_scheduler": ("Use same scheduler",),
    "ad_use_noise_multiplier": (False,), "ad_noise_multiplier": (1, 1.0), "ad_use_clip_skip": (False,),
    "ad_clip_skip": (1,), "ad_restore_face": (False,), "ad_controlnet_model": ("None",),
    "ad_controlnet_module": ("None", "inpaint_global_harmonious"), "ad_controlnet_weight": (1, 1.0),
    "ad_controlnet_guidance_start": (0,), "ad_controlnet_guidance_end": (1,), "is_api": ((), []),
}
# "ad_model" names ADetailer's detector files; any face detector runs as ours (RetinaFace), "None" is off.
_AD_FACE_MODELS = ("face_yolov8n.pt", "face_yolov8s.pt", "face_yolov8m.pt", "face_yolov9c.pt",
                   "mediapipe_face_full", "mediapipe_face_short", "mediapipe_face_mesh", "retinaface")


def adetailer_values(body: dict) -> dict:
    """Our face detailing fields for ``alwayson_scripts: {"ADetailer": {"args": [...]}}``: ADetailer's
    args are ``[enable, skip_img2img, {tab}, {tab}...]`` (the two flags optional). One tab with a face
    model is honoured; a second tab must be off (``ad_model: "None"``). {} when ADetailer is not on."""
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return {}
    spec = next((v for k, v in scripts.items() if isinstance(k, str) and k.lower() == ADETAILER.lower()), None)
    args = spec.get("args") if isinstance(spec, dict) else spec
    if args in ([], [False], None):
        return {}
    field = "alwayson_scripts.ADetailer.args"
    if not isinstance(args, list):
        raise ApiError(400, f"{field}: must be a list", field, args)
    flags = [a for a in args if isinstance(a, bool)]
    tabs = [a for a in args if not isinstance(a, bool)]
    if not all(isinstance(t, dict) for t in tabs) or len(flags) > 2 or args[:len(flags)] != flags:
        raise ApiError(400, f"{field}: must be [enable, skip_img2img, {{ad_model...}}, ...]", field, args)
    if (flags and not flags[0]) or not tabs:
        return {}
    if len(flags) > 1 and flags[1]:
        raise ApiError(400, f"{field}: skip_img2img is not supported", field, flags[1])
    active = [t for t in tabs if t.get("ad_model", "face_yolov8n.pt") != "None" and t.get("ad_tab_enable", True)]
    if len(active) > 1:
        raise ApiError(400, f"{field}: one ADetailer tab is supported; set ad_model to \"None\" in the others",
                       field, len(active))
    if not active:
        return {}
    tab = active[0]
    model = tab.get("ad_model", "face_yolov8n.pt")
    if model not in _AD_FACE_MODELS:
        raise ApiError(400, f"{field}: ad_model {model!r} is not available; face detection runs as one of "
                            + ", ".join(_AD_FACE_MODELS), f"{field}.ad_model", model)
    values: dict = {"face_detail": True}
    for key, value in tab.items():
        if key == "ad_model":
            continue
        if key in _AD_FIELDS:
            values[_AD_FIELDS[key]] = value
        elif key not in _AD_DEFAULTS:
            raise ApiError(400, f"{field}: {key!r} is not an ADetailer argument this server knows",
                           f"{field}.{key}", value)
        elif value is not None and not any(same_value(value, ok) for ok in _AD_DEFAULTS[key]) and not (
                isinstance(value, list) and key == "is_api"):
            raise ApiError(400, f"{field}: {key} cannot be changed on this server", f"{field}.{key}", value)
    return values
