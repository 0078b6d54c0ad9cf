"""Managing the people of an ``ACCESS = "people"`` app (app.web.people): the ``/admin`` page and
``/api/people``, for the owner only (a friend gets 403; in password mode they do not exist: 404).
Both are ordinary state-changing routes, so the app's same-origin check (app.web.csrf) covers them.

The quota check every queued job passes is ``app.web.service.quota_charged``.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from app.jobs.job import QUEUED, RUNNING
from app.web.auth import is_owner, people_store
from app.web.body import json_object
from app.web.errors import ApiError
from app.web.people import DEFAULT_QUOTA, PERSON, People, PeopleError
from app.web.service import backend, people_errors

bp = Blueprint("admin", __name__)


def _owners_store() -> People:
    store = people_store()
    if store is None:
        raise ApiError(404, "not found: this app shares one password (ACCESS = \"password\"); there are no people "
                            "to manage", "path", request.path)
    if not is_owner():
        raise ApiError(403, "only the app's owner (who has its password) manages people", "path", request.path)
    return store


def login_link(token: str) -> str:
    return url_for("auth.login", token=token, _external=True)


def revoke(store: People, pid: str) -> tuple[dict, list[str]]:
    """Revoke, and cancel the person's queued and running jobs (their images would count for
    someone who may no longer use the app)."""
    with people_errors():
        person = store.revoke(pid)
    cancelled = []
    for job in backend().list(limit=200, states=(QUEUED, RUNNING), client=PERSON + pid):
        if backend().cancel(job.id) is not None:
            cancelled.append(job.id)
    return person.public(), cancelled


def _quota_of(values: dict) -> object:
    quota = values.get("quota")
    return DEFAULT_QUOTA if quota in (None, "") else quota


# --- JSON --------------------------------------------------------------------------------

@bp.get("/api/people")
def list_people():
    store = _owners_store()
    return jsonify({"ok": True, "people": [p.public() for p in store.all()]})


@bp.post("/api/people")
def create_person():
    store = _owners_store()
    body = json_object()
    for key in body:
        if key not in ("name", "quota"):
            raise ApiError(400, f"{key}: unknown field; the fields are name, quota", key, body[key])
    with people_errors():
        person, token = store.add(body.get("name"), _quota_of(body))
    # The token is shown this once: only its hash is kept.
    return jsonify({"ok": True, "person": person.public(), "token": token, "link": login_link(token)}), 201


@bp.patch("/api/people/<pid>")
def change_person(pid: str):
    store = _owners_store()
    body = json_object()
    for key in body:
        if key != "quota":
            raise ApiError(400, f"{key}: unknown field; only quota can be changed", key, body[key])
    with people_errors():
        person = store.set_quota(pid, body.get("quota"))
    return jsonify({"ok": True, "person": person.public()})


@bp.delete("/api/people/<pid>")
@bp.post("/api/people/<pid>/revoke")
def revoke_person(pid: str):
    person, cancelled = revoke(_owners_store(), pid)
    return jsonify({"ok": True, "person": person, "cancelled": cancelled})


# --- the page ----------------------------------------------------------------------------

@bp.get("/admin")
def admin_page():
    store = _owners_store()
    return _render(store)


def _render(store: People, **extra):
    return render_template("admin.html", people=[p.public() for p in store.all()], default_quota=DEFAULT_QUOTA,
                           **extra)


@bp.post("/admin")
def admin_create():
    store = _owners_store()
    try:
        person, token = store.add(request.form.get("name", ""), _quota_of(request.form))
    except PeopleError as exc:
        return _render(store, error=str(exc), error_field=exc.field), 400
    # The new link shows on this answer only (no redirect to a page that could show it again).
    response = _render(store, created=person.public(), link=login_link(token))
    return response, 201, {"Cache-Control": "no-store"}


@bp.post("/admin/<pid>/revoke")
def admin_revoke(pid: str):
    revoke(_owners_store(), pid)
    return redirect(url_for("admin.admin_page"), 303)


@bp.post("/admin/<pid>/quota")
def admin_quota(pid: str):
    store = _owners_store()
    with people_errors():
        store.set_quota(pid, request.form.get("quota", ""))
    return redirect(url_for("admin.admin_page"), 303)
