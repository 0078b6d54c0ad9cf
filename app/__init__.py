"""Stable Diffusion 2.1 text-to-image generator: engine, CLI and web app.

``create_app()`` builds the Flask web app. Flask is imported inside it, so
``python -m app generate`` and the engine never import Flask.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict | None = None):
    """The web app (flaskr style). Settings: app/settings.py; ``test_config``
    overrides them (``INSTANCE`` picks the instance folder)."""
    from flask import Flask

    from . import api, auth, db, errors, gallery, sdapi, views
    from .settings import DEFAULTS, from_environ, public_limits

    test_config = dict(test_config or {})
    instance = test_config.pop("INSTANCE", None) or os.environ.get("T2I_INSTANCE")
    app = Flask(__name__, instance_path=str(Path(instance).resolve()) if instance else None,
                instance_relative_config=True, template_folder=str(ROOT / "templates"),
                static_folder=str(ROOT / "static"))
    # 1. settings: defaults, instance/config.py, T2I_* environment, then the caller's.
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_mapping(from_environ())
    app.config.from_mapping(test_config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    _derive_settings(app)

    # 2. stores, queue and worker: in-process (SQLite) by default, or Redis with GPU worker processes.
    db.init_app(app)
    if app.config["REDIS_URL"]:
        from .redis_web import redis_backend

        job_queue, images, worker = redis_backend(app)
    else:
        from .jobs import SQLiteJobQueue, Worker

        job_queue = SQLiteJobQueue(app.config["DATABASE"], max_queue=app.config["MAX_QUEUE"],
                                   max_per_client=app.config["MAX_QUEUED_PER_CLIENT"])
        images = gallery.Gallery(Path(app.instance_path) / "images")
        worker = Worker(job_queue, _engine_loader(app.config), images, preview_every=app.config["PREVIEW_EVERY"])
    app.extensions["t2i"] = job_queue
    app.extensions["t2i_gallery"] = images
    app.extensions["t2i_worker"] = worker

    # 3. blueprints and error handling.
    errors.init_app(app)
    auth.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(sdapi.bp)
    app.register_blueprint(gallery.bp)
    app.register_blueprint(views.bp)

    @app.context_processor
    def page_context():
        from .schedulers import scheduler_names

        info = api.model_info()
        return {
            "model_name": info["name"],
            "is_demo": info["is_demo"],
            "schedulers": scheduler_names(),
            "defaults": api.form_defaults(),
            "limits": public_limits(app.config),
            "auth_required": bool(app.config.get("PASSWORD")),
        }

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return response

    if app.config["START_WORKER"]:
        worker.start()
    return app


def _derive_settings(app) -> None:
    config = app.config
    if config["DATABASE"] is None:
        config["DATABASE"] = os.path.join(app.instance_path, "jobs.sqlite")
    if config["PUBLIC"] and not config["PASSWORD"]:
        config["PASSWORD"] = secrets.token_urlsafe(9)
        logger.warning("PUBLIC without a password: generated password %s", config["PASSWORD"])
    if not config["SECRET_KEY"]:
        config["SECRET_KEY"] = secrets.token_hex(32)
    # A base64 init image in JSON is 4/3 of its bytes, plus the other fields.
    config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_BYTES"] * 4 // 3 + 64 * 1024
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if config["TRUST_PROXY"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = int(config["TRUST_PROXY"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


def _engine_loader(config):
    def load():
        if config["ENGINE"] is not None:
            return config["ENGINE"]
        from .engine import Engine, EngineOptions
        from .settings import engine_limits

        options = EngineOptions(model=config["MODEL"], device=config["DEVICE"], dtype=config["DTYPE"],
                                config=config["CONFIG"], text_encoder=config["TEXT_ENCODER"],
                                attention_slicing=config["ATTENTION_SLICING"], cpu_offload=config["CPU_OFFLOAD"])
        return Engine.load(options, limits=engine_limits(config))

    return load
