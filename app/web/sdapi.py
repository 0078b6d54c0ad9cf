"""AUTOMATIC1111-compatible endpoints (``/sdapi/v1/...``) so existing clients
(webuiapi, scripts, plugins) work unmodified.

txt2img/img2img are synchronous for the caller, as in A1111, but run as
ordinary jobs: they share the queue, the limits and the gallery. Fields
A1111 does not know are ignored, as A1111 ignores them; A1111 fields set to a
value this server cannot honour are refused (``a1111_fields``). ``interrupt`` cancels the caller's current job (its
running job, else its oldest queued one); the waiting txt2img/img2img call
then answers 200 with ``"interrupted": true`` in ``info`` and, as A1111 does,
the images the interrupted run had reached (none if it was still queued or
had not finished a step). ``skip`` stops the caller's running job's pass and
ends it done with the images so far (see ``skip``).
"""
from __future__ import annotations

import base64
import html
import json
import math

from flask import Blueprint, current_app, jsonify, request

from app.engine.embeddings import a1111_listing
from app.engine.embeddings import scan as scan_embeddings
from app.engine.fields import kind
from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import parse_infotext
from app.engine.prompt_lines import SCRIPT_TITLE as PROMPT_LINES
from app.engine.prompt_lines import line_values
from app.engine.schedulers import (
    AUTOMATIC,
    DEFAULT_SCHEDULER,
    SCHEDULE_TYPES,
    SCHEDULERS,
    find_schedule_type,
    find_scheduler,
    split_name,
    with_schedule,
)
from app.engine.types import MAX_SEED, described, floor_size
from app.jobs.base import ModelChoice
from app.jobs.job import CANCELLED, DISK_FULL, DONE, INVALID, QUEUED, RUNNING, Job, generating_first
from app.web import models, xyz
from app.web.a1111_fields import PER_JOB_OPTIONS, adetailer_values, refuse_unsupported, same_value
from app.web.auth import client_id
from app.web.body import MAX_INT, json_object
from app.web.controlnet import units_from_scripts
from app.web.errors import ApiError
from app.web.service import backend, build_line_requests, build_request, enqueue, is_mine
from app.web.services import services
from app.web.slow import read_slowly
from app.web.styles import current_styles
from app.web.uploads import png_info
from app.web.waiting import SYNC_RETRY_AFTER, wait_slot

bp = Blueprint("sdapi", __name__, url_prefix="/sdapi/v1")

def _int(body: dict, name: str, default):
    """A1111 (pydantic) accepts 20.0 for an int; so do we. Other types are left for validation to name."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT:  # 1e300: left for validation
        return int(value)
    return value


def _sampler(body: dict) -> str:
    """The request's scheduler value for A1111's ``sampler_name`` (or old
    ``sampler_index``) and 1.9's ``scheduler``: "Automatic" or none keeps the
    schedule an old combined name carries ("DPM++ 2M Karras"), else the
    sampler's own default, as A1111's ``get_sampler_and_scheduler``."""
    name = body.get("sampler_name") or body.get("sampler_index") or DEFAULT_SCHEDULER
    if not isinstance(name, str):
        raise ApiError(400, "sampler_name: must be a string", "sampler_name", name)
    schedule_value = body.get("scheduler") or "automatic"
    if not isinstance(schedule_value, str):
        raise ApiError(400, "scheduler: must be a string", "scheduler", schedule_value)
    choice = find_scheduler(name)
    if choice is None:
        raise ApiError(400, "sampler_name: unknown sampler; see /sdapi/v1/samplers", "sampler_name", name)
    schedule = find_schedule_type(schedule_value)
    if schedule is None:
        raise ApiError(400, "scheduler: unknown schedule type; one of " + ", ".join(t.label for t in SCHEDULE_TYPES),
                       "scheduler", schedule_value)
    if schedule is AUTOMATIC:
        return choice.name
    chosen = with_schedule(choice.sampler.name, schedule)
    assert chosen is not None
    return chosen.name


def _size(body: dict, name: str):
    value = _int(body, name, 512)
    # A1111 floors sizes to a multiple of 8 itself; clients rely on it.
    return floor_size(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else value


def _generation_values(body: dict, img2img: bool) -> dict:
    batch, n_iter = _int(body, "batch_size", 1), _int(body, "n_iter", 1)
    for name, value in (("batch_size", batch), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"{name}: must be a positive integer", name, value)
    values = {
        "prompt": body.get("prompt", ""),
        "negative_prompt": body.get("negative_prompt") or "",
        "styles": body.get("styles") or [],  # applied by build_request (app.web.styles), as on /api/jobs
        "seed": _int(body, "seed", -1),
        "scheduler": _sampler(body),
        "steps": _int(body, "steps", 50),
        "guidance_scale": body.get("cfg_scale", 7.0),
        "width": _size(body, "width"),
        "height": _size(body, "height"),
        "num_images": batch * n_iter,
        "subseed": _int(body, "subseed", -1),
        "seed_resize_from_w": _int(body, "seed_resize_from_w", 0),
        "seed_resize_from_h": _int(body, "seed_resize_from_h", 0),
        **_field_values(body),
        **_eta(body),
        **adetailer_values(body),
    }
    if img2img:
        values["strength"] = body.get("denoising_strength", 0.75)
        values.update(_inpaint_values(body))
    elif body.get("enable_hr"):  # A1111 ignores the hr_* fields without it; so do we
        values.update(_hires_values(body))
    return values


def _field_values(body: dict) -> dict:
    """The request fields A1111's API takes by name (``about(api=...)`` in app/engine/types.py: ``tiling``,
    ``subseed_strength``, the churn settings, ``s_min_uncond``, ``restore_faces``...) or keeps as options that
    ``override_settings`` sets per job (``about(option=...)``: ``randn_source``, ``CLIP_stop_at_last_layers``,
    ``face_restoration_model``...): the field's value, else the option's. Null takes the field's default, which
    is A1111's (webuiapi sends ``tiling: false``, ``s_tmax: 0``, ``s_noise: 1``)."""
    overrides = body.get("override_settings")
    overrides = overrides if isinstance(overrides, dict) else {}
    values: dict = {}
    for name, (f, about) in described().items():
        key = name if about.api is True else about.api
        value = body.get(key) if key else None
        if value is None and about.option:
            value = overrides.get(about.option)
        if value is None:
            continue
        if kind(f) is int:  # A1111 (pydantic) takes 20.0 for an int
            value = _int({name: value}, name, value)
        elif kind(f) is bool and type(value) is int and value in (0, 1):  # and 0/1 for a bool
            value = bool(value)
        values[name] = value
    return values


def _eta(body: dict) -> dict:
    """eta from the request, else the option A1111 reads for the sampler when it is null (``eta_ddim`` for
    DDIM's kind, ``eta_ancestral`` for the others)."""
    overrides = body.get("override_settings")
    overrides = overrides if isinstance(overrides, dict) else {}
    eta = body.get("eta")
    if eta is None:
        choice = find_scheduler(body.get("sampler_name") or body.get("sampler_index") or DEFAULT_SCHEDULER)
        option = "eta_ddim" if choice and choice.sampler.eta_label == "Eta DDIM" else "eta_ancestral"
        eta = overrides.get(option)
    return {} if eta is None else {"eta": eta}


def _hires_values(body: dict) -> dict:
    """The hires fix fields, with A1111's API defaults."""
    return {
        "enable_hr": body.get("enable_hr"),
        "hr_scale": body.get("hr_scale", 2.0),
        "hr_resize_x": _int(body, "hr_resize_x", 0),
        "hr_resize_y": _int(body, "hr_resize_y", 0),
        "hr_upscaler": body.get("hr_upscaler") or "Latent",
        "hr_second_pass_steps": _int(body, "hr_second_pass_steps", 0),
        "strength": body.get("denoising_strength", 0.7),
    }


def _inpaint_values(body: dict) -> dict:
    """The inpainting fields, with A1111's API defaults (which differ from its UI's and ours)."""
    invert = _int(body, "inpainting_mask_invert", 0)
    full_res = body.get("inpaint_full_res", True)
    return {
        "mask_blur": _int(body, "mask_blur", 4),
        "inpainting_fill": _int(body, "inpainting_fill", 0),
        "inpaint_full_res": bool(full_res) if isinstance(full_res, int) else full_res,  # A1111 sends 0/1 or bools
        "inpaint_full_res_padding": _int(body, "inpaint_full_res_padding", 0),
        "inpainting_mask_invert": bool(invert) if isinstance(invert, int) and invert in (0, 1) else invert,
    }


def _sd_upscale_values(body: dict) -> dict:
    """A1111's SD upscale ``script_args`` [info, overlap, upscaler_index, scale_factor] (defaults 64, 0, 2, as
    its UI): the upscaler counts in /sdapi/v1/upscalers. Its results are n_iter images, each made of tiles
    run batch_size at a time (scripts/sd_upscale.py)."""
    from app.engine.extras import upscaler_names

    args = body.get("script_args") or []
    if not isinstance(args, list):
        raise ApiError(400, "script_args: must be a list: [null, overlap, upscaler_index, scale_factor]",
                       "script_args", args)
    overlap, index, factor = ([*args[1:4], None, None, None][:3])
    names = upscaler_names()
    index = _int({"i": index}, "i", 0)
    if isinstance(index, str):
        upscaler = index
    elif isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
        raise ApiError(400, f"script_args: the upscaler index must be between 0 and {len(names) - 1} (see "
                            "/sdapi/v1/upscalers)", "script_args", index)
    else:
        upscaler = names[index]
    return {"num_images": _int(body, "n_iter", 1),
            "sd_upscale": {"overlap": _int({"o": overlap}, "o", 64), "upscaler": upscaler,
                           "scale_factor": 2 if factor is None else factor, "batch_size": _int(body, "batch_size", 1)}}


def _init_image(body: dict):
    images = body.get("init_images")
    if not isinstance(images, list) or not images:
        raise ApiError(400, "init_images: must be a list with at least one base64 image", "init_images",
                       type(images).__name__)
    first = images[0]
    if not isinstance(first, str) or not first.strip():
        # build_request takes "" and None as "no init image": img2img must not turn into txt2img.
        raise ApiError(400, "init_images: the first image must be a base64 string or a data URL", "init_images",
                       first)
    return first


SD_UPSCALE = "sd upscale"  # A1111's script title, as /sdapi/v1/scripts lists it (names match case-insensitively)


def _run(body: dict, img2img: bool):
    script = body.get("script_name")
    if isinstance(script, str) and script.strip().lower() == PROMPT_LINES:
        return _run_prompt_lines(body, img2img)
    sd_upscale = img2img and isinstance(script, str) and script.strip().lower() == SD_UPSCALE
    plot = isinstance(script, str) and script.strip().lower() == xyz.SCRIPT_TITLE
    refuse_unsupported({k: v for k, v in body.items() if k != "script_name"} if sd_upscale or plot else body,
                       img2img)
    overrides = body.get("override_settings") or {}
    choice = models.job_choice(overrides.get("sd_model_checkpoint"), overrides.get("sd_vae"))
    values = _generation_values(body, img2img)
    if sd_upscale:
        values.update(_sd_upscale_values(body))
    units = units_from_scripts(body)
    if units:
        values["controlnet"] = units
    gen = build_request(values, _init_image(body) if img2img else None, body.get("mask") if img2img else None)
    if plot:
        return _plot(body, gen, choice, img2img)
    hide_maps = no_detectmap(overrides)
    job = _queue_and_wait(gen, choice)
    images = _images_b64(job)
    if not hide_maps:  # the units' maps after the images, as the ControlNet extension appends them
        images += _control_maps_b64(job)
    parameters = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    if body.get("include_init_images"):
        parameters["init_images"] = body.get("init_images")
    return jsonify({"images": images, "parameters": parameters, "info": json.dumps(_info(job, img2img))})


def _run_prompt_lines(body: dict, img2img: bool):
    """A1111's "Prompts from file or textbox" (app/engine/prompt_lines.py): ``script_args`` [iterate seed,
    same seed, prompt position, text] (A1111 1.6+) or [iterate seed, same seed, text]. Every line is
    checked before the first is queued; then one job per line, each queued when the one before it ended
    (a client's queue allowance is small), as A1111 runs them one after another. The answer holds every
    line's images and infotexts; an interrupted line ends the run."""
    args = body.get("script_args") or []
    if not isinstance(args, list) or len(args) not in (3, 4):
        raise ApiError(400, "script_args: must be [iterate_seed, same_seed, prompt_position, prompt_text] or "
                            "[iterate_seed, same_seed, prompt_text]", "script_args", args)
    iterate, same, *rest = args
    position, text = (rest if len(rest) == 2 else ["start", rest[0]])
    refuse_unsupported({k: v for k, v in body.items() if k not in ("script_name", "script_args")}, img2img)
    overrides = body.get("override_settings") or {}
    choice = models.job_choice(overrides.get("sd_model_checkpoint"), overrides.get("sd_vae"))
    base = _generation_values(body, img2img)
    lines = line_values(base, text, iterate_seed=bool(iterate), same_seed=bool(same),
                        position=str(position).lower(), field="script_args")
    init = _init_image(body) if img2img else None
    mask = body.get("mask") if img2img else None
    jobs = []
    for gen in build_line_requests(lines, text, "script_args", init, mask):  # all checked first
        jobs.append(_queue_and_wait(gen, choice))
        if jobs[-1].state == CANCELLED:
            break
    images = [b64 for job in jobs for b64 in _images_b64(job)]
    infos = [_info(job, img2img) for job in jobs]
    info = dict(infos[0])
    infotexts = [im["infotext"] for job in jobs for im in job.images]
    info.update({"prompt": base["prompt"], "negative_prompt": base["negative_prompt"],
                 "all_prompts": [p for each in infos for p in each["all_prompts"]],
                 "all_negative_prompts": [p for each in infos for p in each["all_negative_prompts"]],
                 "all_seeds": [im["seed"] for job in jobs for im in job.images], "infotexts": infotexts,
                 "job_ids": [job.id for job in jobs], "interrupted": jobs[-1].state == CANCELLED})
    parameters = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    return jsonify({"images": images, "parameters": parameters, "info": json.dumps(info)})


def _plot(body: dict, gen, choice: ModelChoice | None, img2img: bool):
    """A1111's X/Y/Z plot, on txt2img or img2img (every cell from the same init image): the grid
    first, then (its "Include Sub Images") every cell's image."""
    with wait_slot(sync=True) as waiting:
        if not waiting:
            raise ApiError(503, f"the server is busy: {current_app.config['WAIT_SLOTS']} requests are already "
                                "waiting for their images; try again shortly", headers={"Retry-After": SYNC_RETRY_AFTER})
        grid, cells, with_cells = xyz.sdapi_plot(gen, body, choice, current_app.config["SYNC_TIMEOUT"])
    shown = [job for job in cells if job.images] if with_cells else []
    images = _images_b64(grid) + [_png_b64(job, 0) for job in shown]
    info = _info(grid, img2img)
    info["infotexts"] = [im["infotext"] for im in grid.images] + [job.images[0]["infotext"] for job in shown]
    info["all_seeds"] = [im["seed"] for im in grid.images] + [job.images[0]["seed"] for job in shown]
    info["index_of_first_image"] = len(grid.images) if shown else 0
    info["interrupted"] = any(job.state == CANCELLED for job in cells)
    parameters = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    if body.get("include_init_images"):
        parameters["init_images"] = body.get("init_images")
    return jsonify({"images": images, "parameters": parameters, "info": json.dumps(info)})


def _queue_and_wait(gen, choice: ModelChoice | None) -> Job:
    """Queue ``gen`` and wait for it as A1111's synchronous calls do; a job that did not end done or
    cancelled is the error the caller gets."""
    with wait_slot(sync=True) as waiting:
        if not waiting:  # refused before queueing: no job runs that nobody waits for
            raise ApiError(503, f"the server is busy: {current_app.config['WAIT_SLOTS']} requests are already "
                                "waiting for their images; try again shortly", headers={"Retry-After": SYNC_RETRY_AFTER})
        queued = enqueue(gen, choice)
        job = backend().wait(queued.id, current_app.config["SYNC_TIMEOUT"]) or backend().get(queued.id)
    if job is None:
        raise ApiError(410, f"the job was deleted before its images were read; see /api/jobs/{queued.id}",
                       "job_id", queued.id)
    if job.state in (QUEUED, RUNNING):
        raise ApiError(504, f"the job is still {job.state} after {current_app.config['SYNC_TIMEOUT']}s; "
                            f"follow it at /api/jobs/{job.id}", "job_id", job.id)
    if job.state not in (DONE, CANCELLED):
        kind = job.failure.kind if job.failure else None
        if kind == DISK_FULL:  # the server's disk, not the request: try again later
            raise ApiError(503, f"generation failed: {job.error}", "job_id", job.id, headers={"Retry-After": "60"})
        if kind == INVALID and job.failure:  # found only when it ran, e.g. a LoRA that does not fit the model
            raise ApiError(400, job.failure.message, job.failure.field, shown_value=job.failure.value)
        raise ApiError(500, f"generation failed: {job.error}", "job_id", job.id)
    return job


def _images_b64(job: Job) -> list[str]:
    return [_png_b64(job, im["n"]) for im in job.images]


def _control_maps_b64(job: Job) -> list[str]:
    """The job's ControlNet maps (app/jobs/runner.py: numbered on after its images)."""
    first = len(job.images)
    return [_png_b64(job, n) for n in range(first, first + int(job.params.get("control_maps") or 0))]


def _png_b64(job: Job, n: int) -> str:
    png = backend().read_image(job.id, n)
    if png is None:  # deleted from the image folder behind our back
        raise ApiError(500, f"image {n} of job {job.id} is missing from the image folder", "job_id", job.id)
    return base64.b64encode(png).decode("ascii")


# A1111 options this API honours beyond the model and VAE: set by POST /sdapi/v1/options for the web
# process's life (as A1111 keeps them in memory until saved), or per request in override_settings.
OPTIONS = {"control_net_no_detectmap": False}  # the ControlNet extension's "Do not append detectmap to output"


def sdapi_options() -> dict:
    return services().sdapi_options


def no_detectmap(overrides: dict) -> bool:
    value = overrides.get("control_net_no_detectmap", sdapi_options()["control_net_no_detectmap"])
    if not isinstance(value, bool):
        raise ApiError(400, "override_settings.control_net_no_detectmap: must be true or false",
                       "override_settings.control_net_no_detectmap", value)
    return value


def _info(job: Job, img2img: bool) -> dict:
    p = job.params
    seeds = [im["seed"] for im in job.images] or [p["seed"] + i for i in range(p["num_images"])]
    n = len(seeds)
    # Each image's own prompts: a dynamic-prompt template (app/engine/dynamic_prompts.py) draws them per image
    drawn = [parse_infotext(im["infotext"]) for im in job.images]
    drawn = drawn if any("Template" in d or "Negative Template" in d for d in drawn) else []
    return {
        "prompt": p["prompt"], "all_prompts": [d["prompt"] for d in drawn] or [p["prompt"]] * n,
        "negative_prompt": p["negative_prompt"],
        "all_negative_prompts": [d["negative_prompt"] for d in drawn] or [p["negative_prompt"]] * n,
        "seed": seeds[0], "all_seeds": seeds, "subseed": _subseed(p), "all_subseeds": [_subseed(p, i) for i in range(n)],
        "subseed_strength": p.get("subseed_strength", 0),
        "width": p["width"], "height": p["height"], "sampler_name": split_name(p["scheduler"])[0],
        "scheduler": split_name(p["scheduler"])[1], "cfg_scale": p["guidance_scale"],
        "steps": p["steps"], "batch_size": n, "restore_faces": bool(p.get("restore_faces")),
        "face_restoration_model": p.get("face_restorer") if p.get("restore_faces") else None,
        **_model_info(job),
        "seed_resize_from_w": p.get("seed_resize_from_w") or -1, "seed_resize_from_h": p.get("seed_resize_from_h") or -1,
        "denoising_strength": p["strength"] if img2img or p.get("enable_hr") else None,
        "extra_generation_params": {"Mask blur": p["mask_blur"]} if p.get("has_mask") else {},
        "index_of_first_image": 0, "infotexts": [im["infotext"] for im in job.images],
        "styles": job.params.get("styles", []),
        "job_timestamp": (job.created_at or "").replace("-", "").replace(":", "").replace("T", "")[:14],
        "clip_skip": p.get("clip_skip", 1), "eta": p.get("eta"), "s_churn": p.get("s_churn", 0.0),
        "s_tmin": p.get("s_tmin", 0.0), "s_tmax": p.get("s_tmax") or float("inf"), "s_noise": p.get("s_noise", 1.0),
        "is_using_inpainting_conditioning": False, "version": "t2i",
        "job_id": job.id, "interrupted": job.state == CANCELLED, "error": job.error if job.state == CANCELLED else None,
    }


def _model_info(job: Job) -> dict:
    """A1111's sd_model_name, sd_model_hash (and VAE's) of the model the job ran on."""
    choice = ModelChoice.of_params(job.params) or ModelChoice(backend().model, backend().vae)
    checkpoint, vae = models.entry(choice), models.vae_entry(choice.vae)
    return {"sd_model_name": models.model_name(checkpoint), "sd_model_hash": checkpoint.hash,
            "sd_vae_name": vae.name if vae else None, "sd_vae_hash": vae.hash if vae else None}


def _subseed(params: dict, i: int = 0) -> int:
    subseed = params.get("subseed")
    return -1 if subseed is None else (subseed + i) % (MAX_SEED + 1)


@bp.post("/txt2img")
def txt2img():
    return _run(json_object(), img2img=False)


@bp.post("/img2img")
def img2img():
    return _run(json_object(), img2img=True)


@bp.post("/extra-single-image")
def extra_single_image():
    """A1111's Extras, single image: an Extras job (app/engine/extras.py), queued and waited for."""
    body = json_object()
    job = _queue_and_wait(_extras_request(body, body.get("image")), None)
    return jsonify({"html_info": _html_info(job), "image": _images_b64(job)[0]})


@bp.post("/extra-batch-images")
def extra_batch_images():
    """A1111's Extras on ``imageList`` ([{"data": base64, "name": ...}]): one Extras job per image, each
    queued when the one before has finished (so a batch stays within the per-client queue limit)."""
    body = json_object()
    items = body.get("imageList")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ApiError(400, "imageList: must be a list of {\"data\": base64, \"name\": ...}", "imageList",
                       type(items).__name__)
    requests = [_extras_request(body, item.get("data")) for item in items]  # all checked before any is queued
    jobs = [_queue_and_wait(gen, None) for gen in requests]
    return jsonify({"html_info": _html_info(jobs[-1]), "images": [_images_b64(job)[0] for job in jobs]})


def _extras_request(body: dict, image):
    from app.web.extras import EXTRAS_FIELDS, extras_request

    values = {name: _int(body, name, None) if name.startswith(("resize_mode", "upscaling_resize_")) else body.get(name)
              for name in EXTRAS_FIELDS}
    if values["upscaling_crop"] is not None:
        values["upscaling_crop"] = bool(values["upscaling_crop"])  # A1111 (pydantic) takes 0/1 for a bool
    return extras_request({**values, "image": image})


def _html_info(job: Job) -> str:
    """A1111's ``plaintext_to_html`` of the infotext."""
    text = job.images[0]["infotext"] if job.images else ""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


@bp.get("/progress")
def progress():
    job = backend().running()
    counts = backend().counts()
    loading = models.loading()  # a switched-to model not loaded yet: util_wait_for_ready waits for it
    fraction, eta, step, total, image = 0.0, 0.0, 0, 0, None
    if job is not None:
        job = backend().get(job.id) or job
        step, total, fraction = job.progress.step, job.progress.total, job.progress.fraction
        if step and job.started_at:
            from datetime import datetime, timezone

            elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(job.started_at)).total_seconds()
            eta = max(0.0, elapsed / fraction - elapsed) if fraction else 0.0
        skip = request.args.get("skip_current_image", "false").lower() in ("1", "true", "yes")
        png = None if skip or not is_mine(job) else backend().preview(job.id)  # others' work is theirs
        image = base64.b64encode(png).decode("ascii") if png else None
    return jsonify({
        "progress": fraction,
        "eta_relative": round(eta, 2) if math.isfinite(eta) else 0.0,
        "state": {"skipped": False, "interrupted": False, "job": job.id if job else "",
                  "job_count": counts["queued"] + counts["running"] + (1 if loading else 0), "job_timestamp": "0",
                  "job_no": 0, "sampling_step": step, "sampling_steps": total},
        "current_image": image,
        "textinfo": f"Loading {loading}" if loading else None,
    })


@bp.post("/interrupt")
def interrupt():
    mine = generating_first(backend().list(limit=200, states=(RUNNING, QUEUED), client=client_id()))
    if mine:
        backend().cancel(mine[0].id)
        group = mine[0].params.get("group")
        if isinstance(group, dict) and "id" in group:  # an X/Y/Z plot's cell: A1111 stops the whole plot
            backend().cancel_group(group["id"], client_id())
    return jsonify({"interrupted": mine[0].id if mine else None})


@bp.post("/skip")
def skip():
    """A1111's skip ends the sampling of the current batch iteration early; that
    iteration's images are still decoded and saved, and generation goes on
    with the next iteration (``n_iter``). Here all ``n_iter`` x ``batch_size``
    images are made in one pass (``_generation_values``), so the current
    iteration is the whole job: skip stops the caller's running job after its
    current step and the job ends done with the images so far (``partial``
    in /api/jobs); the waiting txt2img/img2img call answers them like a
    finished job's. A queued job is not skipped (A1111's skip touches only the
    running one); ``skipped`` names the job, or is null when the caller had
    none running."""
    mine = generating_first(backend().list(limit=200, states=(RUNNING,), client=client_id()))
    if mine:
        backend().skip(mine[0].id)
    return jsonify({"skipped": mine[0].id if mine else None})


@bp.get("/sd-models")
def sd_models():
    return jsonify([c.a1111() for c in models.catalogue().checkpoints(hashed=True)])


@bp.post("/refresh-checkpoints")
def refresh_checkpoints():
    read_slowly("refresh-checkpoints", models.catalogue().refresh_checkpoints)  # done when it answers, if quick
    return jsonify(None)


@bp.get("/sd-vae")
def sd_vae():
    return jsonify([v.a1111() for v in models.catalogue().vaes(hashed=True)])


@bp.post("/refresh-vae")
def refresh_vae():
    read_slowly("refresh-vae", models.catalogue().refresh_vaes)
    return jsonify(None)


@bp.get("/samplers")
def samplers():
    """A1111 1.10's list: each sampler's name, aliases and options (its default schedule and such)."""
    return jsonify([{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SCHEDULERS])


@bp.get("/schedulers")
def schedulers():
    return jsonify([t.api_entry() for t in SCHEDULE_TYPES])


@bp.get("/scripts")
def scripts():
    # The scripts this server honours, A1111's titles in lower case: X/Y/Z plot, SD upscale and prompts from
    # file are chosen by script_name, ControlNet and ADetailer run through alwayson_scripts.
    return jsonify({"txt2img": [xyz.SCRIPT_TITLE, PROMPT_LINES, "controlnet", "adetailer"],
                    "img2img": [xyz.SCRIPT_TITLE, SD_UPSCALE, PROMPT_LINES, "controlnet", "adetailer"]})


@bp.get("/options")
def get_options():
    selected = backend().selection()
    current = models.entry(selected)
    return jsonify({"sd_model_checkpoint": current.title, "sd_checkpoint_hash": current.sha256,
                    "sd_vae": models.vae_name(selected.vae), "samples_format": "png", **PER_JOB_OPTIONS,
                    **sdapi_options()})


@bp.post("/options")
def set_options():
    """Switch the model and/or VAE; answers once the switch is queued (see app/web/models.py):
    /sdapi/v1/progress counts the load until it is done. The picture's settings are per job here (a
    shared server): changing one server-wide is a 400 that says how to send it with the job."""
    body = json_object()
    for name, value in body.items():  # before anything changes: a refused request changes nothing
        if name in PER_JOB_OPTIONS and value is not None and not same_value(value, PER_JOB_OPTIONS[name]):
            default = PER_JOB_OPTIONS[name]
            raise ApiError(400, f"{name}: this server is shared, so the settings that change a picture are set "
                                f"per job: send \"override_settings\": {{\"{name}\": ...}} with the txt2img or "
                                f"img2img request (the server-wide value stays {default!r})", name, value)
    for name in OPTIONS:
        if name in body:
            if not isinstance(body[name], bool):
                raise ApiError(400, f"{name}: must be true or false", name, body[name])
            sdapi_options()[name] = body[name]
    wanted, vae = body.get("sd_model_checkpoint"), body.get("sd_vae")
    if wanted is not None or vae is not None:
        models.select(wanted, vae)
    return jsonify(None)  # other options are accepted and ignored, as A1111 ignores unknown ones


@bp.get("/face-restorers")
def face_restorers():
    """A1111's list: each restorer's name and cmd_dir (the folder its weights are in)."""
    from app.engine.faces import RESTORERS

    return jsonify([{"name": name, "cmd_dir": current_app.config["FACE_DIR"]} for name in RESTORERS])


@bp.get("/upscalers")
def upscalers():
    """As A1111 answers: the resizes (scale 4, no model), then each model with the file it is
    (or, not downloaded yet, the URL it comes from) and its scale."""
    from app.engine import upscalers as registry

    return jsonify([{"name": u.name, "model_name": u.path.stem if u.path else None,
                     "model_path": str(u.path) if u.downloaded else u.url, "model_url": u.url,
                     "scale": u.scale if u.scale is not None else 4} for u in registry.available()])


@bp.get("/realesrgan-models")
def realesrgan_models():
    """A1111's Real-ESRGAN family (its ``get_realesrgan_models``): name, where the weights are, scale."""
    from app.engine import upscalers as registry

    return jsonify([{"name": u.name, "path": str(u.path) if u.downloaded else u.url, "scale": u.scale}
                    for u in registry.available() if u.family == "RealESRGAN"])


@bp.get("/latent-upscale-modes")
def latent_upscale_modes():
    from app.engine.hires import LATENT_UPSCALERS

    return jsonify([{"name": name} for name in LATENT_UPSCALERS])


@bp.post("/png-info")
def png_info_route():
    body = json_object()
    text, chunks = png_info(body.get("image"), current_app.config)
    parameters = {}
    if text:
        parsed = parse_infotext(text)
        parameters = {"Prompt": parsed.pop("prompt"), "Negative prompt": parsed.pop("negative_prompt"), **parsed}
        if "x" in parameters.get("Size", ""):
            parameters["Size-1"], parameters["Size-2"] = parameters["Size"].split("x", 1)
    items = {k: v for k, v in chunks.items() if k != "parameters"}
    # ``request``: this server's addition, the infotext as request fields (the page fills its form from it).
    return jsonify({"info": text or "", "items": items, "parameters": parameters,
                    "request": request_from_infotext(text) if text else {}})


# Lists some clients read at start; this server has none of these add-ons.
@bp.get("/embeddings")
def embeddings():
    engine = current_app.config.get("ENGINE")
    infos = getattr(engine, "embeddings", None)
    if infos is None:  # the model runs in worker processes: read the folder (no width check here)
        folder = current_app.config.get("EMBEDDINGS")
        infos = read_slowly("embeddings", lambda: scan_embeddings(folder), default=[])
    return jsonify(a1111_listing(infos))


@bp.get("/prompt-styles")
def prompt_styles():
    return jsonify([style.to_dict() for style in current_styles().values()])


for _path in ("hypernetworks", "face-restorers"):
    bp.add_url_rule(f"/{_path}", f"empty_{_path.replace('-', '_')}", (lambda: jsonify([])), methods=["GET"])


# --- LoRAs (app/engine/loras/) ---------------------------------------------------------

@bp.get("/loras")
def loras():
    """A1111's list: name, alias, path (here: inside the LoRA folder, not the server's file system), metadata."""
    from app.engine.loras.files import a1111_listing
    from app.web.loras import lora_infos

    return jsonify(a1111_listing(lora_infos()))


@bp.post("/refresh-loras")
def refresh_loras():
    # The listing is read again (unchanged files from a cache), off this thread; answered as A1111 answers, null.
    from app.web.loras import lora_infos

    lora_infos()
    return jsonify(None)
