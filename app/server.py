"""Run the web app: in a background thread (notebooks, tests) with
``ServerHandle``, or in the foreground with ``python -m app serve``."""
from __future__ import annotations

import argparse
import logging
import threading

logger = logging.getLogger(__name__)


class ServerHandle:
    """A threaded werkzeug server in a background thread.

    ``ServerHandle(app, port=0).start()`` picks a free port; ``url`` says
    where it is; ``stop()`` shuts the server down and stops the app's worker
    (a running job goes back to the queue)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 7860):
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
        worker = self.app.extensions.get("t2i_worker")
        if worker is not None:
            worker.stop(timeout)

    def __enter__(self) -> "ServerHandle":
        return self.start() if not self.thread.is_alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()


def add_serve_parser(subparsers) -> None:
    from .cli import add_model_options

    p = subparsers.add_parser("serve", help="run the web app (UI, JSON API, A1111-compatible API)")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860, like A1111)")
    p.add_argument("--password", help="require this password (browsers log in; API clients send it as a Bearer token)")
    p.add_argument("--public", action="store_true",
                   help="the app is reachable from outside (a tunnel): require auth, generating a password if none given")
    p.add_argument("--trust-proxy", type=int, default=None, metavar="N",
                   help="proxies in front (a tunnel) whose X-Forwarded-For names the client (default: 1 with --public)")
    p.add_argument("--instance", help="folder for the job store and images (default: instance/ in the project folder)")
    p.add_argument("--redis", metavar="URL",
                   help="queue jobs in Redis for `python -m app worker` processes instead of running them here")
    p.set_defaults(func=run_serve)


def serve_config(args: argparse.Namespace) -> dict:
    config = {
        "MODEL": args.model, "DEVICE": args.device, "DTYPE": args.dtype, "CONFIG": args.config,
        "TEXT_ENCODER": args.text_encoder, "ATTENTION_SLICING": args.attention_slicing,
        "CPU_OFFLOAD": args.cpu_offload, "PUBLIC": args.public,
        "TRUST_PROXY": args.trust_proxy if args.trust_proxy is not None else (1 if args.public else 0),
    }
    if args.password:
        config["PASSWORD"] = args.password
    if args.instance:
        config["INSTANCE"] = args.instance
    if args.redis:
        config["REDIS_URL"] = args.redis
    return config


def run_serve(args: argparse.Namespace) -> int:
    import signal

    from . import create_app
    from .cli import CLIError

    app = create_app({**serve_config(args), "START_WORKER": False})
    try:
        handle = ServerHandle(app, args.host, args.port)
    except OSError as exc:
        raise CLIError(f"port: cannot listen on {args.host}:{args.port} ({exc})") from exc
    app.extensions["t2i_worker"].start()  # loads the model in the background; /api/health tells when ready
    print(f"Serving on {handle.url}  (instance folder: {app.instance_path})", flush=True)
    if app.config["PASSWORD"] and not args.password:
        print(f"Password: {app.config['PASSWORD']}", flush=True)
    # `docker stop` and systemd send SIGTERM: stop as on Ctrl-C (no new connections, finished
    # images written). Python's default would die at once, and as a container's PID 1 it
    # would ignore the signal until the engine's SIGKILL.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    handle.start()
    try:
        handle.thread.join()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        handle.stop()
    return 0
