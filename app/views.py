"""HTML pages: the form at ``/`` and the gallery at ``/gallery``.

The pages only render; all work goes through the JSON API, which the form
page's script calls. The job service in ``app.extensions["t2i"]`` (owned by
app/jobs.py) is read defensively so the pages render while the model loads.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request

from .demo import DEMO_MODEL_ID, DEMO_NOTICE
from .loading import DEFAULT_MODEL_ID, display_name
from .schedulers import DEFAULT_SCHEDULER, scheduler_names

bp = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 24
# Native sizes by model before it is loaded: the demo is 256 px, SD 2.1 768 px.
DEMO_SIZE = 256
SD21_SIZE = 768


def _service() -> Any:
    return current_app.extensions.get("t2i")


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call a method of the job service if it has it; None otherwise."""
    method = getattr(_service(), name, None)
    return method(*args, **kwargs) if callable(method) else None


def _health() -> dict:
    health = _call("health")
    return health if isinstance(health, dict) else {}


def _default_size(model: str, health: dict) -> tuple[int, int]:
    defaults = health.get("defaults") or {}
    if defaults.get("width") and defaults.get("height"):
        return int(defaults["width"]), int(defaults["height"])
    size = getattr(_service(), "default_size", None)
    if size:
        return int(size[0]), int(size[1])
    side = DEMO_SIZE if model == DEMO_MODEL_ID else SD21_SIZE
    return side, side


def page_context() -> dict:
    """What every page template gets: model, schedulers, defaults, limits."""
    config = current_app.config
    model = str(config.get("MODEL") or DEFAULT_MODEL_ID)
    health = _health()
    width, height = _default_size(model, health)
    is_demo = bool(health.get("is_demo", model == DEMO_MODEL_ID))
    return {
        "model_name": health.get("model") or display_name(model),
        "model_state": health.get("model_state", "loading"),
        "is_demo": is_demo,
        "demo_notice": DEMO_NOTICE.split(" Use --model")[0],
        "schedulers": scheduler_names(),
        "defaults": {
            "width": width,
            "height": height,
            "steps": 25,
            "guidance_scale": 7.5,
            "scheduler": DEFAULT_SCHEDULER,
            "num_images": 1,
            "strength": 0.75,
        },
        "limits": {
            "max_width": int(config.get("MAX_WIDTH", 1024)),
            "max_height": int(config.get("MAX_HEIGHT", 1024)),
            "max_steps": int(config.get("MAX_STEPS", 100)),
            "max_images": int(config.get("MAX_IMAGES", 4)),
            "max_prompt_chars": int(config.get("MAX_PROMPT_CHARS", 1000)),
            "max_upload_bytes": int(config.get("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)),
        },
    }


@bp.route("/")
def index() -> str:
    return render_template("index.html", **page_context())


@bp.route("/gallery")
def gallery() -> str:
    """Finished jobs, newest first, a page at a time (``?before=<job id>``)."""
    before = request.args.get("before") or None
    jobs = _call("list_jobs", limit=GALLERY_PAGE_SIZE, before=before) or []
    shown = [job for job in jobs if job.get("state") == "done" and job.get("images")]
    older = jobs[-1]["id"] if len(jobs) >= GALLERY_PAGE_SIZE else None
    return render_template("gallery.html", jobs=shown, older=older, before=before, **page_context())
