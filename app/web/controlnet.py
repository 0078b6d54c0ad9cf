"""ControlNet on the web: the A1111 extension's routes (``/controlnet/version``,
``model_list``, ``module_list``, ``detect``, as its ``scripts/api.py`` answers
them), its ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` units,
and the native API's ``controlnet`` field. Units are checked here before a
job is queued: images decoded within the upload limits, models known."""
from __future__ import annotations

import base64
import io
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from app.engine.controlnet import UNIT_FIELDS, UNIT_IMAGES, encode_png
from app.engine.preprocessors import MODULES, find_module, module_detail, run_module
from app.models.controlnet import DEMO_CONTROLNET, list_models
from app.models.demo import DEMO_MODEL_ID
from app.models.loading import ModelLoadError
from app.web.body import json_object
from app.web.errors import ApiError
from app.web.uploads import decode_init_image

bp = Blueprint("controlnet", __name__, url_prefix="/controlnet")

API_VERSION = 3  # the extension's get_api_version()
# Extension unit fields that do not change what this server makes: accepted and left alone.
_IGNORED = ("low_vram", "lowvram", "is_ui", "input_mode", "batch_images", "output_dir", "loopback")
# The extension's legacy names (internal_controlnet/args.py legacy_field_alias, mask_alias).
_ALIASES = {"input_image": "image", "mask_image": "mask", "guidance": "guidance_end"}


def model_names() -> list[str]:
    """The ControlNets this server offers by name: the folder's, and demo-controlnet on the demo model."""
    config = current_app.config
    demo = [DEMO_CONTROLNET] if config.get("MODEL") == DEMO_MODEL_ID else []
    return demo + list_models(config.get("CONTROLNET_DIR"))


def prepare_units(units: Any, field: str = "controlnet") -> Any:
    """The request's units with their images decoded within the upload limits (as base64 PNG) and their
    models known (a listed name or a Hub id); the rest is checked by the request's validation."""
    if not isinstance(units, list):
        return units  # validation names it
    names = model_names()
    out = []
    for i, unit in enumerate(units):
        if not isinstance(unit, dict):
            out.append(unit)
            continue
        unit = dict(unit)
        for name in UNIT_IMAGES:
            image = unit.get(name)
            if isinstance(image, str) and image.strip():
                # Shrunk as the image is (to the largest generation size), so a mask stays the image's size.
                unit[name] = encode_png(decode_init_image(image, current_app.config, f"{field}[{i}].{name}"))
            elif image is not None:
                hint = ", or left out for the img2img image" if name == "image" else ", or null"
                raise ApiError(400, f"{field}[{i}].{name}: must be a base64 image or a data URL{hint}",
                               f"{field}[{i}].{name}", image)
        model = unit.get("model")
        if isinstance(model, str) and model not in names and model not in ("", "None") and "/" not in model:
            raise ApiError(400, f"{field}[{i}].model: no ControlNet {model!r} on this server; the models are "
                                + (", ".join(names) or "none (put them in CONTROLNET_DIR)") + ", or a Hub id",
                           f"{field}[{i}].model", model)
        out.append(unit)
    return out


def units_from_scripts(body: dict) -> list[dict] | None:
    """The enabled units of ``alwayson_scripts.controlnet.args`` in our fields (None: no ControlNet script),
    the extension's aliases (``input_image``, ``mask_image``) read; unknown fields refused."""
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return None
    spec = next((v for k, v in scripts.items() if isinstance(k, str) and k.lower() == "controlnet"), None)
    if spec is None:
        return None
    args = spec.get("args") if isinstance(spec, dict) else spec
    if args in (None, [False]):
        return []
    if not isinstance(args, list):
        raise ApiError(400, "alwayson_scripts.controlnet.args: must be a list of units", "controlnet", args)
    units = []
    for i, arg in enumerate(args):
        if not isinstance(arg, dict):
            raise ApiError(400, f"controlnet[{i}]: must be an object (the extension's unit)", f"controlnet[{i}]", arg)
        if not arg.get("enabled", True):
            continue
        unit = {}
        for key, value in arg.items():
            name = _ALIASES.get(key, key)
            if name in ("enabled", *_IGNORED):
                continue
            if name in ("mask", "effective_region_mask") and value in (None, ""):
                continue
            if name == "mask" and "mask" in unit:  # both mask and mask_image: the extension refuses it too
                raise ApiError(400, f"controlnet[{i}].{key}: give mask or mask_image, not both",
                               f"controlnet[{i}].{key}", "mask")
            if name == "image" and "image" in unit and value is None:
                continue
            if name not in UNIT_FIELDS:
                raise ApiError(400, f"controlnet[{i}].{key}: unknown field; the unit fields are "
                                    + ", ".join(("input_image", *UNIT_FIELDS, "mask_image", "enabled")),
                               f"controlnet[{i}].{key}", value)
            unit[name] = value
        if isinstance(unit.get("image"), dict):  # {"image": ..., "mask": ...}
            pair = unit["image"]
            unit["image"] = pair.get("image")
            if pair.get("mask") not in (None, ""):
                if "mask" in unit:
                    raise ApiError(400, f"controlnet[{i}].mask: give the mask in image or in mask, not both",
                                   f"controlnet[{i}].mask", "mask")
                unit["mask"] = pair["mask"]
        units.append(unit)
    return units


@bp.get("/version")
def version():
    return jsonify({"version": API_VERSION})


@bp.get("/model_list")
def model_list():
    return jsonify({"model_list": model_names()})


@bp.get("/module_list")
def module_list():
    alias = request.args.get("alias_names", "false").lower() in ("1", "true", "yes")
    names = [m.label if alias else m.name for m in MODULES.values()]
    return jsonify({"module_list": names, "module_detail": module_detail(alias)})


@bp.post("/detect")
def detect():
    """The extension's detect: each image's detected map (base64 PNG), or 422 ``{"detail": ...}`` as FastAPI."""
    body = json_object()
    module = find_module(str(body.get("controlnet_module", "none")))
    if module is None:
        return jsonify({"detail": "Module not available"}), 422
    images = body.get("controlnet_input_images") or []
    if not isinstance(images, list) or not images:
        return jsonify({"detail": "No image selected"}), 422
    numbers = {}
    for name in ("controlnet_processor_res", "controlnet_threshold_a", "controlnet_threshold_b"):
        value = body.get(name, -1)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"{name}: must be a number", name, value)
        numbers[name] = value
    out = []
    for i, value in enumerate(images):
        image = decode_init_image(value, current_app.config, f"controlnet_input_images[{i}]", fit=False)
        try:
            detected = run_module(module, image, numbers["controlnet_processor_res"],
                                  numbers["controlnet_threshold_a"], numbers["controlnet_threshold_b"])
        except ModelLoadError as exc:  # the depth preprocessor's weights, offline
            raise ApiError(400, f"controlnet_module: {exc}", "controlnet_module", module) from None
        buf = io.BytesIO()
        detected.save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return jsonify({"info": "Success", "images": out})
