"""The image store: ``<instance>/images/<job_id>/<n>.png``, each PNG with its
A1111 ``parameters`` metadata already inside.

Ids and names are checked against strict patterns and the file is looked up
under the image folder only, so no URL can reach another file.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
IMAGE_NAME = re.compile(r"^(\d{1,3})\.png$")


def checked_id(job_id: str) -> str:
    """``job_id`` if it has the form of a job id; ValueError otherwise."""
    if not (isinstance(job_id, str) and JOB_ID.match(job_id)):
        raise ValueError(f"job id: not a job id: {job_id!r}")
    return job_id


class DiskFull(OSError):
    """No room to save a job's images (ENOSPC, or a quota: EDQUOT)."""


def disk_room_reason(free_mb: int, need_mb: int) -> str | None:
    """Why a job must not start for lack of disk space, or None."""
    if need_mb and free_mb < need_mb:
        return f"disk nearly full: {free_mb} MB free, need {need_mb} MB (delete old images, or set KEEP_IMAGES)"
    return None


def is_image_name(job_id: str, name: str) -> bool:
    return (isinstance(job_id, str) and bool(JOB_ID.match(job_id)) and isinstance(name, str)
            and bool(IMAGE_NAME.match(name)))


class ImageStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, job_id: str, pngs: list[bytes] | dict[int, bytes]) -> int:
        """Write a job's PNGs as ``0.png``, ``1.png`` ... (or the numbers of a
        dict); returns how many. A kill mid-write never leaves half a PNG under
        the real name."""
        folder = self.root / checked_id(job_id)
        items = list(pngs.items() if isinstance(pngs, dict) else enumerate(pngs))
        written: list[Path] = []
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for n, data in items:
                fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                final = folder / f"{int(n)}.png"
                os.replace(tmp, final)
                tmp = None
                written.append(final)
        except OSError as exc:
            # All or nothing: a job never ends with some of its images, or a stray temp file.
            for path in [*written, *([Path(tmp)] if tmp else [])]:
                path.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(exc.errno, f"disk full: the images could not be saved ({exc.strerror}); "
                                          "free some space or set KEEP_IMAGES") from exc
            raise
        return len(written)

    def remove(self, job_id: str) -> None:
        """Delete a job's images (its whole folder); nothing if there are none."""
        shutil.rmtree(self.root / checked_id(job_id), ignore_errors=True)

    def free_mb(self) -> int:
        """Free space on the image folder's disk, in MB."""
        return shutil.disk_usage(self.root).free // (1024 * 1024)

    def path(self, job_id: str, name: str) -> Path | None:
        """The file for ``/images/<job_id>/<name>``, or None if the names are not ours."""
        if not is_image_name(job_id, name):
            return None
        path = self.root / job_id / name
        return path if path.is_file() else None
