"""HTML pages (the form at ``/``, the gallery at ``/gallery``, Extras at ``/extras``) and the stored
images (``/images/<job>/<n>.png``).

The pages only render. The form page's script does the work through the JSON
API; the gallery reads the jobs the API reads and shows the same job dicts.
The shared page context (model name, demo flag, schedulers, defaults, field
names, limits) comes from ``app.web.page_context``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from flask import Blueprint, current_app, render_template, request, send_file

from app.engine.controlnet import CONTROL_MODES, RESIZE_MODES
from app.engine.faces.restore import RESTORERS
from app.engine.hires import hr_upscalers
from app.engine.inpaint import FILL_MODES, OUTPAINT_DIRECTIONS
from app.engine.schedulers import RANDN_SOURCES, schedule_labels
from app.engine.types import FIELD_RANGES
from app.engine.xyz import PAGE_AXES
from app.jobs.job import DONE, Job
from app.models.demo import DEMO_NOTICE
from app.web import models
from app.web.auth import client_id, is_owner
from app.web.errors import ApiError
from app.web.service import backend, job_json, page_args, shows_contents

bp = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 30  # five rows of six at 1366 px; the page's script loads the next page on scroll
GALLERY_MAX_PAGE = 100
# The CLI's notice ends with a --model hint that means nothing in a browser.
WEB_DEMO_NOTICE = DEMO_NOTICE.split(" Use --model")[0]


# A failed load's details (paths, exceptions, CLI options) are for the log, which
# the person running the app reads; the page says only what a visitor can do.
MODEL_FAILED_MESSAGE = "The model could not be loaded; the person running this app must restart it."


def _page(**extra) -> dict:
    """What the page templates need on top of the app's context processor."""
    return {"model_state": backend().status().state, "demo_notice": WEB_DEMO_NOTICE,
            "model_failed_message": MODEL_FAILED_MESSAGE, **extra}


@bp.route("/")
def index() -> str:
    # The engine's lists, so the page's choices are the ones validation accepts.
    # The model picker (templates/_model.html) on this page only: every other page, the error page
    # for a store outage included, renders without asking the store for the selection.
    return render_template("index.html", picker=models.state(), hr_upscalers=hr_upscalers(), fill_modes=FILL_MODES,
                           ranges=FIELD_RANGES, outpaint_directions=OUTPAINT_DIRECTIONS,
                           schedule_types=schedule_labels(), randn_sources=RANDN_SOURCES,
                           face_restorers=RESTORERS, cn_control_modes=CONTROL_MODES, cn_resize_modes=RESIZE_MODES,
                           xyz_axes=PAGE_AXES, **_page())


@bp.route("/gallery")
def gallery() -> str:
    """Finished jobs, newest first, a page of ``limit`` jobs at a time (``?before=<job id>``, the
    "Older" link; static/gallery.js follows it on scroll): everyone's, or with ``GALLERY = "private"``
    the client's own; searched by prompt text (``q``) and filtered by sampler and finishing date
    (``from``, ``to``: YYYY-MM-DD), on the server, a page at a time like the plain list."""
    limit, before = page_args(GALLERY_PAGE_SIZE, GALLERY_MAX_PAGE)
    search = GallerySearch.from_args(request.args)
    private = current_app.config["GALLERY"] == "private"
    jobs, older = search.page(before, client_id() if private and not is_owner() else None, limit)
    shown = [job_json(job) for job in jobs if job.images]
    filters = {**search.args(), **({"limit": str(limit)} if "limit" in request.args else {})}
    return render_template("gallery.html", jobs=shown, older=older, before=before, search=search,
                           filters=filters, **_page())


@bp.route("/extras")
def extras() -> str:
    """Upscale and restore faces of an upload or of a gallery image (``?job=<id>&n=<n>``, if the
    caller may see it); the page's script queues the job (static/extras.js)."""
    from app.engine.extras import faces_available, upscaler_names

    source = None
    job = backend().get(request.args["job"]) if request.args.get("job") else None
    n = request.args.get("n", "0")
    if job is not None and shows_contents(job) and n.isdigit() and any(im["n"] == int(n) for im in job.images):
        source = {"job": job.id, "n": int(n), "prompt": job.params.get("prompt", "")}
    return render_template("extras.html", upscalers=upscaler_names(), faces=faces_available(), source=source,
                           **_page())


@dataclass(frozen=True)
class GallerySearch:
    text: str = ""
    sampler: str = ""
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""

    SCAN_MAX = 2000  # jobs looked at for one page: a rare match stops there, "Older" goes on
    BATCH = 100

    @classmethod
    def from_args(cls, args) -> "GallerySearch":
        dates = {}
        for name in ("from", "to"):
            value = (args.get(name) or "").strip()
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise ApiError(400, f"{name}: must be a date, YYYY-MM-DD", name, value) from None
            dates[name] = value
        return cls((args.get("q") or "").strip(), (args.get("sampler") or "").strip(), dates["from"], dates["to"])

    def args(self) -> dict[str, str]:
        """The query arguments that repeat this search (for the pager's links)."""
        pairs = {"q": self.text, "sampler": self.sampler, "from": self.since, "to": self.until}
        return {k: v for k, v in pairs.items() if v}

    @property
    def active(self) -> bool:
        return bool(self.args())

    def matches(self, job: Job) -> bool:
        p = job.params or {}
        day = (job.finished_at or job.created_at or "")[:10]
        words = f"{p.get('prompt', '')}\n{p.get('negative_prompt', '')}".lower()
        return ((not self.text or self.text.lower() in words)
                and (not self.sampler or p.get("scheduler") == self.sampler)
                and (not self.since or day >= self.since) and (not self.until or day <= self.until))

    def page(self, before: str | None, client: str | None, size: int) -> tuple[list[Job], str | None]:
        """A page of ``size`` matching finished jobs, and the cursor for the next one (None: no more)."""
        if not self.active:
            jobs = backend().list(limit=size, before=before, states=(DONE,), client=client)
            return jobs, jobs[-1].id if len(jobs) == size else None
        found: list[Job] = []
        cursor, scanned = before, 0
        while scanned < self.SCAN_MAX:
            batch = backend().list(limit=self.BATCH, before=cursor, states=(DONE,), client=client)
            for job in batch:
                scanned, cursor = scanned + 1, job.id
                if self.matches(job):
                    found.append(job)
                    if len(found) == size:
                        return found, job.id
            if len(batch) < self.BATCH:
                return found, None
        return found, cursor


@bp.get("/images/<job_id>/<name>")
def image(job_id: str, name: str):
    path = backend().image_path(job_id, name)
    if path is not None:
        # Only whom the API shows the job's images to: a cancelled job's partial image (its prompt
        # in the PNG) is its owner's, as the job is. 404 as for no image: existence is private too.
        job = backend().get(job_id)
        path = path if job is not None and shows_contents(job) else None
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
