"""Password (or token) auth, and who a client is.

With a PASSWORD set (always when PUBLIC), everything except /login,
/static and /api/health needs it: browsers log in once and get a signed
session cookie; API clients send ``Authorization: Bearer <password>`` or
HTTP Basic with any user name (webuiapi's ``set_auth``). Unauthenticated API
calls get 401 in the error shape; pages redirect to /login. Wrong passwords
are throttled (app.web.throttle); the right one always gets in.

With ``ACCESS = "people"`` the PASSWORD is the owner's, and each friend has a
personal token (app.web.people): a link ``/login?token=...`` logs their
browser in, or API clients send it as the Bearer token (or the Basic
password). Revoking a person ends their token and their sessions at the
next request.

Who started the app (``has_owner_rights``), who alone may switch models on a
public server: the ``ACCESS = "people"`` owner; in password mode whoever logged
in with the ``OWNER_PASSWORD``, and any logged-in request made on this machine
itself, not through a proxy (a local browser; Colab's proxy link where it adds
no proxy header).

Who a client is (``client_id``), which owns its jobs and its private gallery:
with ``ACCESS = "people"``, "owner" or "person:<id>"; with the shared
password, its API credential (the password itself: a Basic user name is not
an identity, so every script with the password is one client), else its
browser's random id (in the session cookie), else its address.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, has_request_context, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from app.web.errors import ApiError, wants_json
from app.web.people import OWNER, PERSON, People, Person, session_tag
from app.web.proxy import LOOPBACK, is_within
from app.web.services import services
from app.web.throttle import FailureThrottle

bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = {"auth.login", "auth.logout", "static", "api.health"}


def client_address() -> str:
    """The TCP peer, or the tunnel's X-Forwarded-For when it is trusted (app.web.proxy)."""
    return request.remote_addr or "unknown"


def client_id() -> str:
    """Who owns a job, its images in a private gallery, and whose queue limit and quota it counts
    against (see the module's text)."""
    return identify() or _anonymous_id()


def _anonymous_id() -> str:
    """Without ``ACCESS = "people"``: the API credential's hash (the password part only for Basic:
    a user name anyone may type is no identity), else the browser's id, else the address."""
    header = request.headers.get("Authorization")
    if header:
        secret = _credentials()
        return "key:" + hashlib.sha256((header if secret is None else secret).encode()).hexdigest()[:32]
    if session.get("cid"):
        return "browser:" + session["cid"]
    return "addr:" + client_address()


def people_store() -> People | None:
    """The people of an ``ACCESS = "people"`` app, else None."""
    return services().people


def is_owner() -> bool:
    """The one with the app's password on an ``ACCESS = "people"`` app (who manages people and sees
    every gallery); nobody is, in password mode, where everyone with the password is alike."""
    return people_store() is not None and identify() == OWNER


def has_owner_rights() -> bool:
    """The one who started the app (see the module's text): may switch models on a public server."""
    if not is_authenticated():
        return False
    if people_store() is not None:
        return is_owner()  # a person is never the owner, not even on this machine
    return holds_owner_password() or is_direct_local()


def holds_owner_password() -> bool:
    """Logged in with (or sent) the ``OWNER_PASSWORD`` of a password-mode app."""
    owner = current_app.config.get("OWNER_PASSWORD")
    if not owner or not is_authenticated():
        return False
    if _matches(session.get("auth"), _token_tag(owner)):
        return True
    return bool(request.headers.get("Authorization")) and _matches(_credentials(), owner)


# Headers a proxy or tunnel adds on its way to the app: ngrok's agent adds X-Forwarded-For (and -Proto,
# -Host), Cloudflare's tunnel Cf-Connecting-Ip, nginx X-Real-Ip when so told. A client cannot take
# them away, only add them, so their absence on a loopback connection means nothing forwarded it.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
                      "X-Forwarded-Prefix", "X-Real-Ip", "Forwarded", "Via", "Cf-Connecting-Ip",
                      "True-Client-Ip", "X-Original-Forwarded-For")


def is_direct_local() -> bool:
    """The TCP peer is this machine and no proxy header came with it: a browser or script on
    the machine running the app, or Colab's port proxy. A tunnel agent also connects from
    loopback, but it adds X-Forwarded-For, so a friend's request through ngrok is not local."""
    environ = request.environ
    peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", environ.get("REMOTE_ADDR"))
    if not is_within(peer, LOOPBACK):
        return False
    return not any(name in request.headers for name in FORWARDING_HEADERS) and not any(
        name.lower().startswith("ngrok-") for name in request.headers.keys())


def person_id() -> str | None:
    who = identify()
    return who[len(PERSON):] if who and who.startswith(PERSON) else None


def identify() -> str | None:
    """Who the request is, once per request; None: not logged in. May raise ApiError 429 (a
    wrong credential within the guessing backoff)."""
    if "t2i_who" not in g:
        g.t2i_who = None  # should the check below raise (429), the request stays not logged in
        g.t2i_who = _identify()
    return g.t2i_who


def _identify() -> str | None:
    password, store = current_app.config.get("PASSWORD"), people_store()
    if store is not None and session.get("person"):
        person = store.get(session["person"])
        if person is not None and person.active and _matches(session.get("pv"), _person_tag(person)):
            return PERSON + person.id
    if password and session.get("auth") == _token_tag(password):
        return OWNER if store is not None else _anonymous_id()
    owner_password = current_app.config.get("OWNER_PASSWORD")
    if password and owner_password and session.get("auth") == _token_tag(owner_password):
        return _anonymous_id()  # the owner is a browser like any other, with more rights
    if not password:
        return _anonymous_id()
    if not request.headers.get("Authorization"):
        return None
    secret = _credentials()
    person = store.by_token(secret) if store is not None else None
    if person is not None:
        _throttle().succeeded(client_address())
        return PERSON + person.id
    if check_password(secret, password, current_app.config.get("OWNER_PASSWORD")):
        return OWNER if store is not None else _anonymous_id()
    return None


def _person_tag(person: Person) -> str:
    return session_tag(current_app.secret_key or "", person)


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
    return services().throttle


def check_password(given: str | None, password: str, owner_password: str | None = None) -> bool:
    """True for the right password (or the owner's), always (it is checked first, in constant
    time, so no throttle locks it out); False for a wrong one; ApiError 429
    with Retry-After for a wrong one inside the client's or the global backoff."""
    who = client_address()
    if _matches(given, password) or (owner_password and _matches(given, owner_password)):
        _throttle().succeeded(who)
        return True
    _failed(who)
    return False


def _failed(who: str) -> None:
    """Count a wrong credential; ApiError 429 within the client's or the global backoff."""
    wait = _throttle().retry_after(who)
    _throttle().failed(who)
    if wait > 0:
        raise ApiError(429, f"too many wrong passwords; wait {math.ceil(wait)} seconds",
                       headers={"Retry-After": str(math.ceil(wait))})


def is_authenticated() -> bool:
    """Logged in (session cookie: the password's, or a person's still valid one) or sent the
    password (or a person's token) in the Authorization header, which is throttled like the login form."""
    return identify() is not None


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
    token = request.args.get("token")
    if token is not None and people_store() is not None:
        return _login_with_link(token, next_url)
    if request.method == "POST":
        try:
            given, owner_password = request.form.get("password"), str(current_app.config.get("OWNER_PASSWORD") or "")
            right = check_password(given, password, owner_password)
        except ApiError as exc:
            error, status, headers = f"Too many wrong passwords. Wait {exc.headers['Retry-After']} seconds.", 429, exc.headers
        else:
            if right:
                session.clear()
                # The owner password's tag marks the owner's session (has_owner_rights).
                owners = bool(owner_password) and _matches(given, owner_password)
                session["auth"] = _token_tag(owner_password if owners else password)
                session["cid"] = secrets.token_urlsafe(16)
                session.permanent = True
                return redirect(next_url)
            error, status = "Wrong password.", 401
    return render_template("login.html", error=error, next=next_url), status, headers


def _login_with_link(token: str, next_url: str):
    """A person's link: log the browser in as them, then send it on to a URL without the token,
    so the token stays neither in the history nor in a Referer."""
    store = people_store()
    assert store is not None
    person = store.by_token(token)
    if person is None:
        try:
            _failed(client_address())
        except ApiError as exc:
            return _link_page(f"Too many wrong links. Wait {exc.headers['Retry-After']} seconds.", 429, exc.headers)
        return _link_page("This link is not valid: it was revoked, or it is incomplete. Ask the person who "
                          "shared it for a new one.", 401)
    _throttle().succeeded(client_address())
    session.clear()
    session["person"], session["pv"] = person.id, _person_tag(person)
    session.permanent = True
    response = redirect(next_url, 303)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _link_page(error: str, status: int, headers: dict | None = None):
    response = current_app.make_response((render_template("login.html", error=error, next="/"), status,
                                          headers or {}))
    response.headers["Referrer-Policy"] = "no-referrer"  # this page's URL holds the (wrong) token
    response.headers["Cache-Control"] = "no-store"
    return response


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
    app.before_request(require_auth)
    app.register_blueprint(bp)
