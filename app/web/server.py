"""Serve the web app in a background thread: notebooks, tests, the
benchmark, and ``python -m app serve`` (which then waits in the foreground).

The server is waitress: a fixed pool of worker threads behind one poll()
loop, so idle or half-sent connections cost a file descriptor and a few KB,
never a thread. werkzeug's development server (a thread per connection) is
there only for ``debug=True`` (``serve --debug``)."""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from flask import Flask

from app.web.service import backend_of

logger = logging.getLogger(__name__)

# File descriptors kept back from CONNECTION_LIMIT for model files, SQLite, pipes and logs.
FD_RESERVE = 256
# Connections the kernel queues while the poll loop gets round to accepting them.
BACKLOG = 2048
ACCEPT_BATCH = 256


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit and return it:
    every open connection takes a descriptor, and the soft limit is often 1024."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError) as exc:  # e.g. an infinite hard limit above the kernel's nr_open
        logger.warning("could not raise the open-file limit from %d: %s", soft, exc)
        return soft


def waitress_options(config: Any, fd_limit: int) -> dict[str, Any]:
    """waitress's adjustments for the app's settings."""
    threads, slots = config["SERVER_THREADS"], config["WAIT_SLOTS"]
    if not 0 <= slots < threads:
        raise ValueError(f"WAIT_SLOTS must be below SERVER_THREADS (a thread must be left for other requests), "
                         f"but they are {slots} and {threads}")
    timeout = config["CHANNEL_TIMEOUT"]
    body_limit = config.get("MAX_CONTENT_LENGTH")
    return {
        "threads": threads,
        "connection_limit": max(1, min(config["CONNECTION_LIMIT"], fd_limit - FD_RESERVE)),
        "channel_timeout": timeout,
        # How often idle connections are looked for: a connection lives at most timeout + this.
        "cleanup_interval": max(1, timeout // 4),
        "asyncore_use_poll": True,  # select() fails past descriptor 1023
        # waitress deletes X-Forwarded-* from peers it was not told to trust; the app's own
        # LocalProxyFix decides (TRUST_PROXY hops, from PROXY_ADDRESSES only), so let them through.
        "clear_untrusted_proxy_headers": False,
        "backlog": BACKLOG,
        # waitress reads (and spools to disk) a whole body before the app sees it: refuse
        # absurd ones up front, but leave the app's own 413 (in the error shape) for the near misses.
        "max_request_body_size": 2 * body_limit if body_limit else 1 << 30,
    }


def _waitress_server(app: Flask, sock: socket.socket, options: dict[str, Any]):
    """waitress's server on ``sock``, accepting in batches.

    waitress accepts one connection per trip round its poll loop, and each trip
    looks at every open connection: with thousands open, a burst of new ones
    (a health check among them) waited minutes, one accept per trip. Here each
    trip accepts what is waiting, up to ACCEPT_BATCH."""
    from waitress.adjustments import Adjustments
    from waitress.server import TcpWSGIServer

    class BatchAcceptServer(TcpWSGIServer):
        def handle_accept(self) -> None:
            for _ in range(ACCEPT_BATCH):
                before = len(self._map)
                super().handle_accept()
                if len(self._map) == before or len(self._map) >= self.adj.connection_limit:
                    break  # nothing more waiting (or a failed accept), or the limit is reached

    sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
    return BatchAcceptServer(app, map={}, _sock=sock, adj=Adjustments(**options), sockinfo=sockinfo, bind_socket=False)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


class ServerHandle:
    """The web app served in a background thread.

    ``ServerHandle(app, port=0).start()`` picks a free port; ``url`` says
    where it is; ``stop()`` shuts the server down and stops the app's backend
    (a running job goes back to the queue). ``debug=True`` serves with
    werkzeug's development server instead of waitress."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 7860, debug: bool = False):
        self.app, self.debug = app, debug
        if debug:
            from werkzeug.serving import make_server

            try:
                self._dev = make_server(host, port, app, threaded=True)
            except SystemExit as exc:  # werkzeug exits on a busy port; a notebook must not
                raise OSError(f"address in use or not available: {host}:{port}") from exc
            self.host, self.port = host, self._dev.server_port
            target = self._dev.serve_forever
        else:
            options = waitress_options(app.config, raise_fd_limit())
            sock = _listen(host, port)
            self._waitress = _waitress_server(app, sock, options)
            self.host, self.port = host, sock.getsockname()[1]
            target = self._waitress.run
        self.thread = threading.Thread(target=target, name="t2i-http", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> "ServerHandle":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.debug:
            self._dev.shutdown()
            self.thread.join(timeout)
            self._dev.server_close()
        else:
            self._stop_waitress(timeout)
        backend_of(self.app).stop(timeout)

    def _stop_waitress(self, timeout: float) -> None:
        from waitress import wasyncore

        server = self._waitress
        if self.thread.is_alive():
            # Close every socket from inside the poll loop (not under its feet); the loop
            # ends once its map is empty.
            try:
                server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            except OSError:  # the trigger is closed already: the loop is on its way out (seen once in CI)
                pass
            self.thread.join(timeout)
        wasyncore.close_all(server._map)  # whatever is left (nothing, when the loop closed it all)
        # A long-poll may hold a worker thread up to a minute: its connection is closed
        # already, and the threads are daemons, so do not wait for it long.
        server.task_dispatcher.shutdown(timeout=min(timeout, 5))

    def __enter__(self) -> "ServerHandle":
        return self.start() if not self.thread.is_alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()
