"""Download on first use, as A1111 does for its built-in upscalers: streamed to a
temporary file in the upscaler folder, renamed into place only when complete
(a cut download never looks like a model), and capped in size. Offline (Hub
offline mode, no network) the error says which file to put where."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from app.engine.types import ValidationError

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # the largest built-in (SwinIR-L) is about 136 MB; anything past 1 GiB is not an upscaler
CHUNK = 1 << 20
TIMEOUT_S = 60
_lock = threading.Lock()  # one download at a time: two requests for the same model wait for one file


class TooBig(OSError):
    """The server sends more than an upscaler can be: refused, not kept."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _where(url: str, target: Path) -> str:
    return f"download {url} and put it in {target.parent} as {target.name}"


def _offline_error(field: str, name: str, url: str, target: Path) -> ValidationError:
    return ValidationError(field, name, f"{name} is not downloaded yet and this server is offline "
                                        f"(HF_HUB_OFFLINE=1): {_where(url, target)}")


def check_reachable(field: str, name: str) -> None:
    """Before any work: a built-in model that is neither here nor downloadable (offline) is refused."""
    from app.engine.upscalers.registry import find

    entry = find(name)
    if entry is not None and entry.url and entry.path and offline() and not entry.path.is_file():
        raise _offline_error(field, entry.name, entry.url, entry.path)


def fetch(name: str, url: str, target: Path) -> Path:
    """``target``, downloaded from ``url`` unless it is there already."""
    with _lock:
        if target.is_file():
            return target
        if offline():
            raise _offline_error("upscaler", name, url, target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _stream(url, target)
        except TooBig as exc:
            raise ValidationError("upscaler", name, f"{name}: {url} is {exc}; refused") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise ValidationError("upscaler", name, f"{name} could not be downloaded ({exc}); the server may be "
                                                    f"offline: {_where(url, target)}") from exc
        return target


def _stream(url: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            if total > MAX_BYTES:
                raise TooBig(f"{total} bytes, more than the {MAX_BYTES} bytes an upscaler may have")
            done, logged = 0, 0
            logger.info("downloading %s (%s) to %s", url, f"{total / 1e6:.1f} MB" if total else "size unknown", target)
            while chunk := response.read(CHUNK):
                done += len(chunk)
                if done > MAX_BYTES:
                    raise TooBig(f"more than the {MAX_BYTES} bytes an upscaler may have")
                out.write(chunk)
                if done - logged >= 16 * CHUNK:
                    logged = done
                    logger.info("%s: %.1f of %s MB", target.name, done / 1e6, f"{total / 1e6:.1f}" if total else "?")
            if total and done != total:
                raise OSError(f"the download stopped after {done} of {total} bytes")
        os.replace(tmp, target)
        logger.info("%s: downloaded, %.1f MB", target.name, done / 1e6)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
