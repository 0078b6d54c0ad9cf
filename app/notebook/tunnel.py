"""A public link to the local web app: an ngrok tunnel through pyngrok, or
Colab's own port proxy when no ngrok authtoken is set.

The authtoken comes from the ``authtoken`` argument, the ``NGROK_AUTHTOKEN``
environment variable or, in Colab, the ``NGROK_AUTHTOKEN`` secret (the key
icon in Colab's left bar). It is never printed: every message and every
pyngrok log line goes through ``mask()`` first.

ngrok's failures arrive as ``ERR_NGROK_<n>`` codes buried in agent logs;
``open_tunnel`` turns the common ones into a ``TunnelError`` that says what
to do. Nothing here imports Flask or the engine.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

TOKEN_ENV = "NGROK_AUTHTOKEN"
SIGNUP_URL = "https://dashboard.ngrok.com/signup"
TOKEN_URL = "https://dashboard.ngrok.com/get-started/your-authtoken"
AGENTS_URL = "https://dashboard.ngrok.com/agents"

COLAB_NOTE = ("This Colab proxy link works only for you, in a browser logged into the Google account that runs "
              "this notebook. It is not a link to share: set an ngrok authtoken for that.")
NGROK_NOTE = ("Anyone with this link reaches the app: share it only with the password. Free ngrok links show "
              "a one-time warning page first; click 'Visit Site'.")


class TunnelError(RuntimeError):
    """The public link could not be opened. ``code`` is ngrok's error code
    (``ERR_NGROK_108`` ...) when there is one."""

    def __init__(self, message: str, code: str | None = None):
        self.code = code
        super().__init__(message)


@dataclass
class Tunnel:
    public_url: str
    port: int
    kind: str  # "ngrok" or "colab"
    note: str = ""  # what the user should know about this link
    reused: bool = False
    warnings: list[str] = field(default_factory=list)  # why a fallback was taken

    def describe(self) -> str:
        lines = [f"Public link ({self.kind}): {self.public_url}"]
        lines += self.warnings
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


_current: Tunnel | None = None
_config = None  # the PyngrokConfig of the open ngrok tunnel
_secrets: set[str] = set()  # tokens seen in this process, masked everywhere
_lock = threading.Lock()


# -- the token -------------------------------------------------------------

def in_colab() -> bool:
    return "google.colab" in sys.modules


def find_authtoken(authtoken: str | None = None) -> tuple[str | None, str]:
    """The token and where it came from ("argument", "environment",
    "Colab secret"), or (None, reason it is missing)."""
    for token, source in ((authtoken, "argument"), (os.environ.get(TOKEN_ENV), "environment")):
        if token and token.strip():
            return _remember(token.strip()), source
    if in_colab():
        try:
            from google.colab import userdata  # only exists inside Colab

            token = userdata.get(TOKEN_ENV)
        except Exception as exc:  # SecretNotFoundError, NotebookAccessError, ...
            return None, f"Colab secret {TOKEN_ENV} not readable ({type(exc).__name__})"
        if token and token.strip():
            return _remember(token.strip()), "Colab secret"
    return None, "no token set"


def _remember(token: str) -> str:
    _secrets.add(token)
    return token


def mask(text: str, secrets: set[str] | None = None) -> str:
    """``text`` with every known token replaced by its first 4 characters and '***'."""
    for secret in sorted(secrets if secrets is not None else _secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, secret[:4] + "***")
    return text


class _MaskFilter(logging.Filter):
    """ngrok echoes a rejected authtoken in its error lines, and pyngrok logs
    every agent line: mask them before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = mask(record.getMessage())
            record.args = None
        return True


_MASK_FILTER = _MaskFilter()
for _name in ("pyngrok", "pyngrok.process", "pyngrok.process.ngrok", "pyngrok.ngrok", "pyngrok.installer"):
    logging.getLogger(_name).addFilter(_MASK_FILTER)


# -- errors ----------------------------------------------------------------

def _missing_token_message(reason: str) -> str:
    return (f"ngrok needs an authtoken ({reason}; ERR_NGROK_4018). Sign up free at {SIGNUP_URL}, copy the token "
            f"from {TOKEN_URL}, then either add it as a Colab secret named {TOKEN_ENV} (key icon in the left bar, "
            f"allow notebook access) or set the environment variable {TOKEN_ENV}. Without a token, in Colab the "
            f"app can still be opened through Colab's own port proxy (only for you, not a link to share).")


def _error_message(code: str | None, detail: str, ngrok_path: str | None) -> str:
    if code == "ERR_NGROK_4018":
        return _missing_token_message("the agent has no authtoken")
    if code in ("ERR_NGROK_105", "ERR_NGROK_107"):
        return (f"ngrok rejected the authtoken ({code}): it is malformed, reset or revoked. Copy it again from "
                f"{TOKEN_URL} (the whole token, no spaces) and update the {TOKEN_ENV} secret or variable.")
    if code == "ERR_NGROK_108":
        return (f"ngrok allows one agent session per free account and another one is running ({code}): another "
                f"notebook or computer uses the same token. Stop that tunnel (run the stop cell there, or end its "
                f"session at {AGENTS_URL}), then open the link again.")
    if code == "ERR_NGROK_121":
        where = f" at {ngrok_path}" if ngrok_path else ""
        return (f"The ngrok agent{where} is too old for ngrok's service ({code}). Upgrade it: "
                f"`pip install -U pyngrok`, then delete the old agent{where} so pyngrok downloads a current one "
                f"(or run `pyngrok.ngrok.update()`).")
    if code == "ERR_NGROK_702":
        return (f"ngrok's rate limit was hit ({code}: too many connections per minute on a free account). "
                f"Wait a minute and open the link again.")
    suffix = f" ({code})" if code else ""
    return f"ngrok could not open the tunnel{suffix}: {detail.strip()}"


def _error_code(*texts: Any) -> str | None:
    for text in texts:
        match = re.search(r"ERR_NGROK_\d+", str(text or ""))
        if match:
            return match.group(0)
    return None


def _translate(exc: Exception, ngrok_path: str | None) -> TunnelError:
    from pyngrok.exception import PyngrokNgrokInstallError

    if isinstance(exc, PyngrokNgrokInstallError):
        return TunnelError(mask(f"The ngrok agent could not be downloaded ({exc}). Check the internet connection, "
                                f"or install ngrok yourself and pass ngrok_path=."))
    code = _error_code(getattr(exc, "ngrok_error", None), getattr(exc, "body", None), exc)
    detail = getattr(exc, "ngrok_error", None) or str(exc)
    return TunnelError(mask(_error_message(code, detail, ngrok_path)), code)


# -- opening and closing ---------------------------------------------------

def _pyngrok_config(authtoken: str | None, region: str | None, ngrok_path: str | None, config_path: str | None):
    from pyngrok.conf import PyngrokConfig

    return PyngrokConfig(ngrok_path=ngrok_path, config_path=config_path, auth_token=authtoken, region=region)


def _upstream_port(tunnel) -> int | None:
    url = (tunnel.upstream or {}).get("url") or tunnel.config.get("addr") or ""
    match = re.search(r":(\d+)/?$", str(url))
    return int(match.group(1)) if match else None


def _open_ngrok(port: int, config) -> Tunnel:
    from pyngrok import ngrok, process

    # Re-running a notebook cell must not start a second agent (ERR_NGROK_108).
    if process.is_process_running(config.ngrok_path):
        for existing in ngrok.get_tunnels(config):
            if _upstream_port(existing) == port and existing.public_url:
                return Tunnel(existing.public_url, port, "ngrok", NGROK_NOTE, reused=True)
    opened = ngrok.connect(str(port), "http", pyngrok_config=config)
    return Tunnel(opened.public_url, port, "ngrok", NGROK_NOTE)


def colab_proxy_url(port: int) -> str:
    """Colab's proxy URL for a local port (needs no account; only works for
    the notebook's owner in their own logged-in browser)."""
    from google.colab import output  # only exists inside Colab

    return str(output.eval_js(f"google.colab.kernel.proxyPort({int(port)})"))


def open_colab_window(port: int, anchor_text: str = "Open the app in a new tab") -> None:
    """Show Colab's link that opens the local port in a new browser tab
    (``serve_kernel_port_as_window``), next to the ``proxyPort`` URL. In a tab
    of its own the app's login cookie is first-party; inside the notebook's
    output frame a browser that blocks third-party cookies would drop it."""
    from google.colab import output  # only exists inside Colab

    output.serve_kernel_port_as_window(int(port), path="/", anchor_text=anchor_text)


def open_tunnel(port: int, *, authtoken: str | None = None, region: str | None = None,
                ngrok_path: str | None = None, config_path: str | None = None,
                colab_fallback: bool = True) -> Tunnel:
    """Open (or reuse) a public link to ``http://localhost:<port>``.

    With a token, an ngrok tunnel. In Colab, without a token or when ngrok
    fails, the Colab port proxy (``colab_fallback``), with the reason in
    ``Tunnel.warnings``. Outside Colab, ngrok is tried even without a token
    (its own config file may hold one) and failures raise a TunnelError that
    says what to do. ``ngrok_path``/``config_path`` choose the agent and its
    config file (pyngrok's defaults otherwise)."""
    global _current, _config
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise TunnelError(f"port must be an integer between 1 and 65535 (got {port!r})")
    token, source = find_authtoken(authtoken)
    with _lock:
        if _current is not None and _current.port == port and _current.kind == "colab" and not token:
            _current.reused = True
            return _current
        if token is None and in_colab() and colab_fallback:
            tunnel = Tunnel(colab_proxy_url(port), port, "colab", COLAB_NOTE,
                            warnings=[f"No ngrok authtoken ({source}): using Colab's port proxy instead."])
            _current = tunnel
            return tunnel
        config = _pyngrok_config(token, region, ngrok_path, config_path)
        try:
            tunnel = _open_ngrok(port, config)
        except Exception as exc:
            from pyngrok.exception import PyngrokError

            if not isinstance(exc, PyngrokError):
                raise
            if _error_code(getattr(exc, "ngrok_error", None), exc) == "ERR_NGROK_4018" and token is None:
                error = TunnelError(_missing_token_message(source), "ERR_NGROK_4018")
            else:
                error = _translate(exc, config.ngrok_path)
            if in_colab() and colab_fallback:
                # The owner still gets a working link; the warning says why it is not shareable.
                tunnel = Tunnel(colab_proxy_url(port), port, "colab", COLAB_NOTE,
                                warnings=[str(error), "Using Colab's port proxy instead."])
                _current = tunnel
                return tunnel
            # ``from None``: the original pyngrok error may quote the token.
            raise error from None
        logger.info("Tunnel open: %s -> localhost:%d", tunnel.public_url, port)
        _current, _config = tunnel, config
        return tunnel


def current_tunnel() -> Tunnel | None:
    return _current


def close_tunnel() -> bool:
    """Close the link opened by ``open_tunnel`` and stop the ngrok agent.
    Returns False when nothing was open. (A Colab proxy link cannot be
    revoked; it dies with the server behind it.)"""
    global _current, _config
    with _lock:
        tunnel, config = _current, _config
        _current = _config = None
        if tunnel is None:
            return False
        if tunnel.kind == "ngrok" and config is not None:
            from pyngrok import ngrok

            try:
                ngrok.disconnect(tunnel.public_url, config)
            except Exception as exc:  # the agent may already be gone; kill below anyway
                logger.warning("Could not disconnect %s: %s", tunnel.public_url, mask(str(exc)))
            ngrok.kill(config)
        return True


def tunnel_alive(tunnel: Tunnel | None = None) -> bool:
    """Whether the ngrok agent behind ``tunnel`` (default: the current one)
    still runs and still lists it. Colab proxy links are always 'alive'."""
    tunnel = tunnel or _current
    if tunnel is None:
        return False
    if tunnel.kind != "ngrok":
        return True
    config = _config
    if config is None:
        return False
    from pyngrok import ngrok, process

    if not process.is_process_running(config.ngrok_path):
        return False
    try:
        return any(t.public_url == tunnel.public_url for t in ngrok.get_tunnels(config))
    except Exception:
        return False


def share_app(app: Flask, port: int, **tunnel_options: Any) -> Tunnel:
    """Open a public link to a running Flask app, refusing when the app has
    no password: a public link without auth lets strangers use the GPU."""
    if not app.config.get("PASSWORD"):
        raise TunnelError("Refusing to open a public link: the app has no PASSWORD. Start it with "
                          "PUBLIC=True (a password is generated) or set PASSWORD.")
    tunnel = open_tunnel(port, **tunnel_options)
    # The link is the app's own origin even through a proxy that rewrites Host (app.web.csrf).
    app.config["ORIGINS"] = (*app.config.get("ORIGINS", ()), tunnel.public_url)
    return tunnel


def keep_alive(is_serving: Callable[[], bool], port: int, *, interval: float = 60.0,
               max_checks: int | None = None, say: Callable[[str], None] = print,
               on_tick: Callable[[], None] | None = None, tick: float = 5.0, **tunnel_options: Any) -> int:
    """Check the server and the link every ``interval`` seconds, reopening a
    dropped ngrok link and printing its (new) URL, until the server stops or
    the user interrupts the cell (KeyboardInterrupt is re-raised). Between
    checks, ``on_tick`` runs every ``tick`` seconds (the notebook prints its
    finished jobs there). Returns the number of checks made."""
    checks = 0
    try:
        while max_checks is None or checks < max_checks:
            checks += 1
            if not is_serving():
                say("The app has stopped.")
                break
            if _current is not None and not tunnel_alive():
                say("The public link dropped; reopening it...")
                try:
                    close_tunnel()
                    say(open_tunnel(port, **tunnel_options).describe())
                except TunnelError as exc:
                    say(str(exc))
            if max_checks is None or checks < max_checks:
                _wait(interval, on_tick, tick)
        if on_tick is not None:
            on_tick()
    except KeyboardInterrupt:
        say("Stopped watching (the app keeps running until the stop cell).")
        raise  # so a notebook's "Run all" stops here instead of running the stop cell
    return checks


def _wait(seconds: float, on_tick: Callable[[], None] | None, tick: float) -> None:
    if on_tick is None:
        time.sleep(seconds)
        return
    for _ in range(max(1, round(seconds / tick))):
        time.sleep(min(seconds, tick))
        on_tick()
