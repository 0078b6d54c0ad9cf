"""Serve the web app in a background thread: notebooks, tests, the
benchmark, and ``python -m app serve`` (which then waits in the foreground)."""
from __future__ import annotations

import logging
import threading

from flask import Flask

from app.web import backend_of

logger = logging.getLogger(__name__)


class ServerHandle:
    """A threaded werkzeug server in a background thread.

    ``ServerHandle(app, port=0).start()`` picks a free port; ``url`` says
    where it is; ``stop()`` shuts the server down and stops the app's backend
    (a running job goes back to the queue)."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 7860):
        from werkzeug.serving import make_server

        self.app = app
        try:
            self.server = make_server(host, port, app, threaded=True)
        except SystemExit as exc:  # werkzeug exits on a busy port; a notebook must not
            raise OSError(f"address in use or not available: {host}:{port}") from exc
        self.host, self.port = host, self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="t2i-http", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "ServerHandle":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.server.shutdown()
        self.thread.join(timeout)
        self.server.server_close()
        backend_of(self.app).stop(timeout)

    def __enter__(self) -> "ServerHandle":
        return self.start() if not self.thread.is_alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()
