"""Same-origin check for state-changing requests (CSRF).

A browser sends its cookies with a form post from any site, and with a
fetch from another port of the same host (the same *site*, so SameSite=Lax
does not help). Every POST/PUT/PATCH/DELETE is therefore refused (403) when
its ``Origin``, or without one its ``Referer``, names another origin than
the request's own scheme://host:port (the tunnel's, through a trusted
proxy: app.web.proxy) or one listed in ``ORIGINS``. A request with
neither header is refused only when it carries the login cookie of a
password-protected app: browsers send Origin on every cross-origin POST,
so what lacks both is a script, which should use the Authorization header.
API clients with an Authorization header send no Origin and pass.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, current_app, request

from app.web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` with the port always spelled out; None for opaque
    origins ("null": sandboxed frames, data: URLs) and junk."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port is None:
        return None
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


def own_origins() -> set[str]:
    urls = [request.host_url, *(current_app.config.get("ORIGINS") or ())]
    return {origin for origin in map(origin_of, urls) if origin is not None}


def check_same_origin() -> None:
    """before_request hook."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    header = "Origin"
    if origin is None:
        origin, header = request.headers.get("Referer"), "Referer"
    if origin is None:
        cookie = request.cookies.get(current_app.config["SESSION_COOKIE_NAME"])
        if cookie and current_app.config.get("PASSWORD") and not request.headers.get("Authorization"):
            raise ApiError(403, "cross-site request refused: a browser session's request must carry an Origin or "
                                "Referer header (scripts: send 'Authorization: Bearer <password>' instead)")
        return
    if origin_of(origin) not in own_origins():
        raise ApiError(403, f"cross-site request refused: {header} {origin} is not this site "
                            f"({request.host_url.rstrip('/')})", header, origin)


def init_app(app: Flask) -> None:
    app.before_request(check_same_origin)
