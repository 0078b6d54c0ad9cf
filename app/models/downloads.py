"""Weights downloaded on first use (A1111's built-in upscalers, the face models):
streamed into a temporary file beside the target, capped in size, and renamed
into place only when complete, so a cut connection never leaves a truncated
file that would later look like a model. Offline (``HF_HUB_OFFLINE=1``) the
callers say which file to put where instead."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60


class TooBig(OSError):
    """The server sends more than the file can be: refused, not kept."""


def offline() -> bool:
    """The Hub's offline switch, which Colab users and CI already set, stands for every download."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(url: str, target: Path, max_bytes: int, timeout: float = TIMEOUT_S) -> None:
    """Stream ``url`` to ``target`` atomically. Raises TooBig past ``max_bytes``, OSError
    (urllib's URLError included) when the connection fails or stops short."""
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length") or ""
            total = int(declared) if declared.isdigit() else 0
            if total > max_bytes:
                raise TooBig(f"{total} bytes, more than the {max_bytes} bytes expected")
            done, logged = 0, 0
            logger.info("downloading %s (%s) to %s", url, f"{total / 1e6:.1f} MB" if total else "size unknown", target)
            while chunk := response.read(CHUNK):
                done += len(chunk)
                if done > max_bytes:
                    raise TooBig(f"more than the {max_bytes} bytes expected")
                out.write(chunk)
                if done - logged >= 16 * CHUNK:
                    logged = done
                    logger.info("%s: %.1f of %s MB", target.name, done / 1e6, f"{total / 1e6:.1f}" if total else "?")
            if total and done != total:
                raise OSError(f"the download stopped after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        logger.info("%s: downloaded, %.1f MB", target.name, done / 1e6)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
