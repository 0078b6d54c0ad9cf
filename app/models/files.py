"""Files a user drops into the model folders (checkpoints, VAEs, LoRAs,
embeddings): listing them without leaving the folder, and hashing them. Any
of them may come from the internet; a symlink that points out of its folder
is never listed (nor followed into another folder)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


def file_sha256(file: Path, block: int = 1024 * 1024) -> str:
    """The SHA-256 of a whole file, read in 1 MB blocks (A1111's ``calculate_sha256``)."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) stays inside ``root``; False for a
    symlink loop (Path.resolve raises RuntimeError for one)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def walk(root: Path, is_entry: Callable[[Path], bool]) -> list[Path]:
    """The entries under ``root`` (files, or folders, for which ``is_entry`` holds),
    sorted, without entering an entry folder and never leaving ``root`` by a symlink."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            path = here / d
            if not inside(path, root):
                continue
            if is_entry(path):
                found.append(path)
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            path = here / f
            if inside(path, root) and is_entry(path):
                found.append(path)
    return sorted(found)


class HashCache:
    """Hashes of files (``digest``: the whole file's SHA-256 unless told otherwise),
    kept in a JSON file by path, size and mtime, as A1111's cache.json: a folder of
    big files is read through once, not on every listing after a restart."""

    def __init__(self, path: str | Path | None, digest: Callable[[Path], str] | None = None):
        self.path = Path(path) if path else None
        self.digest = digest
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None and self.path.is_file():
                try:
                    self._entries = json.loads(self.path.read_text()).get("sha256", {})
                except (OSError, ValueError, AttributeError):
                    logger.warning("hash cache %s is unreadable; starting a new one", self.path)
        return self._entries

    def cached(self, file: Path) -> str | None:
        """The hash of ``file`` if it is cached and the file unchanged, else None (reads nothing big)."""
        stat = file.stat()
        with self._lock:
            entry = self._load().get(str(file.resolve()))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return entry["sha256"]
        return None

    def hash(self, file: Path) -> str:
        """The hash of ``file``: from the cache, or computed (reading the whole file) and kept."""
        found = self.cached(file)
        if found is not None:
            return found
        stat = file.stat()
        key = str(file.resolve())
        digest = (self.digest or file_sha256)(file)
        with self._lock:
            entries = self._load()
            entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest}
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"sha256": entries}, indent=1))
                    os.replace(tmp, self.path)
                except OSError as exc:
                    logger.warning("cannot write the hash cache %s: %s", self.path, exc)
        return digest
