"""Download on first use, as A1111 does for its built-in upscalers: streamed to a
temporary file in the upscaler folder, renamed into place only when complete
(a cut download never looks like a model), and capped in size. Offline (Hub
offline mode, no network) the error says which file to put where."""
from __future__ import annotations

import threading
import urllib.error
from pathlib import Path

from app.engine.base import ValidationError
from app.models.downloads import TooBig, download, offline

MAX_BYTES = 1 << 30  # the largest built-in (SwinIR-L) is about 136 MB; anything past 1 GiB is not an upscaler
_lock = threading.Lock()  # one download at a time: two requests for the same model wait for one file


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
            download(url, target, MAX_BYTES)
        except TooBig as exc:
            raise ValidationError("upscaler", name, f"{name}: {url} is {exc}; refused") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise ValidationError("upscaler", name, f"{name} could not be downloaded ({exc}); the server may be "
                                                    f"offline: {_where(url, target)}") from exc
        return target
