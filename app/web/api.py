"""The native JSON API (``/api/...``). Views only translate: parse and check
the input, call the job queue, shape the output. Errors use the one shape."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from app.engine.controlnet import UNIT_IMAGES
from app.engine.schedulers import DEFAULT_SCHEDULER, sampler_names, schedule_labels, scheduler_names
from app.engine.types import IMAGE_FIELDS, GenerationRequest, ValidationError, floor_size
from app.jobs.base import READY, ModelChoice
from app.jobs.job import DONE, STATES, Job, QueueFull
from app.web import WEB_FIELDS, backend, form_defaults, models
from app.web.admin import quota_charged
from app.web.auth import client_id, is_authenticated, is_owner
from app.web.body import check_int_size, json_object
from app.web.controlnet import prepare_units
from app.web.errors import ApiError
from app.web.loras import check_loras, lora_infos
from app.web.settings import engine_limits, public_limits
from app.web.styles import styled_values
from app.web.timing import known_active, timing
from app.web.uploads import decode_init_image, decode_mask
from app.web.waiting import RETRY_AFTER, wait_slot

bp = Blueprint("api", __name__, url_prefix="/api")

FIELDS = WEB_FIELDS
_TYPES = {f: GenerationRequest.__dataclass_fields__[f].type for f in FIELDS}


# --- shared with the A1111 blueprint -------------------------------------------------

def build_request(values: dict, init_value=None, mask_value=None) -> GenerationRequest:
    """A validated GenerationRequest from already-named values (None: default);
    the init image and the inpainting mask as uploaded (base64, data URL or bytes)."""
    config = current_app.config
    values = {k: v for k, v in values.items() if v is not None}
    if "prompt" not in values:
        raise ValidationError("prompt", None, "is required")
    if "controlnet" in values:  # images decoded within the upload limits, models known (app/web/controlnet.py)
        values["controlnet"] = prepare_units(values["controlnet"])
    values = styled_values(values)  # before validation: the styled prompt is what runs and what is checked
    init = None
    if init_value is not None and init_value != "":
        init = decode_init_image(init_value, config)
        # img2img without a size: the init image's size, rounded down as the engine does.
        values.setdefault("width", floor_size(init.width))
        values.setdefault("height", floor_size(init.height))
    mask = None
    if mask_value is not None and mask_value != "":
        if init is None:
            raise ValidationError("mask", "mask", "needs an init image to inpaint")
        mask = decode_mask(mask_value, config)
    gen = GenerationRequest(init_image=init, mask=mask, **values).validate(engine_limits(config))
    check_loras(gen)  # every <lora:name> names a usable file, before anything is queued
    return gen


def enqueue(gen: GenerationRequest, model: ModelChoice | None = None) -> Job:
    """The one way a job is queued (the native and the A1111 routes): a person's images are
    counted against their daily quota here (app.web.admin), given back if nothing was queued."""
    with quota_charged(gen.num_images):
        try:
            return backend().submit(gen, client_id(), model)
        except QueueFull as exc:
            raise ApiError(429 if exc.per_client else 503, str(exc), None, None,
                           headers={"Retry-After": "10"}) from exc


def image_url(job_id: str, n: int) -> str:
    return f"/images/{job_id}/{n}.png"


def is_mine(job: Job) -> bool:
    return job.client == client_id()


def sees_privately(job: Job) -> bool:
    """Its owner, and the owner of an ``ACCESS = "people"`` app, who sees every private gallery."""
    return is_mine(job) or is_owner()


def shows_contents(job: Job) -> bool:
    """Whose prompt, settings and images a client may see: its own jobs', and
    with ``GALLERY = "shared"`` everyone's finished ones (the gallery's)."""
    return sees_privately(job) or (job.state == DONE and current_app.config["GALLERY"] == "shared")


def job_json(job: Job) -> dict:
    """The job as the caller may see it: someone else's job shows only its
    place in the queue (no prompt, preview or images) unless shows_contents.
    Whose it is never shows, only whether it is the caller's."""
    body = _job_fields(job)
    body["mine"] = is_mine(job)
    body.update(timing(job))  # its, eta_seconds: the page's speed and time-left display
    if not shows_contents(job):
        body.update(params=None, images=[], preview_url=None, error=None)
    return body


MODEL_PARAMS = ("sd_model", "sd_vae", "sd_model_hash", "sd_vae_hash")


def _job_fields(job: Job) -> dict:
    return {
        "id": job.id,
        "state": job.state,
        "position": job.position,
        "progress": {"step": job.progress.step, "total": job.progress.total, "fraction": job.progress.fraction},
        "preview_url": f"/api/jobs/{job.id}/preview.png" if job.has_preview else None,
        "params": _shown_params(job.params),
        "images": [{"url": image_url(job.id, im["n"]), "seed": im["seed"], "infotext": im["infotext"]}
                   for im in job.images],
        "partial": job.partial,  # the images are those of a run stopped early (cancelled or skipped)
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _shown_params(params: dict) -> dict:
    """The job's params without local paths (the owner's) and with ControlNet images left out (their size)."""
    shown = {k: v for k, v in params.items() if k not in MODEL_PARAMS}
    if shown.get("controlnet"):
        shown["controlnet"] = [{k: v for k, v in unit.items() if k not in UNIT_IMAGES} for unit in shown["controlnet"]]
    return shown


def get_job_or_404(job_id: str) -> Job:
    job = backend().get(job_id)
    if job is None:
        raise ApiError(404, "no such job", "id", job_id)
    return job


# --- input ---------------------------------------------------------------------------

def _job_values() -> tuple[dict, object, object]:
    """Fields from a JSON body or a multipart form; the init image and mask apart."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        values = {k: _from_form(k, v) for k, v in request.form.items()}
        if "styles" in request.form:  # a list: one form field per style, as a multi-select sends them
            values["styles"] = [name.strip() for name in request.form.getlist("styles") if name.strip()]
        for name in IMAGE_FIELDS:
            upload = request.files.get(name)
            if upload is not None and upload.filename:
                values[name] = upload.read(current_app.config["MAX_UPLOAD_BYTES"] + 1)
    else:
        values = json_object(" or a form")
    for key in values:
        if key not in FIELDS:
            raise ApiError(400, f"{key}: unknown field; the fields are " + ", ".join(FIELDS), key, values[key])
    init, mask = values.pop("init_image", None), values.pop("mask", None)
    for name, value in (("init_image", init), ("mask", mask)):
        if isinstance(value, str) and not value.strip():
            # null means "no image", like null for any field; an empty string is a broken upload.
            raise ApiError(400, f"{name}: is empty; send a base64 string or a data URL, or leave it out",
                           name, value)
    return values, init, mask


def _from_form(name: str, text: str):
    """Form fields are text: numbers are converted as the request type
    declares them; what does not convert is left as text for validation to name."""
    text = text.strip()
    if text == "":
        return None
    kind = str(_TYPES.get(name, ""))
    if kind.startswith("bool"):  # a checkbox sends "on"; anything else unknown is named by validation
        lowered = text.lower()
        if lowered in ("1", "true", "on", "yes"):
            return True
        return False if lowered in ("0", "false", "off", "no") else text
    try:
        if kind.startswith("int"):
            value = int(text)
            check_int_size(name, value)  # as in a JSON body (app/web/body.py)
            return value
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        return text
    return text


# --- routes --------------------------------------------------------------------------

@bp.post("/jobs")
def submit_job():
    values, init, mask = _job_values()
    job = enqueue(build_request(values, init, mask))
    return jsonify({"ok": True, "job": job_json(job)}), 202


@bp.get("/jobs")
def list_jobs():
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit", request.args.get("limit")) from None
    if not 1 <= limit <= 200:
        raise ApiError(400, "limit: must be between 1 and 200", "limit", limit)
    states = None
    if request.args.get("state"):
        states = tuple(s.strip() for s in request.args["state"].split(","))
        bad = [s for s in states if s not in STATES]
        if bad:
            raise ApiError(400, "state: must be one of " + ", ".join(STATES), "state", bad[0])
    # Own jobs by default; ?all=1: the whole queue, others' jobs as job_json shows them.
    everyone = request.args.get("all", "").lower() in ("1", "true", "yes")
    jobs = backend().list(limit=limit, before=request.args.get("before") or None, states=states,
                          client=None if everyone else client_id())
    return jsonify({"ok": True, "jobs": [job_json(j) for j in jobs]})


@bp.get("/queue")
def queue():
    """The queue as the page's header, strip and jobs panel show it, from one read of the backend
    (``Backend.queue_view``): ``jobs``, every queued and running job in run order (others' without
    their contents); ``mine``, the caller's unfinished jobs and its ``limit`` newest finished ones;
    the counts and ``ahead``, how many jobs run before the caller's next queued one."""
    try:
        limit = int(request.args.get("limit", 10))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit", request.args.get("limit")) from None
    if not 0 <= limit <= 100:
        raise ApiError(400, "limit: must be between 0 and 100", "limit", limit)
    view = backend().queue_view(client_id(), limit)
    known_active(view.active)  # the time-left estimates count the same queue
    return jsonify({"ok": True, **view.counts, "ahead": view.ahead,
                    "jobs": [job_json(j) for j in view.active], "mine": [job_json(j) for j in view.mine]})


MAX_WAIT = 60.0


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """``?wait=S`` long-polls: the answer comes when the job finishes, or after
    S seconds (at most 60). API clients then need no polling loop; the page
    polls instead, since it wants progress too. When every wait slot is taken
    the answer comes at once, unfinished, with ``Retry-After``: ask again."""
    return waited_job(get_job_or_404(job_id))


def waited_job(job: Job, status: int = 200):
    """The job's JSON, after waiting for it as ``?wait=S`` asks (see get_job)."""
    raw = request.args.get("wait")
    busy = False
    if raw is not None:
        try:
            wait = float(raw)
        except ValueError:
            raise ApiError(400, "wait: must be a number of seconds", "wait", raw) from None
        if not 0 <= wait <= MAX_WAIT:  # also refuses nan
            raise ApiError(400, f"wait: must be between 0 and {MAX_WAIT:g} seconds", "wait", raw)
        if not job.finished:
            with wait_slot() as waiting:
                busy = not waiting
                job = (backend().wait(job.id, wait) if waiting else None) or job
    response = jsonify({"ok": True, "job": job_json(job)})
    if busy:
        response.headers["Retry-After"] = RETRY_AFTER
    return response, status


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = get_job_or_404(job_id)
    if not is_mine(job):
        raise ApiError(403, "this job is someone else's: only its owner can cancel it", "id", job_id)
    if job.finished:
        raise ApiError(409, f"the job is already {job.state}", "id", job_id)
    return jsonify({"ok": True, "job": job_json(backend().cancel(job_id) or job)})


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """Delete a finished job and its images; a queued or running one: 409, cancel it first."""
    job = get_job_or_404(job_id)
    if not is_mine(job):
        raise ApiError(403, "this job is someone else's: only its owner can delete it", "id", job_id)
    if not job.finished or not backend().delete(job_id):
        state = (backend().get(job_id) or job).state
        raise ApiError(409, f"the job is {state}: cancel it first, then delete it", "id", job_id)
    return jsonify({"ok": True, "deleted": job_id})


@bp.get("/jobs/<job_id>/preview.png")
def job_preview(job_id: str):
    job = get_job_or_404(job_id)
    png = backend().preview(job_id) if is_mine(job) else None  # others' work in progress is theirs
    if png is None:
        raise ApiError(404, "no preview yet", "id", job_id)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.post("/extras")
def extras_job():
    """An Extras job (issue #24): A1111's extras fields (upscaler_1, upscaling_resize ...) on an uploaded
    ``image`` or a gallery image (``source_job``, ``source_image``); the answer is the queued job
    (``?wait=S`` as GET /api/jobs/<id>), whose image lands in the gallery."""
    from app.web.extras import EXTRAS_FIELDS, SOURCE_FIELDS, extras_request, queue_extras

    body = _known_fields(json_object(), (*EXTRAS_FIELDS, *SOURCE_FIELDS))
    return waited_job(queue_extras(extras_request(body)), 202)


@bp.post("/upscale")
def upscale_image():
    """The Upscale action (issue #12): ``scale``, or ``width``/``height`` (one of them: the other keeps
    the aspect) with ``crop``, by ``upscaler``; an Extras job (issue #24), answered as /api/extras."""
    from app.web.extras import SOURCE_FIELDS, extras_request, queue_extras

    body = _known_fields(json_object(), UPSCALE_FIELDS)
    sized = body.get("width") is not None or body.get("height") is not None
    values = {name: body.get(name) for name in SOURCE_FIELDS}
    values.update(upscaler_1=body.get("upscaler") or "Lanczos", resize_mode=1 if sized else 0,
                  upscaling_resize=body.get("scale"), upscaling_resize_w=body.get("width") or 0,
                  upscaling_resize_h=body.get("height") or 0, upscaling_crop=body.get("crop"))
    try:
        gen = extras_request(values)
    except ValidationError as exc:  # named as this route's fields
        names = {"upscaler_1": "upscaler", "upscaling_resize": "scale", "upscaling_resize_w": "width",
                 "upscaling_resize_h": "height", "upscaling_crop": "crop"}
        raise ApiError(400, f"{names.get(exc.field, exc.field)}: {exc.message}", names.get(exc.field, exc.field),
                       exc.value) from None
    return waited_job(queue_extras(gen), 202)


def _known_fields(body: dict, known: tuple[str, ...]) -> dict:
    for key in body:
        if key not in known:
            raise ApiError(400, f"{key}: unknown field; the fields are " + ", ".join(known), key, body[key])
    return body


UPSCALE_FIELDS = ("image", "source_job", "source_image", "scale", "width", "height", "crop", "upscaler")


@bp.get("/schedulers")
def schedulers():
    """A1111's samplers and schedule types; a request's ``scheduler`` is a sampler, optionally followed by a
    schedule type ("DPM++ 2M Karras"). ``schedulers``: the samplers (the field's older name)."""
    return jsonify({"ok": True, "samplers": sampler_names(), "schedule_types": schedule_labels(),
                    "schedulers": scheduler_names(), "default": DEFAULT_SCHEDULER})


@bp.get("/models")
def list_models():
    """The catalogue, the selection, what is loaded (or loading) and whether switching is allowed."""
    state = models.state(hashed=True)
    loaded = backend().status()
    listing = [{"name": m["model_name"], "id": m["title"], "hash": m["hash"], "selected": m["title"] == state["selected"],
                "loaded": m["filename"] == loaded.id and loaded.state == READY} for m in state.pop("models")]
    return jsonify({"ok": True, "models": listing, **state})


@bp.post("/model")
def switch_model():
    """Switch: ``{"model": title/name/hash, "vae": name}`` (either may be left out); answers
    once the switch is queued, with the state as GET /api/models gives it."""
    body = json_object()
    models.select(body.get("model"), body.get("vae"), field="model", vae_field="vae")
    return list_models()


@bp.get("/health")
def health():
    status = backend().status()
    return jsonify({
        "ok": True,
        "model": status.name,
        "model_state": status.state,
        "model_error": status.error if is_authenticated() else None,  # may name paths: not for strangers
        "is_demo": status.is_demo,
        "queue": backend().counts(),
        "limits": public_limits(current_app.config),
        "defaults": form_defaults(),
        "auth_required": bool(current_app.config.get("PASSWORD")),
        "warnings": backend().warnings(),
    })


# --- LoRAs (app/engine/loras.py) ---------------------------------------------------------

@bp.get("/loras")
def loras():
    """The LoRA folder for the page's picker: usable LoRAs with their hash, skipped files with the reason."""
    infos = lora_infos(hashes=True)
    return jsonify({"ok": True, "loras": [i.to_dict() for i in infos if not i.error],
                    "skipped": [i.to_dict() for i in infos if i.error]})
