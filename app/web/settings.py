"""Every web app setting, declared once with its default and help text.

``create_app`` loads these defaults, then ``instance/config.py`` if present,
then ``T2I_<NAME>`` environment variables, then the ``test_config`` mapping
(the ``serve`` command passes its options that way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from app.engine.engine import EngineOptions
from app.engine.prompt_lines import MAX_PROMPT_LINES
from app.engine.types import SIZE_MULTIPLE, Limits


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


def engine_option_settings() -> tuple[Setting, ...]:
    """MODEL, DEVICE, ... CPU_OFFLOAD: one setting per EngineOptions field."""
    return tuple(Setting(f.name.upper(), f.default, f.metadata["help"]) for f in fields(EngineOptions))


def engine_options(config: Any) -> EngineOptions:
    """The EngineOptions the settings describe."""
    return EngineOptions(**{f.name: config[f.name.upper()] for f in fields(EngineOptions)})


SETTINGS: tuple[Setting, ...] = (
    *engine_option_settings(),
    Setting("ENGINE", None, "an already loaded app.engine.engine.Engine to use instead of loading MODEL (notebooks, tests)"),
    Setting("PASSWORD", None, "password (or API token) every page and API call needs; None: no auth"),
    Setting("OWNER_PASSWORD", None, "with ACCESS=password: the owner's own password (log in with it, or send it as "
            "the API token) to switch models on a public server, which friends with the PASSWORD cannot; None: one is "
            "generated when PUBLIC"),
    Setting("ACCESS", "password", "password: everyone with the PASSWORD is one trust group; people: the PASSWORD is the "
            "owner's, who gives each friend a personal, revocable link with a daily image quota (/admin, "
            "`python -m app people`)"),
    Setting("GALLERY", "shared", "shared: every client sees all finished images; private: each client sees only its own"),
    Setting("PROXY_ADDRESSES", ("127.0.0.0/8", "::1"), "where the TRUST_PROXY proxies connect from (IPs or "
            "networks); X-Forwarded-* from any other peer is ignored"),
    Setting("ORIGINS", (), "other origins (https://host[:port]) whose pages may post here, for a proxy that rewrites Host"),
    Setting("PUBLIC", False, "the app is reachable from outside (tunnel): auth is required; a password is generated if none is set"),
    Setting("TRUST_PROXY", 0, "number of proxies (the tunnel) whose X-Forwarded-For to trust for client identity"),
    Setting("SECRET_KEY", None, "signs the login cookie; None: one generated and kept in <instance>/secret_key "
            "(deleting that file logs everyone out)"),
    Setting("MAX_WIDTH", 1024, "largest image width in pixels"),
    Setting("MAX_HEIGHT", 1024, "largest image height in pixels"),
    Setting("MAX_STEPS", 100, "most denoising steps per job"),
    Setting("MAX_IMAGES", 4, "most images per job"),
    Setting("MAX_PROMPT_CHARS", 1000, "longest prompt and negative prompt, in characters"),
    Setting("STYLES", None, "AUTOMATIC1111 styles.csv (name,prompt,negative_prompt) for the APIs' styles, edited by /api/styles; "
            "None: <instance>/styles.csv"),
    Setting("CHECKPOINT_DIR", None, "folder of checkpoints to switch between (.safetensors, .ckpt, diffusers folders); "
            "None: <instance>/models/checkpoints"),
    Setting("VAE_DIR", None, "folder of VAEs for sd_vae (.safetensors, .pt, diffusers AutoencoderKL folders); "
            "None: <instance>/models/vae"),
    Setting("UPSCALER_DIR", None, "folder of upscaler models (.pth, .safetensors: ESRGAN, Real-ESRGAN, SwinIR, DAT, "
            "HAT...), listed by file name; A1111's built-in ones download here on first use; "
            "None: <instance>/models/upscalers"),
    Setting("UPSCALER_TILE", 192, "model upscalers work in tiles of this many pixels (0: the whole image at once)"),
    Setting("UPSCALER_TILE_OVERLAP", 16, "pixels of context around each upscaler tile (more: no seams with "
            "models that see further, slower)"),
    Setting("FACE_DIR", None, "folder of the face detector and restorer weights (detection_Resnet50_Final.pth, "
            "GFPGANv1.4.pth, codeformer-v0.1.0.pth), downloaded there on first use; None: <instance>/models/faces"),
    Setting("ANNOTATOR_DIR", None, "folder of the ControlNet preprocessors' weights (lllyasviel/Annotators' "
            "files by name: ControlNetHED.pth, sk_model.pth, body_pose_model.pth...), looked at before the Hub, "
            "which they are fetched from on first use; None: the Hub cache only"),
    Setting("MODELS", (), "Hub ids to list as switchable models besides the folder's (comma separated)"),
    Setting("ALLOW_MODEL_SWITCH", None, "may clients switch the model (and VAE)? None: yes on a local server; "
            "when PUBLIC only the owner (OWNER_PASSWORD, the ACCESS=people owner, or a browser on this machine); "
            "true: everyone, false: no one"),
    Setting("MAX_UPLOAD_BYTES", 10 * 1024 * 1024, "largest init image file, in bytes"),
    Setting("MAX_UPLOAD_PIXELS", 4096 * 4096, "largest init image, in pixels (checked before decoding)"),
    Setting("MAX_QUEUED_PER_CLIENT", 5, "most unfinished (queued or running) jobs per client"),
    Setting("MAX_QUEUE", 100, "most queued jobs in all"),
    Setting("XYZ_MAX_CELLS", 64, "most cells (one job each) in one X/Y/Z plot"),
    Setting("PREVIEW_EVERY", 1, "make a live preview every N steps (0: never)"),
    Setting("START_WORKER", True, "start the GPU worker thread (tests may drive it by hand)"),
    Setting("SYNC_TIMEOUT", 900, "seconds an A1111 /sdapi call waits for its job before answering 504"),
    Setting("SERVER_THREADS", 32, "HTTP worker threads (waitress): the most requests handled at once"),
    Setting("WAIT_SLOTS", 24, "most requests that wait at once (?wait long-polls, synchronous /sdapi calls); "
                              "below SERVER_THREADS so the other threads keep answering"),
    Setting("SYNC_WAIT_SLOTS", 4, "of the WAIT_SLOTS, how many only synchronous /sdapi/v1/txt2img and img2img calls "
                                  "may take (long-polls cannot starve them)"),
    Setting("WAIT_SLOTS_PER_CLIENT", 4, "most WAIT_SLOTS one client holds at once; past that its requests get 429"),
    Setting("CONNECTION_LIMIT", 16384, "most open connections (idle ones included); capped by the open-file limit"),
    Setting("CHANNEL_TIMEOUT", 30, "seconds a connection may sit idle or half-sent before it is closed"),
    Setting("DATABASE", None, "SQLite file of the job store; None: <instance>/jobs.sqlite"),
    Setting("REDIS_URL", None, "redis://host:port/db: queue jobs in Redis for `python -m app worker` processes; None: in-process worker"),
    Setting("REDIS_QUEUE", "t2i", "queue name in Redis (the workers' --queue)"),
    Setting("REDIS_RETRIES", 2, "times a job whose worker died is run again before it fails"),
    Setting("REDIS_JOB_TIMEOUT", 3600, "seconds one job may run on a worker before it fails"),
    Setting("KEEP_IMAGES", 0, "keep at most this many images; the oldest finished jobs are deleted (0: no limit)"),
    Setting("KEEP_DAYS", 0, "delete finished jobs and their images after this many days (0: keep forever)"),
    Setting("MIN_FREE_DISK_MB", 500, "a job fails without running when the image disk has less free space (MB; 0: no check)"),
    Setting("DB_BUSY_TIMEOUT", 5, "seconds a SQLite call waits for a locked database before the API answers 503"),
)

# Where the settings that name a file or folder point when left None: inside the
# instance folder (the one place these defaults are resolved: create_app).
INSTANCE_PATHS: dict[str, str] = {
    "DATABASE": "jobs.sqlite",
    "STYLES": "styles.csv",
    "CHECKPOINT_DIR": "models/checkpoints",
    "VAE_DIR": "models/vae",
    "UPSCALER_DIR": "models/upscalers",
    "FACE_DIR": "models/faces",
    "LORA_DIR": "models/loras",  # unless an ENGINE handed in brings its own (create_app)
    "WILDCARD_DIR": "wildcards",  # an ENGINE handed in without its own folder takes this one (create_app)
    "COMPILE_CACHE_DIR": "compile-cache",
}

DEFAULTS = {s.name: s.default for s in SETTINGS}
_TYPES = {s.name: type(s.default) for s in SETTINGS if s.default is not None}


def from_environ(environ: os._Environ | dict | None = None) -> dict:
    """``T2I_MAX_STEPS=50`` style overrides, converted to the default's type."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name in DEFAULTS:
        raw = environ.get("T2I_" + name)
        if raw is None or name == "ENGINE":
            continue
        kind = _TYPES.get(name, str)
        if name == "ALLOW_MODEL_SWITCH":  # None by default, a bool when set
            kind = bool
        if kind is bool:
            found[name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif kind is int:
            found[name] = int(raw)
        elif kind is tuple:
            found[name] = tuple(part.strip() for part in raw.split(",") if part.strip())
        else:
            found[name] = raw
    return found


def engine_limits(config: Any) -> Limits:
    """The engine's Limits for the web app's settings."""
    return Limits(max_width=config["MAX_WIDTH"], max_height=config["MAX_HEIGHT"],
                  max_pixels=config["MAX_WIDTH"] * config["MAX_HEIGHT"], max_steps=config["MAX_STEPS"],
                  max_images=config["MAX_IMAGES"], max_prompt_chars=config["MAX_PROMPT_CHARS"])


def public_limits(config: Any) -> dict:
    """Limits as the UI and API show them."""
    return {
        "max_width": config["MAX_WIDTH"], "max_height": config["MAX_HEIGHT"], "min_size": Limits.min_size,
        "multiple_of": SIZE_MULTIPLE,
        "max_steps": config["MAX_STEPS"], "max_images": config["MAX_IMAGES"],
        "max_prompt_chars": config["MAX_PROMPT_CHARS"], "max_upload_bytes": config["MAX_UPLOAD_BYTES"],
        "max_upload_pixels": config["MAX_UPLOAD_PIXELS"], "max_queued_per_client": config["MAX_QUEUED_PER_CLIENT"],
        "max_prompt_lines": MAX_PROMPT_LINES,  # jobs one "Prompts from file or textbox" request makes
    }
