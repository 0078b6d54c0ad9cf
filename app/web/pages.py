"""HTML pages (the form at ``/``, the gallery at ``/gallery``) and the stored
images (``/images/<job>/<n>.png``).

The pages only render. The form page's script does the work through the JSON
API; the gallery reads the jobs the API reads and shows the same job dicts.
The shared page context (model name, demo flag, schedulers, defaults, field
names, limits) comes from ``app.web.page_context``.
"""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request, send_file

from app.jobs.job import DONE
from app.models.demo import DEMO_NOTICE
from app.web import backend
from app.web.api import is_mine, job_json
from app.web.auth import client_id
from app.web.errors import ApiError

bp = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 24
# The CLI's notice ends with a --model hint that means nothing in a browser.
WEB_DEMO_NOTICE = DEMO_NOTICE.split(" Use --model")[0]


def _page(**extra) -> dict:
    """What the page templates need on top of the app's context processor."""
    return {"model_state": backend().status().state, "demo_notice": WEB_DEMO_NOTICE, **extra}


@bp.route("/")
def index() -> str:
    return render_template("index.html", **_page())


@bp.route("/gallery")
def gallery() -> str:
    """Finished jobs, newest first, a page at a time (``?before=<job id>``):
    everyone's, or with ``GALLERY = "private"`` the client's own."""
    before = request.args.get("before") or None
    private = current_app.config["GALLERY"] == "private"
    jobs = backend().list(limit=GALLERY_PAGE_SIZE, before=before, states=(DONE,),
                          client=client_id() if private else None)
    shown = [job_json(job) for job in jobs if job.images]
    older = jobs[-1].id if len(jobs) == GALLERY_PAGE_SIZE else None
    return render_template("gallery.html", jobs=shown, older=older, before=before, **_page())


@bp.get("/images/<job_id>/<name>")
def image(job_id: str, name: str):
    path = backend().image_path(job_id, name)
    if path is not None and current_app.config["GALLERY"] == "private":
        job = backend().get(job_id)
        path = path if job is not None and is_mine(job) else None  # 404 as for no image: existence is private too
    if path is None:
        raise ApiError(404, "no such image", "path", f"{job_id}/{name}")
    download = request.args.get("download") in ("1", "true", "yes")
    response = send_file(path, mimetype="image/png", as_attachment=download,
                         download_name=f"t2i-{job_id[:8]}-{name}", max_age=3600)
    # Private: with a password the image is the user's; a shared cache (proxy, CDN) must not keep it.
    response.cache_control.public = False
    response.cache_control.private = True
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
