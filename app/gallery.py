"""The image folder: ``<instance>/images/<job_id>/<n>.png``, each PNG with its
A1111 ``parameters`` metadata, and the ``/images/...`` route that serves them.

Ids and names are checked against strict patterns and the file is looked up
under the image folder only, so no URL can reach another file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from flask import Blueprint, current_app, send_file

from .errors import ApiError
from .metadata import png_bytes

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
IMAGE_NAME = re.compile(r"^(\d{1,3})\.png$")

bp = Blueprint("gallery", __name__)


class Gallery:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, job_id: str, result) -> list[dict]:
        """Write a GenerationResult's images; returns the job's image records."""
        folder = self.root / _checked_id(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for n, (image, seed, text) in enumerate(zip(result.images, result.seeds, result.infotexts)):
            path = folder / f"{n}.png"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(png_bytes(image, text))
            os.replace(tmp, path)  # a kill mid-write never leaves half a PNG under the real name
            records.append({"n": n, "seed": seed, "infotext": text})
        return records

    def path(self, job_id: str, name: str) -> Path | None:
        """The file for ``/images/<job_id>/<name>``, or None if the names are not ours."""
        if not (isinstance(job_id, str) and JOB_ID.match(job_id) and isinstance(name, str) and IMAGE_NAME.match(name)):
            return None
        path = self.root / job_id / name
        return path if path.is_file() else None

    def read(self, job_id: str, n: int) -> bytes | None:
        path = self.path(job_id, f"{n}.png")
        return None if path is None else path.read_bytes()


def _checked_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise ValueError(f"job id: not a job id: {job_id!r}")
    return job_id


def image_url(job_id: str, n: int) -> str:
    return f"/images/{job_id}/{n}.png"


@bp.get("/images/<job_id>/<name>")
def image(job_id: str, name: str):
    from flask import request

    gallery: Gallery = current_app.extensions["t2i_gallery"]
    path = gallery.path(job_id, name)
    if path is None:
        raise ApiError(404, "no such image", "path", f"{job_id}/{name}")
    download = request.args.get("download") in ("1", "true", "yes")
    response = send_file(path, mimetype="image/png", as_attachment=download,
                         download_name=f"t2i-{job_id[:8]}-{name}", max_age=3600)
    # Private: with a password the image is the user's; a shared cache (proxy, CDN) must not keep it.
    response.cache_control.public = False
    response.cache_control.private = True
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
