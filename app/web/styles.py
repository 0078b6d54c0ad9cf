"""Prompt styles on the web: the file they live in, applying them to a
request (the native API and the A1111 API share ``styled_values``), and
the native API that lists and edits them (``/api/styles``).

Styles are one file for the whole app, as in A1111: anyone who may submit
jobs may edit them (behind PASSWORD when the app is public); the limits in
app/engine/styles.py bound what they can write."""
from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify

from app.engine.styles import (
    MAX_NAME_CHARS,
    MAX_REQUEST_STYLES,
    MAX_STYLES,
    Style,
    TooManyStyles,
    UnknownStyle,
    apply_styles,
    check_style,
    delete_style,
    load_styles,
    save_style,
)
from app.web.body import json_object
from app.web.errors import ApiError
from app.web.services import services
from app.web.settings import engine_limits

bp = Blueprint("styles", __name__, url_prefix="/api/styles")

STYLE_FIELDS = ("prompt", "negative_prompt")


def styles_path() -> str:
    """The STYLES setting (styles.csv in the instance folder unless set: INSTANCE_PATHS)."""
    return current_app.config["STYLES"]


def current_styles() -> dict[str, Style]:
    """The styles file as last read: read again only when its modification time or size
    changed (one stat per request, not a CSV parse of up to MAX_STYLES rows)."""
    path = styles_path()
    try:
        stat = os.stat(path)
        version: tuple = (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (path, None, None, None)  # no file (yet): no styles
    kept = services()
    cached = kept.styles
    if cached is None or cached[0] != version:
        cached = kept.styles = (version, load_styles(path))
    return dict(cached[1])


def styled_values(values: dict) -> dict:
    """The request's values with its ``styles`` applied to the prompt and the
    negative prompt, as A1111 applies them; ``styles`` stays, naming what was
    applied (the job's params keep it). A malformed list or an unknown name: 400."""
    names = values.get("styles")
    if names is None:
        return values
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "styles: must be a list of style names", "styles", names)
    prompt, negative = values.get("prompt"), values.get("negative_prompt", "")
    if not names or not isinstance(prompt, str) or not isinstance(negative, str):
        return values  # wrong types are named by validation
    try:
        prompt, negative = apply_styles(prompt, negative, names, current_styles(),
                                        max_chars=engine_limits(current_app.config).max_prompt_chars)
    except UnknownStyle as exc:
        raise ApiError(400, f"styles: {exc}; see /api/styles", "styles", exc.name) from None
    return {**values, "prompt": prompt, "negative_prompt": negative}


# --- the editing API -----------------------------------------------------------------

def limits() -> dict:
    return {"max_styles": MAX_STYLES, "max_request_styles": MAX_REQUEST_STYLES, "max_name_chars": MAX_NAME_CHARS,
            "max_text_chars": engine_limits(current_app.config).max_prompt_chars}


@bp.get("")
def list_styles():
    return jsonify({"ok": True, "styles": [s.to_dict() for s in current_styles().values()], "limits": limits()})


@bp.put("/<path:name>")  # path: a name with a slash gets a 400 naming it, not a 404
def put_style(name: str):
    """Create or replace a style: ``{"prompt": ..., "negative_prompt": ...}`` (a missing one is empty)."""
    body = json_object()
    for key in body:
        if key not in STYLE_FIELDS:
            raise ApiError(400, f"{key}: unknown field; the fields are " + ", ".join(STYLE_FIELDS), key, body[key])
    style = check_style(Style(name, body.get("prompt", ""), body.get("negative_prompt", "")),
                        engine_limits(current_app.config))
    try:
        created = save_style(styles_path(), style)
        services().styles = None  # a file system with coarse times may show the same version
    except TooManyStyles as exc:
        raise ApiError(409, str(exc), "name", name) from None
    except OSError as exc:  # the message leaves out the path: the caller may be anyone with the link
        raise ApiError(503, f"the styles file could not be written ({exc.strerror or exc})", None, None) from None
    # The style as it reads back from the file (as A1111 reads it, leading spaces dropped), so
    # the answer is what the next job will use.
    saved = current_styles().get(name, style)
    return jsonify({"ok": True, "style": saved.to_dict(), "created": created}), 201 if created else 200


@bp.delete("/<path:name>")
def remove_style(name: str):
    try:
        found = delete_style(styles_path(), name)
        services().styles = None
    except OSError as exc:
        raise ApiError(503, f"the styles file could not be written ({exc.strerror or exc})", None, None) from None
    if not found:
        raise ApiError(404, f"no style named {name!r}", "name", name)
    return jsonify({"ok": True, "deleted": name})
