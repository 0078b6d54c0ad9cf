"""X-Forwarded-* trusted only from a local proxy.

``TRUST_PROXY = n`` says n proxies stand in front (the ngrok agent, Colab's
port proxy, nginx). Their headers are believed only when the TCP connection
itself comes from loopback, where such a proxy connects from; a client that
reaches the port directly (a LAN, a server bound to 0.0.0.0) keeps its real
address, so it can never pick its own identity or dodge the password
throttle with a forged X-Forwarded-For.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%")[0]).is_loopback
    except ValueError:
        return False


class LocalProxyFix:
    """ProxyFix (``n`` hops of For, Proto and Host) for loopback connections only."""

    def __init__(self, app: WSGIApp, hops: int):
        self.direct = app
        self.proxied = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        through = self.proxied if is_loopback(environ.get("REMOTE_ADDR")) else self.direct
        return through(environ, start_response)
