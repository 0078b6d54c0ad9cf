"""Files a user drops into the model folders (checkpoints, VAEs, LoRAs,
embeddings): listing them without leaving the folder, and hashing them. Any
of them may come from the internet; a symlink that points out of its folder
is never listed (nor followed into another folder)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable


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
