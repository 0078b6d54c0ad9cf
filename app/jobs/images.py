"""The image store: ``<instance>/images/<job_id>/<n>.png``, each PNG with its
A1111 ``parameters`` metadata already inside.

Ids and names are checked against strict patterns and the file is looked up
under the image folder only, so no URL can reach another file.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
IMAGE_NAME = re.compile(r"^(\d{1,3})\.png$")


def checked_id(job_id: str) -> str:
    """``job_id`` if it has the form of a job id; ValueError otherwise."""
    if not (isinstance(job_id, str) and JOB_ID.match(job_id)):
        raise ValueError(f"job id: not a job id: {job_id!r}")
    return job_id


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
        folder.mkdir(parents=True, exist_ok=True)
        items = pngs.items() if isinstance(pngs, dict) else enumerate(pngs)
        count = 0
        for n, data in items:
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / f"{int(n)}.png")
            count += 1
        return count

    def path(self, job_id: str, name: str) -> Path | None:
        """The file for ``/images/<job_id>/<name>``, or None if the names are not ours."""
        if not is_image_name(job_id, name):
            return None
        path = self.root / job_id / name
        return path if path.is_file() else None
