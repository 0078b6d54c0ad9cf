"""The native JSON API (``/api/...``). Views only translate: parse and check
the input, call the job queue, shape the output. Errors use the one shape."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from app.engine.prompt_lines import line_values
from app.engine.schedulers import DEFAULT_SCHEDULER, sampler_names, schedule_labels, scheduler_names
from app.engine.types import ValidationError
from app.jobs.base import READY
from app.jobs.job import STATES, Job
from app.web import models
from app.web.auth import client_id, is_authenticated
from app.web.body import json_object
from app.web.errors import ApiError
from app.web.extras import EXTRAS_FIELDS, SOURCE_FIELDS, extras_request, queue_extras
from app.web.loras import lora_infos
from app.web.service import (
    WEB_FIELDS,
    backend,
    build_line_requests,
    build_request,
    enqueue,
    form_defaults,
    int_arg,
    is_mine,
    job_json,
    job_values,
    page_args,
)
from app.web.settings import public_limits
from app.web.slow import read_slowly
from app.web.timing import known_active
from app.web.waiting import RETRY_AFTER, wait_slot

bp = Blueprint("api", __name__, url_prefix="/api")

FIELDS = WEB_FIELDS


def get_job_or_404(job_id: str) -> Job:
    job = backend().get(job_id)
    if job is None:
        raise ApiError(404, "no such job", "id", job_id)
    return job


# --- input ---------------------------------------------------------------------------

# --- routes --------------------------------------------------------------------------

# "Prompts from file or textbox" on the native API (app/engine/prompt_lines.py): these fields beside the
# request's, one job per line of prompt_lines.
LINE_FIELDS = ("prompt_lines", "iterate_seed", "same_seed", "prompt_position")


@bp.post("/jobs")
def submit_job():
    values, init, mask = job_values(extra=LINE_FIELDS)
    lines = {k: values.pop(k) for k in LINE_FIELDS if k in values}
    if lines:
        return _submit_lines(values, lines, init, mask)
    job = enqueue(build_request(values, init, mask))
    return jsonify({"ok": True, "job": job_json(job)}), 202


def _submit_lines(values: dict, lines: dict, init, mask):
    """One job per line, every line checked before any is queued. Past the client's queue allowance the
    lines queued so far stay queued and the answer says which line was refused and why."""
    if "prompt_lines" not in lines:
        raise ApiError(400, f"prompt_lines: is required with {', '.join(sorted(lines))}", "prompt_lines", None)
    values.setdefault("prompt", "")
    per_line = line_values(values, lines["prompt_lines"], iterate_seed=lines.get("iterate_seed") in (True, "true", "on"),
                           same_seed=lines.get("same_seed") in (True, "true", "on"),
                           position=lines.get("prompt_position") or "start", field="prompt_lines")
    requests = build_line_requests(per_line, lines["prompt_lines"], "prompt_lines", init, mask)
    jobs: list[Job] = []
    for n, gen in enumerate(requests, 1):
        try:
            jobs.append(enqueue(gen))
        except ApiError as exc:
            if not jobs:
                raise
            return jsonify({"ok": True, "jobs": [job_json(j) for j in jobs],
                            "not_queued": {"line": n, "lines": len(requests), "error": exc.message}}), 202
    return jsonify({"ok": True, "jobs": [job_json(j) for j in jobs]}), 202


@bp.get("/jobs")
def list_jobs():
    limit, before = page_args(50, 200)
    states = None
    if request.args.get("state"):
        states = tuple(s.strip() for s in request.args["state"].split(","))
        bad = [s for s in states if s not in STATES]
        if bad:
            raise ApiError(400, "state: must be one of " + ", ".join(STATES), "state", bad[0])
    # Own jobs by default; ?all=1: the whole queue, others' jobs as job_json shows them.
    everyone = request.args.get("all", "").lower() in ("1", "true", "yes")
    jobs = backend().list(limit=limit, before=before, states=states,
                          client=None if everyone else client_id())
    return jsonify({"ok": True, "jobs": [job_json(j) for j in jobs]})


@bp.get("/queue")
def queue():
    """The queue as the page's header, strip and jobs panel show it, from one read of the backend
    (``Backend.queue_view``): ``jobs``, every queued and running job in run order (others' without
    their contents); ``mine``, the caller's unfinished jobs and its ``limit`` newest finished ones;
    the counts and ``ahead``, how many jobs run before the caller's next queued one."""
    view = backend().queue_view(client_id(), int_arg("limit", 10, 0, 100))
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
    body = _known_fields(json_object(), (*EXTRAS_FIELDS, *SOURCE_FIELDS))
    return waited_job(queue_extras(extras_request(body)), 202)


@bp.post("/upscale")
def upscale_image():
    """The Upscale action (issue #12): ``scale``, or ``width``/``height`` (one of them: the other keeps
    the aspect) with ``crop``, by ``upscaler``; an Extras job (issue #24), answered as /api/extras."""
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


@bp.post("/models/refresh")
def refresh_models():
    """Read the checkpoint and VAE folders again (what /sdapi/v1/refresh-checkpoints and refresh-vae
    do), for the page's Refresh button; answers with the state as GET /api/models gives it."""
    read_slowly("refresh-checkpoints", models.catalogue().refresh_checkpoints)  # a slow mount: the last list
    read_slowly("refresh-vae", models.catalogue().refresh_vaes)
    return list_models()


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
        "compile": status.compile,  # compiling: jobs run eager until the compiled UNet is ready
        "queue": backend().counts(),
        "limits": public_limits(current_app.config),
        "defaults": form_defaults(),
        "auth_required": bool(current_app.config.get("PASSWORD")),
        "warnings": backend().warnings(),
    })


# --- LoRAs (app/engine/loras/) ---------------------------------------------------------

@bp.get("/loras")
def loras():
    """The LoRA folder for the page's picker: usable LoRAs with their hash, skipped files with the reason."""
    infos = lora_infos(hashes=True)
    return jsonify({"ok": True, "loras": [i.to_dict() for i in infos if not i.error],
                    "skipped": [i.to_dict() for i in infos if i.error]})
