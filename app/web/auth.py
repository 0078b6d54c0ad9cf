"""Password (or token) auth, and who a client is.

With a PASSWORD set (always when PUBLIC), everything except /login,
/static and /api/health needs it: browsers log in once and get a signed
session cookie; API clients send ``Authorization: Bearer <password>`` or
HTTP Basic with any user name (webuiapi's ``set_auth``). Unauthenticated API
calls get 401 in the error shape; pages redirect to /login. Wrong passwords
are throttled (app.web.throttle); the right one always gets in.

Who a client is (``client_id``): its API credential, else its browser's
random id (in the session cookie), else its address. Jobs belong to it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, current_app, has_request_context, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from app.web.errors import ApiError, wants_json
from app.web.throttle import FailureThrottle

bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = {"auth.login", "auth.logout", "static", "api.health"}
THROTTLE = "t2i_auth_throttle"  # app.extensions key of the FailureThrottle


def client_address() -> str:
    """The TCP peer, or the tunnel's X-Forwarded-For when it is trusted (app.web.proxy)."""
    return request.remote_addr or "unknown"


def client_id() -> str:
    """Who owns a job (and whose queue limit it counts against): an API
    credential (a hash of the Authorization header's secret, the user name
    included for Basic, so friends sharing one password under different user
    names differ), else the browser's random id from its session cookie, else
    the address (scripts on an app without a password)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        basic = _basic(value) if scheme.lower() == "basic" else None
        secret = f"basic\0{basic[0]}\0{basic[1]}" if basic else f"{scheme.lower()}\0{value.strip()}"
        return "key:" + hashlib.sha256(secret.encode()).hexdigest()[:32]
    if session.get("cid"):
        return "browser:" + session["cid"]
    return "addr:" + client_address()


def _token_tag(password: str) -> str:
    # The cookie holds a tag of the password, so changing it logs everyone out.
    key = current_app.secret_key
    key_bytes = key.encode() if isinstance(key, str) else bytes(key or b"")
    return hmac.new(key_bytes, password.encode(), hashlib.sha256).hexdigest()


def _matches(given: str | None, password: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), password.encode())


def _basic(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _credentials() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        basic = _basic(value)
        return basic[1] if basic else None
    return None


def _throttle() -> FailureThrottle:
    return current_app.extensions[THROTTLE]


def check_password(given: str | None, password: str) -> bool:
    """True for the right password, always (it is checked first, in constant
    time, so no throttle locks it out); False for a wrong one; ApiError 429
    with Retry-After for a wrong one inside the client's or the global backoff."""
    who = client_address()
    if _matches(given, password):
        _throttle().succeeded(who)
        return True
    wait = _throttle().retry_after(who)
    _throttle().failed(who)
    if wait > 0:
        raise ApiError(429, f"too many wrong passwords; wait {math.ceil(wait)} seconds",
                       headers={"Retry-After": str(math.ceil(wait))})
    return False


def is_authenticated() -> bool:
    """Logged in (session cookie) or sent the password in the Authorization
    header, which is throttled like the login form."""
    password = current_app.config.get("PASSWORD")
    if not password:
        return True
    if session.get("auth") == _token_tag(password):
        return True
    if not request.headers.get("Authorization"):
        return False
    return check_password(_credentials(), password)


def _give_browser_an_id() -> None:
    # Browsers get their id at login; without a password, on their first page.
    if "cid" not in session and not request.headers.get("Authorization") and (
            session.get("auth") or (not current_app.config.get("PASSWORD") and request.method == "GET"
                                    and not wants_json())):
        session["cid"] = secrets.token_urlsafe(16)
        session.permanent = True  # its jobs stay its own after the browser restarts


def require_auth():
    """before_request hook."""
    if not current_app.config.get("PASSWORD") or request.endpoint in OPEN_ENDPOINTS or is_authenticated():
        _give_browser_an_id()
        return None
    if wants_json():
        raise ApiError(401, "authentication required: send 'Authorization: Bearer <password>' or log in at /login",
                       headers={"WWW-Authenticate": 'Bearer realm="t2i"'})
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only same-site paths: no open redirect to another host."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 or ord(c) == 127 for c in target)):  # CR/LF would break the Location header
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


@bp.route("/login", methods=("GET", "POST"))
def login():
    password = current_app.config.get("PASSWORD")
    next_url = _safe_next(request.values.get("next"))
    if not password:
        return redirect(next_url)
    error, status, headers = None, 200, {}
    if request.method == "POST":
        try:
            right = check_password(request.form.get("password"), password)
        except ApiError as exc:
            error, status, headers = f"Too many wrong passwords. Wait {exc.headers['Retry-After']} seconds.", 429, exc.headers
        else:
            if right:
                session.clear()
                session["auth"] = _token_tag(password)
                session["cid"] = secrets.token_urlsafe(16)
                session.permanent = True
                return redirect(next_url)
            error, status = "Wrong password.", 401
    return render_template("login.html", error=error, next=next_url), status, headers


@bp.post("/logout")  # POST only: a link or an image on another page must not log anyone out
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
    app.extensions[THROTTLE] = FailureThrottle()
    app.before_request(require_auth)
    app.register_blueprint(bp)
