"""The native JSON API (``/api/...``). Views only translate: parse and check
the input, call the job queue, shape the output. Errors use the one shape."""
from __future__ import annotations

import io

from flask import Blueprint, Response, current_app, jsonify, request

from .auth import client_id, is_authenticated
from .errors import ApiError
from .gallery import image_url
from .jobs import Job, JobQueue, QueueFull
from .schedulers import DEFAULT_SCHEDULER, scheduler_names
from .settings import engine_limits, public_limits
from .types import GenerationRequest, ValidationError
from .uploads import decode_init_image

bp = Blueprint("api", __name__, url_prefix="/api")

FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler",
          "num_images", "strength", "init_image")
INT_FIELDS = ("width", "height", "steps", "seed", "num_images")
FLOAT_FIELDS = ("guidance_scale", "strength")


def queue() -> JobQueue:
    return current_app.extensions["t2i"]


def worker():
    return current_app.extensions.get("t2i_worker")


# --- shared with the A1111 blueprint -------------------------------------------------

def build_request(values: dict, init_value=None) -> GenerationRequest:
    """A validated GenerationRequest from already-named values (None: default)."""
    config = current_app.config
    values = {k: v for k, v in values.items() if v is not None}
    if "prompt" not in values:
        raise ValidationError("prompt", None, "is required")
    init = None
    if init_value is not None and init_value != "":
        init = decode_init_image(init_value, config)
        # img2img without a size: the init image's size, rounded down to a multiple of 8.
        values.setdefault("width", init.width - init.width % 8)
        values.setdefault("height", init.height - init.height % 8)
    gen = GenerationRequest(init_image=init, **values)
    return gen.validate(engine_limits(config))


def enqueue(gen: GenerationRequest) -> Job:
    init_png = None
    if gen.init_image is not None:
        buf = io.BytesIO()
        gen.init_image.save(buf, format="PNG")
        init_png = buf.getvalue()
    try:
        return queue().submit(gen, client_id(), init_png)
    except QueueFull as exc:
        raise ApiError(429 if exc.per_client else 503, str(exc), None, None,
                       headers={"Retry-After": "10"}) from exc


def model_info() -> dict:
    from .demo import DEMO_MODEL_ID
    from .loading import display_name

    w = worker()
    engine = getattr(w, "engine", None)
    model = current_app.config["MODEL"]
    if engine is not None:
        return {"name": engine.model_name, "id": engine.model, "is_demo": engine.is_demo, "state": "ready",
                "error": None}
    return {"name": display_name(model), "id": model, "is_demo": model == DEMO_MODEL_ID,
            "state": w.model_state if w is not None else "loading", "error": getattr(w, "model_error", None)}


def form_defaults() -> dict:
    """The form's starting values (the page, and /api/health for the page to
    correct them): the size is the model's own once it is loaded, a guess before."""
    engine = getattr(worker(), "engine", None)
    if engine is not None:
        width, height = engine.default_size
    else:
        width = height = 256 if model_info()["is_demo"] else 768
    return {"width": width, "height": height, "steps": 25, "guidance_scale": 7.5, "scheduler": DEFAULT_SCHEDULER,
            "num_images": 1, "strength": 0.75}


def job_json(job: Job) -> dict:
    return {
        "id": job.id,
        "state": job.state,
        "position": job.position,
        "progress": {"step": job.progress.step, "total": job.progress.total, "fraction": job.progress.fraction},
        "preview_url": f"/api/jobs/{job.id}/preview.png" if job.has_preview else None,
        "params": job.params,
        "images": [{"url": image_url(job.id, im["n"]), "seed": im["seed"], "infotext": im["infotext"]}
                   for im in job.images],
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _get_job(job_id: str) -> Job:
    job = queue().get(job_id)
    if job is None:
        raise ApiError(404, "no such job", "id", job_id)
    return job


# --- input ---------------------------------------------------------------------------

def _job_values() -> tuple[dict, object]:
    """Fields from a JSON body or a multipart form; the init image apart."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        values = {k: _from_form(k, v) for k, v in request.form.items()}
        upload = request.files.get("init_image")
        if upload is not None and upload.filename:
            values["init_image"] = upload.read(current_app.config["MAX_UPLOAD_BYTES"] + 1)
    else:
        values = request.get_json(silent=True)
        if not isinstance(values, dict):
            raise ApiError(400, "the body must be a JSON object (Content-Type: application/json) or a form")
    for key in values:
        if key not in FIELDS:
            raise ApiError(400, f"{key}: unknown field; the fields are " + ", ".join(FIELDS), key, values[key])
    init = values.pop("init_image", None)
    return values, init


def _from_form(name: str, text: str):
    """Form fields are text: numbers are converted; what does not convert is
    left as text for validation to name."""
    text = text.strip()
    if text == "":
        return None
    try:
        if name in INT_FIELDS:
            return int(text)
        if name in FLOAT_FIELDS:
            return float(text)
    except ValueError:
        return text
    return text


# --- routes --------------------------------------------------------------------------

@bp.post("/jobs")
def submit_job():
    values, init = _job_values()
    job = enqueue(build_request(values, init))
    return jsonify({"ok": True, "job": job_json(job)}), 202


@bp.get("/jobs")
def list_jobs():
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", "limit", request.args.get("limit"))
    if not 1 <= limit <= 200:
        raise ApiError(400, "limit: must be between 1 and 200", "limit", limit)
    states = None
    if request.args.get("state"):
        states = tuple(s.strip() for s in request.args["state"].split(","))
        bad = [s for s in states if s not in ("queued", "running", "done", "failed", "cancelled")]
        if bad:
            raise ApiError(400, "state: must be queued, running, done, failed or cancelled", "state", bad[0])
    jobs = queue().list(limit=limit, before=request.args.get("before") or None, states=states)
    return jsonify({"ok": True, "jobs": [job_json(j) for j in jobs]})


MAX_WAIT = 60.0


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """``?wait=S`` long-polls: the answer comes when the job finishes, or after
    S seconds (at most 60). API clients then need no polling loop; the page
    polls instead, since it wants progress too."""
    job = _get_job(job_id)
    raw = request.args.get("wait")
    if raw is not None:
        try:
            wait = float(raw)
        except ValueError:
            raise ApiError(400, "wait: must be a number of seconds", "wait", raw) from None
        if not 0 <= wait <= MAX_WAIT:  # also refuses nan
            raise ApiError(400, f"wait: must be between 0 and {MAX_WAIT:g} seconds", "wait", raw)
        job = queue().wait(job_id, wait) or job
    return jsonify({"ok": True, "job": job_json(job)})


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _get_job(job_id)
    if job.finished:
        raise ApiError(409, f"the job is already {job.state}", "id", job_id)
    return jsonify({"ok": True, "job": job_json(queue().cancel(job_id))})


@bp.get("/jobs/<job_id>/preview.png")
def job_preview(job_id: str):
    png = queue().preview(job_id)
    if png is None:
        _get_job(job_id)  # 404 "no such job" first
        raise ApiError(404, "no preview yet", "id", job_id)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.get("/schedulers")
def schedulers():
    return jsonify({"ok": True, "schedulers": scheduler_names(), "default": DEFAULT_SCHEDULER})


@bp.get("/models")
def models():
    info = model_info()
    return jsonify({"ok": True, "models": [{"name": info["name"], "id": info["id"], "loaded": info["state"] == "ready"}]})


@bp.get("/health")
def health():
    info = model_info()
    return jsonify({
        "ok": True,
        "model": info["name"],
        "model_state": info["state"],
        "model_error": info["error"] if is_authenticated() else None,  # may name paths: not for strangers
        "is_demo": info["is_demo"],
        "queue": queue().counts(),
        "limits": public_limits(current_app.config),
        "defaults": form_defaults(),
        "auth_required": bool(current_app.config.get("PASSWORD")),
    })
