"""What the app notebook shows, kept quiet: the app's logs go to a file in
its instance folder (nothing in the cells but what the user needs), one line
per finished job, and the link block (link, copy button, QR code, passwords)
shown once.

The password is shown in a text widget, not printed: Colab saves a
notebook's printed output with it (and with a shared copy of the notebook),
but not the state of its widgets.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.jobs.base import Backend
    from app.jobs.job import Job

LOG_NAME = "app.log"
FINISHED = ("done", "failed", "cancelled")


def log_to_file(instance: str | Path, level: int = logging.INFO) -> Path:
    """Send every log record (the app's, waitress's, pyngrok's) to
    ``instance/app.log`` and none to the cell: with a handler on the root
    logger, Python's last-resort stderr handler stays silent. Calling it
    again does not add a second handler."""
    path = Path(instance) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):  # a console handler would write into the cells
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    return path


def job_line(job: Job) -> str:
    """One line for a finished job: its id, state, size and prompt."""
    params = job.params or {}
    prompt = str(params.get("prompt", ""))
    prompt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    if job.state == "done":
        what = f"{len(job.images)} image{'s' if len(job.images) != 1 else ''} {params.get('width')}x{params.get('height')}"
    elif job.state == "failed":
        what = f"failed: {job.error}"
    else:
        what = job.state
    return f"Job {job.id[:8]} {what}: {prompt!r}"


class JobLines:
    """New finished jobs since the last call, one line each (the keep-alive
    cell prints them). Jobs finished before it was made are not repeated."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._seen = {job.id for job in backend.list(limit=200, states=FINISHED)}

    def new(self) -> list[str]:
        jobs = [job for job in self.backend.list(limit=50, states=FINISHED) if job.id not in self._seen]
        self._seen.update(job.id for job in jobs)
        return [job_line(job) for job in reversed(jobs)]  # oldest first


def qr_svg(url: str) -> str | None:
    """The link as an SVG QR code (for phones), or None without segno."""
    try:
        import segno
    except ImportError:
        return None
    return str(segno.make(url, error="m").svg_inline(scale=4, border=2))


def link_block(url: str, password: str, owner_password: str | None = None) -> Any:
    """The widget that shows the link once: the link with a copy button, a
    QR code, the password in a text field, and the owner password (yours: it
    switches models on the shared link, which the password does not) in another."""
    import ipywidgets as w

    safe = html.escape(url, quote=True)
    copy = ("<button onclick=\"navigator.clipboard.writeText(this.dataset.url);this.textContent='Copied'\" "
            f"data-url=\"{safe}\">Copy link</button>")
    qr = qr_svg(url)
    parts = [f"<b>Open the app:</b> <a href=\"{safe}\" target=\"_blank\">{html.escape(url)}</a> {copy}"]
    if qr:
        parts.append(f"<div>Scan on a phone:<br>{qr}</div>")
    fields: list[Any] = [w.HTML("<br>".join(parts)),
                         w.Text(value=password, description="Password", disabled=False, layout=w.Layout(width="24em"))]
    if owner_password:
        fields += [w.Text(value=owner_password, description="Owner", disabled=False, layout=w.Layout(width="24em")),
                   w.HTML("Share the link and the <b>password</b>. The <b>owner</b> password is yours: log in with "
                          "it instead to switch models on the shared link; friends with the password cannot.")]
    return w.VBox(fields)


__all__ = ["JobLines", "job_line", "link_block", "log_to_file", "person_block", "qr_svg"]


def person_block(web_app: Any, name: str, quota: int, base_url: str) -> Any:
    """The app notebook's People cell: a new person of an ``ACCESS = "people"`` app and their
    personal link, in a text field like the password (Colab saves printed output with the notebook,
    not widgets); the link is shown this once: only its token's hash is kept."""
    import ipywidgets as w

    from app.web.people import PeopleError
    from app.web.services import services_of

    store = services_of(web_app).people
    if store is None:
        return w.HTML('ACCESS is "password": everyone uses the password. For personal links, set ACCESS = '
                      '"people" in Settings and run the cells again.')
    try:
        person, token = store.add(name, quota)
    except PeopleError as exc:
        return w.HTML(html.escape(str(exc)))
    link = f"{base_url.rstrip('/')}/login?token={token}"
    note = (f"Personal link for <b>{html.escape(person.name)}</b> ({person.quota} images a day). Copy it now: it is "
            "shown only once. The token in it also works for scripts (<code>Authorization: Bearer</code>). "
            "Revoke it or change the quota on the app's People page (/admin, logged in with the password).")
    return w.VBox([w.HTML(note), w.Text(value=link, description="Link", layout=w.Layout(width="48em"))])
