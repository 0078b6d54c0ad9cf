"""The instance folder's secrets (the session key, people.json) are written with one function:
readable by the owner only from the first byte, and whole or absent."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """``data`` at ``path``, mode 0600, through a temporary file renamed over it (a crash or a full
    disk never leaves half a file); raises OSError, leaving no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
