"""The web app: pages, the native JSON API and the A1111-compatible API over
one ``Backend`` (``app.jobs``). ``create_app`` only wires the settings, that
backend and the blueprints; the views reach the backend through ``backend()``.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from app.engine import upscalers
from app.jobs.base import Backend
from app.jobs.runner import EngineLoader
from app.web.private_files import write_private
from app.web.service import WEB_FIELDS, backend, backend_of, form_defaults
from app.web.services import KEY, Services
from app.web.settings import DEFAULTS, INSTANCE_PATHS, engine_limits, engine_options, from_environ, public_limits

if TYPE_CHECKING:
    from app.models.registry import Catalogue

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The web app (flaskr style). Settings: app/web/settings.py; ``test_config``
    overrides them (``INSTANCE`` picks the instance folder)."""
    from app.web import admin, api, auth, compression, controlnet, csrf, errors, pages, sdapi, styles, xyz

    test_config = dict(test_config or {})
    app = Flask("app", instance_path=str(instance_folder(test_config.pop("INSTANCE", None))),
                instance_relative_config=True, template_folder=str(ROOT / "templates"),
                static_folder=str(ROOT / "static"))
    # 1. settings: defaults, instance/config.py, T2I_* environment, then the caller's.
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_mapping(from_environ())
    app.config.from_mapping(test_config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    _derive_settings(app)

    # 2. the services the requests share (app/web/services.py): the model catalogue, the one backend
    # (in-process SQLite by default, or Redis with GPU workers), the pools, counters and caches.
    app.extensions[KEY] = make_services(app)

    # 3. blueprints and error handling.
    errors.init_app(app)
    csrf.init_app(app)
    auth.init_app(app)
    for blueprint in (api.bp, styles.bp, sdapi.bp, controlnet.bp, pages.bp, admin.bp, xyz.bp):
        app.register_blueprint(blueprint)
    app.context_processor(page_context)
    app.after_request(security_headers)
    compression.init_app(app)  # the static scripts and style sheets, gzip-compressed

    for warning in backend_of(app).warnings():  # e.g. a Redis that loses everything on restart
        logger.warning("%s", warning)
    if app.config["START_WORKER"]:
        backend_of(app).start()
    return app


def make_services(app: Flask) -> Services:
    from app.web import loras, models, sdapi, slow, throttle, waiting

    config, instance = app.config, Path(app.instance_path)
    people = None
    if config["ACCESS"] == "people":
        from app.web.people import PEOPLE_FILE, People

        people = People(instance / PEOPLE_FILE)
    catalogue = models.catalogue_for(app)
    return Services(backend=make_backend(config, instance, catalogue), catalogue=catalogue, slow=slow.SlowWork(),
                    wait_slots=waiting.wait_slots_for(config), throttle=throttle.FailureThrottle(),
                    lora_hashes=loras.lora_hashes_for(app), people=people, sdapi_options=dict(sdapi.OPTIONS))


def instance_folder(given: str | os.PathLike | None = None) -> Path:
    """The instance folder: ``given``, else T2I_INSTANCE, else instance/ in the project folder."""
    given = given or os.environ.get("T2I_INSTANCE")
    return Path(given).resolve() if given else ROOT / "instance"


def make_backend(config: Any, instance: Path, catalogue: "Catalogue | None" = None) -> Backend:
    images = instance / "images"
    model, vae = config["MODEL"], config["VAE"]
    if catalogue is not None:  # the catalogue's spelling of them: selecting the loaded model by title is no switch
        model = catalogue.by_source(model, hashed=False).source
        listed = catalogue.vae_by_path(vae, hashed=False)
        vae = listed.filename if listed is not None else vae
    common = dict(model=model, max_queue=config["MAX_QUEUE"], max_per_client=config["MAX_QUEUED_PER_CLIENT"],
                  keep_images=config["KEEP_IMAGES"], keep_days=config["KEEP_DAYS"], min_free_mb=config["MIN_FREE_DISK_MB"])
    if config["REDIS_URL"]:
        from app.jobs.redis import RedisBackend

        if config["ENGINE"] is not None:
            logger.warning("REDIS_URL is set: ENGINE is not used; the GPU workers load their own model")
        return RedisBackend(config["REDIS_URL"], images, name=config["REDIS_QUEUE"], retries=config["REDIS_RETRIES"],
                            job_timeout=config["REDIS_JOB_TIMEOUT"], limits=engine_limits(config), **common)
    from app.jobs.sqlite import SQLiteBackend

    return SQLiteBackend(config["DATABASE"], images, engine_loader(config, catalogue),
                         preview_every=config["PREVIEW_EVERY"], busy_timeout=config["DB_BUSY_TIMEOUT"],
                         load_model=model_loader(config, catalogue) if config["ENGINE"] is None else None, vae=vae, **common)


def engine_loader(config: Any, catalogue: "Catalogue | None" = None) -> EngineLoader:
    """Loads the model as the settings say (in the worker thread). An ENGINE handed in is its
    caller's, who keeps it in memory: such an app runs it only and refuses switching
    (``app.web.models.refusal``), so that one model is in memory at a time."""
    def load():
        if config["ENGINE"] is not None:
            return config["ENGINE"]
        from app.engine.engine import Engine

        engine = Engine.load(engine_options(config), limits=engine_limits(config))
        return _with_hashes(engine, catalogue)

    return load


def model_loader(config: Any, catalogue: "Catalogue | None" = None):
    """Loads a switched-to model (a ``ModelChoice``) with the settings' other options."""
    def load(choice):
        from app.jobs.engines import load_choice

        engine = load_choice(engine_options(config), choice, engine_limits(config))
        if catalogue is not None and (engine.model_hash is None or (engine.vae and engine.vae_hash is None)):
            engine = _with_hashes(engine, catalogue)  # chosen while its file was still being hashed
        return engine

    return load


def page_context() -> dict[str, Any]:
    from app.engine.schedulers import scheduler_names
    from app.web.auth import is_owner

    status = backend().status()
    return {
        "model_name": status.name,
        "is_demo": status.is_demo,
        "schedulers": scheduler_names(),
        "defaults": form_defaults(),
        "fields": WEB_FIELDS,
        "limits": public_limits(current_app.config),
        "auth_required": bool(current_app.config.get("PASSWORD")),
        "is_owner": is_owner(),
        "access": current_app.config["ACCESS"],
    }


# The pages load only their own files: no inline script or style attribute
# (the page scripts set element.style, which CSP allows), images also from the page's
# own data:/blob: URLs (init image previews), no plugins, no <base>, no framing.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
))


def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")  # frame-ancestors 'none' for old browsers
    return response


def _derive_lora_dir(app: Flask) -> bool:
    """LORA_DIR, the folder the web app lists and checks ``<lora:name>`` tags against, and the engine it
    loads looks in (``engine_options``): by default <instance>/models/loras. An ENGINE handed in
    (notebooks, tests) brings its own folder (``EngineOptions.lora_dir``) and is left as it is: LORA_DIR
    is its folder, and a different one is refused (the page would offer files the engine cannot find)."""
    config = app.config
    engine = None if config["REDIS_URL"] else config["ENGINE"]  # with Redis the workers load their own
    if engine is None:
        return False  # the instance folder's (INSTANCE_PATHS), when not set
    if config["LORA_DIR"] is None:
        config["LORA_DIR"] = engine.lora_dir  # may be None: then this app has no LoRA folder
    elif engine.lora_dir is None or os.path.realpath(config["LORA_DIR"]) != os.path.realpath(engine.lora_dir):
        raise ValueError(f"LORA_DIR {config['LORA_DIR']!r} is not the LoRA folder of the ENGINE handed in "
                         f"({engine.lora_dir!r}): load the engine with EngineOptions(lora_dir=...), and leave "
                         "LORA_DIR unset or the same")
    return True


def _share_wildcard_dir(app: Flask) -> None:
    """An ENGINE handed in (notebooks, tests) resolves templates with the app's WILDCARD_DIR: its own
    folder when the setting is unset and it was loaded with one, else the setting (by default
    <instance>/wildcards), so the page's folder and the engine's are one."""
    engine = None if app.config["REDIS_URL"] else app.config["ENGINE"]
    if engine is None or not hasattr(engine, "wildcard_dir"):
        return
    if engine.wildcard_dir != app.config["WILDCARD_DIR"]:
        engine.wildcard_dir = app.config["WILDCARD_DIR"]
        engine.wildcards_from_app = True


def _derive_settings(app: Flask) -> None:
    config = app.config
    engine_decides = _derive_lora_dir(app)  # an ENGINE handed in decides LORA_DIR
    engine = None if config["REDIS_URL"] else config["ENGINE"]
    if engine is not None and config["WILDCARD_DIR"] is None and not getattr(engine, "wildcards_from_app", True):
        config["WILDCARD_DIR"] = engine.wildcard_dir  # the engine's own folder (EngineOptions.wildcard_dir)
    for name, inside in INSTANCE_PATHS.items():  # a path setting left None: in the instance folder
        if config[name] is None and not (name == "LORA_DIR" and engine_decides):
            # (only the SQLite backend creates DATABASE)
            config[name] = os.path.join(app.instance_path, *inside.split("/"))
    _share_wildcard_dir(app)
    from app.engine.faces import weights as face_weights

    face_weights.configure(config["FACE_DIR"])  # process-wide: the face models are shared by every engine
    from app.models import annotators

    annotators.configure(config["ANNOTATOR_DIR"])  # process-wide, as the face models
    # The engine's upscaler registry is one per process: the app that starts it decides its folder and tiles.
    upscalers.configure(config["UPSCALER_DIR"], config["UPSCALER_TILE"], config["UPSCALER_TILE_OVERLAP"])
    if config["ACCESS"] not in ("password", "people"):
        raise ValueError(f"ACCESS must be 'password' or 'people', not {config['ACCESS']!r}")
    if (config["PUBLIC"] or config["ACCESS"] == "people") and not config["PASSWORD"]:
        # people: the password is the owner's, who manages the people (/admin); without one nobody could
        config["PASSWORD"] = secrets.token_urlsafe(9)
        logger.warning("%s without a password: generated password %s",
                       "PUBLIC" if config["PUBLIC"] else "ACCESS=people", config["PASSWORD"])
    _owner_password(config)
    if not config["SECRET_KEY"]:  # kept in the instance folder: a restart must not log everyone out
        config["SECRET_KEY"] = instance_secret_key(Path(app.instance_path) / SECRET_KEY_FILE)
    # A base64 init image in JSON is 4/3 of its bytes, plus the other fields.
    config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_BYTES"] * 4 // 3 + 64 * 1024
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if config["GALLERY"] not in ("shared", "private"):
        raise ValueError(f"GALLERY must be 'shared' or 'private', not {config['GALLERY']!r}")
    if config["TRUST_PROXY"]:
        from app.web.proxy import LocalProxyFix, networks

        app.wsgi_app = LocalProxyFix(app.wsgi_app, int(config["TRUST_PROXY"]),  # type: ignore[method-assign]
                                     networks(config["PROXY_ADDRESSES"]))


def _owner_password(config: Any) -> None:
    """OWNER_PASSWORD: the password-mode owner's (people mode has its own owner: the PASSWORD's
    holder); generated when PUBLIC, where only the owner may switch models."""
    owner = config["OWNER_PASSWORD"]
    if config["ACCESS"] == "people":
        if owner:
            raise ValueError("OWNER_PASSWORD is for ACCESS=password; with ACCESS=people the PASSWORD is the owner's")
        return
    if owner and owner == config["PASSWORD"]:
        raise ValueError("OWNER_PASSWORD must differ from PASSWORD: everyone with the PASSWORD would be the owner")
    if owner and not config["PASSWORD"]:
        raise ValueError("OWNER_PASSWORD needs a PASSWORD: without one nobody logs in (everyone is trusted)")
    if config["PUBLIC"] and not owner:
        config["OWNER_PASSWORD"] = secrets.token_urlsafe(9)
        logger.warning("PUBLIC without an owner password: generated OWNER_PASSWORD %s (it lets you switch models; "
                       "do not share it)", config["OWNER_PASSWORD"])


SECRET_KEY_FILE = "secret_key"


def instance_secret_key(path: Path) -> str:
    """The key kept in ``path``, made (0600, atomically) on the first start. A random key per
    start would orphan every browser's work at a restart: its cookie would be refused, and the
    client id it holds, which owns its jobs, lost. Deleting the file logs everyone out."""
    try:
        key = path.read_text().strip()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot read %s (%s): a new session key; browsers must log in again", path, exc)
        return secrets.token_hex(32)
    key = secrets.token_hex(32)
    try:
        write_private(path, (key + "\n").encode())  # whole or absent: a crash never leaves half a key
    except OSError as exc:
        logger.warning("cannot keep the session key in %s (%s): browsers must log in again after a restart",
                       path, exc)
    return key


def _with_hashes(engine, catalogue):
    """The engine, told its files' short hashes by the catalogue (for the infotext)."""
    from app.web.models import engine_hashes

    return engine_hashes(engine, catalogue) if catalogue is not None else engine
