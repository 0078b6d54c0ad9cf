"""One error handler, two renderings (datasette style): every 4xx and 5xx is
the JSON error shape for API clients,
``{"ok": false, "error": msg, "status": code, "field": name|null, "value": repr|null}``,
and an HTML page with the same message for browsers."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.engine.types import ValidationError, short_repr
from app.jobs.base import StorageUnavailable

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/sdapi/", "/images/", "/controlnet/")
STORAGE_RETRY_AFTER = 5  # seconds


class ApiError(Exception):
    """Raised by views and services; turned into the error shape."""

    def __init__(self, status: int, message: str, field: str | None = None, value: Any = None,
                 headers: dict[str, str] | None = None, shown_value: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.value = status, message, field, value
        self.headers = headers or {}
        self.shown_value = shown_value  # the value already as shown (a job's Failure keeps it so)


def wants_json() -> bool:
    """API paths, and clients that prefer JSON, get JSON; browsers get pages."""
    if request.path.startswith(API_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" or request.is_json


def error_response(status: int, message: str, field: str | None = None, value: Any = None,
                   headers: dict[str, str] | None = None, shown_value: str | None = None):
    if shown_value is None and value is not None:
        shown_value = short_repr(value)
    body = {"ok": False, "error": message, "status": status, "field": field, "value": shown_value}
    if wants_json():
        response = jsonify(body)
    else:
        response = current_app.response_class(render_template("error.html", error=body), mimetype="text/html")
    response.status_code = status
    for key, val in (headers or {}).items():
        response.headers[key] = val
    return response


def _handle(exc: Exception):
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.field, exc.value, exc.headers, exc.shown_value)
    if isinstance(exc, ValidationError):
        return error_response(400, f"{exc.field}: {exc.message}", exc.field, exc.value)
    if isinstance(exc, StorageUnavailable):  # passing (a lock, a restart): no traceback, and "try again"
        logger.warning("storage unavailable: %s", exc)
        return error_response(503, f"storage unavailable, try again in a few seconds ({exc})",
                              headers={"Retry-After": str(STORAGE_RETRY_AFTER)})
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
        return error_response(413, f"request body is larger than the limit of {limit} bytes "
                                   "(init images: see max_upload_bytes in /api/health)")
    if isinstance(exc, HTTPException):
        headers = dict(exc.get_response().headers)
        headers.pop("Content-Type", None)
        headers.pop("Content-Length", None)
        return error_response(exc.code or 500, exc.description or exc.name, headers=headers)
    logger.exception("unhandled error")
    return error_response(500, f"internal error ({type(exc).__name__})")


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, _handle)
