"""Password (or token) auth, and who a client is.

With a PASSWORD set (always when PUBLIC), everything except /login,
/static and /api/health needs it: browsers log in once and get a signed
session cookie; API clients send ``Authorization: Bearer <password>`` or
HTTP Basic with any user name (webuiapi's ``set_auth``). Unauthenticated API
calls get 401 in the error shape; pages redirect to /login.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, has_request_context, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from app.web.errors import ApiError, wants_json

bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = {"auth.login", "auth.logout", "static", "api.health"}
MAX_FAILURES = 10  # wrong passwords per client per window before 429
FAILURE_WINDOW = 300.0

_failures_lock = threading.Lock()


def client_id() -> str:
    """Per-client identity for queue limits: the user's remote address
    (ProxyFix makes it the tunnel's X-Forwarded-For when TRUST_PROXY is set)."""
    return request.remote_addr or "unknown"


def _token_tag(password: str) -> str:
    # The cookie holds a tag of the password, so changing it logs everyone out.
    key = current_app.secret_key
    key_bytes = key.encode() if isinstance(key, str) else bytes(key or b"")
    return hmac.new(key_bytes, password.encode(), hashlib.sha256).hexdigest()


def _matches(given: str | None, password: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), password.encode())


def _credentials() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return decoded.partition(":")[2]
    return None


def is_authenticated() -> bool:
    """Logged in (session cookie) or sent the password. Credentials in a header
    are throttled like the login form: each wrong one is recorded, and over the
    limit the client gets 429 whatever it sends, so no endpoint is a free oracle."""
    password = current_app.config.get("PASSWORD")
    if not password:
        return True
    if session.get("auth") == _token_tag(password):
        return True
    if not request.headers.get("Authorization"):
        return False
    who = client_id()
    if _too_many_failures(who):
        raise ApiError(429, "too many wrong passwords; wait a few minutes")
    if _matches(_credentials(), password):
        return True
    _record_failure(who)
    return False


def _failures() -> dict[str, list[float]]:
    return current_app.extensions.setdefault("t2i_auth_failures", {})


def _too_many_failures(who: str) -> bool:
    with _failures_lock:
        failures = _failures()
        recent = [t for t in failures.get(who, []) if time.monotonic() - t < FAILURE_WINDOW]
        if recent:
            failures[who] = recent
        else:
            failures.pop(who, None)
        return len(recent) >= MAX_FAILURES


def _record_failure(who: str) -> None:
    with _failures_lock:
        failures = _failures()
        now = time.monotonic()
        # Clients that stopped failing long ago are forgotten, so the table
        # holds only the last window's clients however many come and go.
        for other in [k for k, times in failures.items() if now - times[-1] >= FAILURE_WINDOW]:
            del failures[other]
        failures.setdefault(who, []).append(now)


def require_auth():
    """before_request hook."""
    if not current_app.config.get("PASSWORD") or request.endpoint in OPEN_ENDPOINTS:
        return None
    if is_authenticated():
        return None
    if wants_json():
        raise ApiError(401, "authentication required: send 'Authorization: Bearer <password>' or log in at /login",
                       headers={"WWW-Authenticate": 'Bearer realm="t2i"'})
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only same-site paths: no open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


@bp.route("/login", methods=("GET", "POST"))
def login():
    password = current_app.config.get("PASSWORD")
    next_url = _safe_next(request.values.get("next"))
    if not password:
        return redirect(next_url)
    error = None
    status = 200
    if request.method == "POST":
        who = client_id()
        if _too_many_failures(who):
            error, status = "Too many wrong passwords. Wait a few minutes.", 429
        elif _matches(request.form.get("password"), password):
            session.clear()
            session["auth"] = _token_tag(password)
            session.permanent = True
            return redirect(next_url)
        else:
            _record_failure(who)
            error, status = "Wrong password.", 401
    return render_template("login.html", error=error, next=next_url), status


@bp.route("/logout", methods=("GET", "POST"))
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


class _HttpsAwareSessions(SecureCookieSessionInterface):
    """The session cookie is marked Secure when the request came over https
    (through a tunnel: its X-Forwarded-Proto, trusted with TRUST_PROXY), not
    always: the same PUBLIC app is also used at http://127.0.0.1, where a
    Secure cookie would be dropped and the login would never stick."""

    def get_cookie_secure(self, app) -> bool:
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


def init_app(app) -> None:
    app.session_interface = _HttpsAwareSessions()
    app.before_request(require_auth)
    app.register_blueprint(bp)
