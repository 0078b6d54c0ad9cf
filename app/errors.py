"""One JSON error shape for every 4xx and 5xx:
``{"ok": false, "error": msg, "status": code, "field": name|null, "value": repr|null}``."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .types import ValidationError, _short

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by views and services; turned into the error shape."""

    def __init__(self, status: int, message: str, field: str | None = None, value: Any = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.field, self.value = status, message, field, value
        self.headers = headers or {}


def error_response(status: int, message: str, field: str | None = None, value: Any = None, headers=None):
    body = {"ok": False, "error": message, "status": status, "field": field,
            "value": None if value is None else _short(value)}
    response = jsonify(body)
    response.status_code = status
    for key, val in (headers or {}).items():
        response.headers[key] = val
    return response


def _api_error(exc: ApiError):
    return error_response(exc.status, exc.message, exc.field, exc.value, exc.headers)


def _validation_error(exc: ValidationError):
    return error_response(400, f"{exc.field}: {exc.message}", exc.field, exc.value)


def _http_error(exc: HTTPException):
    if isinstance(exc, RequestEntityTooLarge):
        return error_response(413, "request body is larger than the limit of "
                                   f"{_limit_text()} (init images: see max_upload_bytes in /api/health)")
    headers = dict(exc.get_response().headers)
    headers.pop("Content-Type", None)
    headers.pop("Content-Length", None)
    return error_response(exc.code or 500, exc.description or exc.name, headers=headers)


def _limit_text() -> str:
    from flask import current_app

    limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
    return f"{limit} bytes"


def _unexpected(exc: Exception):
    logger.exception("unhandled error")
    return error_response(500, f"internal error ({type(exc).__name__})")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
