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

from app.web.errors import ApiError

# name -> (accepted values besides None, why another value is refused). None is always accepted.
_COMMON: dict[str, tuple[tuple[Any, ...], str]] = {
    "restore_faces": ((False,), "face restoration is not available on this server"),
    "script_name": (("",), "scripts are not available on this server (see /sdapi/v1/scripts)"),
    "s_min_uncond": ((0,), "negative guidance minimum sigma (NGMS) is not supported"),
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
# Settings honoured per job: app/web/sdapi.py reads them into the request, whose validation checks them.
_SETTINGS_HONOURED = ("sd_model_checkpoint", "sd_vae", "randn_source", "eta_noise_seed_delta",
                      "CLIP_stop_at_last_layers", "eta_ancestral", "eta_ddim", "s_churn", "s_tmin", "s_tmax", "s_noise")


def refuse_unsupported(body: dict, img2img: bool) -> None:
    """ApiError 400 for the first field set to a value this server would have to ignore."""
    table = {**_COMMON, **(_IMG2IMG if img2img else {})}
    for name, (accepted, why) in table.items():
        value = body.get(name)
        if value is not None and not any(_same(value, ok) for ok in accepted):
            raise ApiError(400, f"{name}: {why}", name, value)
    _check_scripts(body.get("alwayson_scripts"))
    _check_overrides(body.get("override_settings"))


def _same(value: Any, accepted: Any) -> bool:
    if isinstance(accepted, bool) or isinstance(value, bool):
        return value is accepted
    return type(value) in (int, float) and type(accepted) in (int, float) and value == accepted or (
        type(value) is type(accepted) and value == accepted)


def _check_scripts(scripts: Any) -> None:
    """Always-on scripts: none are installed. webuiapi names ControlNet or
    ADetailer with empty or ``[False]`` args (off) when a server lists them; off is fine."""
    if scripts is None or scripts == {}:
        return
    if not isinstance(scripts, dict):
        raise ApiError(400, "alwayson_scripts: must be an object", "alwayson_scripts", scripts)
    for name, spec in scripts.items():
        if isinstance(name, str) and name.lower() == "controlnet":  # honoured: app/web/controlnet.py
            continue
        args = spec.get("args") if isinstance(spec, dict) else spec
        if args in ([], [False], None):
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
        if accepted is None or not any(_same(value, ok) for ok in accepted):
            raise ApiError(400, f"override_settings: {key!r} cannot be changed on this server",
                           f"override_settings.{key}", value)
