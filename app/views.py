"""HTML pages: the form at ``/`` and the gallery at ``/gallery``.

The pages only render. The form page's script does the work through the JSON
API; the gallery reads the job store the API reads and shows the same JOB
dicts. The shared page context (model name, demo flag, schedulers, defaults,
limits) comes from the context processor in ``create_app``.
"""
from __future__ import annotations

from flask import Blueprint, render_template, request

from . import api
from .demo import DEMO_NOTICE
from .jobs import DONE

bp = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 24
# The CLI's notice ends with a --model hint that means nothing in a browser.
WEB_DEMO_NOTICE = DEMO_NOTICE.split(" Use --model")[0]


def _page(**extra) -> dict:
    """What the page templates need on top of the app's context processor."""
    return {"model_state": api.model_info()["state"], "demo_notice": WEB_DEMO_NOTICE, **extra}


@bp.route("/")
def index() -> str:
    return render_template("index.html", **_page())


@bp.route("/gallery")
def gallery() -> str:
    """Finished jobs, newest first, a page at a time (``?before=<job id>``)."""
    before = request.args.get("before") or None
    jobs = api.queue().list(limit=GALLERY_PAGE_SIZE, before=before, states=(DONE,))
    shown = [api.job_json(job) for job in jobs if job.images]
    older = jobs[-1].id if len(jobs) == GALLERY_PAGE_SIZE else None
    return render_template("gallery.html", jobs=shown, older=older, before=before, **_page())
