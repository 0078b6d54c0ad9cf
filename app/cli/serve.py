"""``python -m app serve``: the web app in the foreground."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from app.cli.common import CLIError, add_model_options
from app.engine.engine import EngineOptions


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the web app (UI, JSON API, A1111-compatible API)")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860, like A1111)")
    p.add_argument("--password", help="require this password (browsers log in; API clients send it as a Bearer token)")
    p.add_argument("--public", action="store_true",
                   help="the app is reachable from outside (a tunnel): require auth, generating a password if none given")
    p.add_argument("--trust-proxy", type=int, default=None, metavar="N",
                   help="proxies in front (a tunnel) whose X-Forwarded-For names the client (default: 1 with --public)")
    p.add_argument("--access", choices=("password", "people"), default=None,
                   help="password: one shared password (default); people: the password is yours, friends get "
                        "personal links (/admin, `people add`)")
    p.add_argument("--instance", help="folder for the job store and images (default: instance/ in the project folder)")
    p.add_argument("--redis", metavar="URL",
                   help="queue jobs in Redis for `python -m app worker` processes instead of running them here")
    p.add_argument("--debug", action="store_true",
                   help="serve with werkzeug's development server instead of waitress (not with --public)")
    p.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> dict:
    """The web app settings the options stand for (model options by their EngineOptions names)."""
    config = {f.name.upper(): getattr(args, f.name) for f in fields(EngineOptions)}
    config["PUBLIC"] = args.public
    config["TRUST_PROXY"] = args.trust_proxy if args.trust_proxy is not None else (1 if args.public else 0)
    if args.password:
        config["PASSWORD"] = args.password
    if args.access:
        config["ACCESS"] = args.access
    if args.instance:
        config["INSTANCE"] = args.instance
    if args.redis:
        config["REDIS_URL"] = args.redis
    return config


def run(args: argparse.Namespace) -> int:
    import signal

    from app.web import backend_of, create_app
    from app.web.server import ServerHandle

    if args.debug and args.public:
        raise CLIError("--debug: the development server is not for the internet; leave out --public or --debug")
    app = create_app({**serve_config(args), "START_WORKER": False})
    try:
        handle = ServerHandle(app, args.host, args.port, debug=args.debug)
    except OSError as exc:
        raise CLIError(f"port: cannot listen on {args.host}:{args.port} ({exc})") from exc
    except ValueError as exc:  # T2I_WAIT_SLOTS and T2I_SERVER_THREADS that do not fit
        raise CLIError(str(exc)) from exc
    backend_of(app).start()  # loads the model in the background; /api/health tells when ready
    print(f"Serving on {handle.url}  (instance folder: {app.instance_path})", flush=True)
    if app.config["PASSWORD"] and not args.password:
        print(f"Password: {app.config['PASSWORD']}", flush=True)
    if app.config["OWNER_PASSWORD"] and not os.environ.get("T2I_OWNER_PASSWORD"):
        print(f"Owner password (yours, not for friends: it lets you switch models on the public link; "
              f"a browser on this machine needs only the password): {app.config['OWNER_PASSWORD']}", flush=True)
    if app.config["ACCESS"] == "people":
        print(f"Personal links for friends: log in with the password and open {handle.url}/admin, "
              "or run `python -m app people add NAME`", flush=True)
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
