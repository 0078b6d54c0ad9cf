"""X-Forwarded-* trusted only from the proxy's own address.

``TRUST_PROXY = n`` says n proxies stand in front (the ngrok agent, Colab's
port proxy, nginx). Their headers are believed only when the TCP connection
itself comes from ``PROXY_ADDRESSES`` (loopback by default, where such a
proxy connects from; Docker's bridge when a host proxy reaches a container);
a client that reaches the port directly (a LAN, a server bound to 0.0.0.0)
keeps its real address, so it can never pick its own identity or dodge the
password throttle with a forged X-Forwarded-For.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``("127.0.0.0/8", "::1")`` as networks; a bad one raises ValueError at startup."""
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))


def is_within(address: str | None, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in nets)


class LocalProxyFix:
    """ProxyFix (``hops`` of For, Proto and Host) for connections from ``nets`` only."""

    def __init__(self, app: WSGIApp, hops: int, nets: tuple[Network, ...]):
        self.direct, self.nets = app, nets
        self.proxied = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        through = self.proxied if is_within(environ.get("REMOTE_ADDR"), self.nets) else self.direct
        return through(environ, start_response)
