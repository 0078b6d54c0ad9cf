"""Groups of jobs: an X/Y/Z plot queued as one job per cell.

Each cell is an ordinary job (its own images, infotext and gallery entry);
``params["group"]`` ties it to its plot: the group id, the cell's ``index``
(``ix + iy * nx + iz * nx * ny``), its ``order`` in the queue and the grid's
spec. The grid is a job too, recorded done under the group's id once every
cell has finished (``collect_group``): the web app draws it from the cells'
PNGs on its disk, which is where both backends' images end up. So the stores
only learn to keep a job's ``group`` and to record a job that ran nowhere
(``JobStore.add_done``).
"""
from __future__ import annotations

import builtins
import logging
from typing import TYPE_CHECKING

from PIL import Image

from app.engine.metadata import png_bytes
from app.engine.xyz import draw_plot
from app.jobs.job import DONE, QUEUED, RUNNING, Job, new_job_id

if TYPE_CHECKING:
    from app.engine.types import GenerationRequest
    from app.jobs.base import Backend, JobStore, ModelChoice

logger = logging.getLogger(__name__)

SCAN_LIMIT = 2000  # how far back the client's jobs are searched for a group's cells


def submit_group(backend: "Backend", cells: list[tuple["GenerationRequest", "ModelChoice | None"]], client: str,
                 info: dict) -> tuple[str, list[Job]]:
    """Queue the cells in order as one group (all or none: a full queue takes back the
    cells already queued); ``info``: the grid's spec. Returns the group id and the jobs.
    A cell's ``model`` None: the model selected now."""
    group_id = new_job_id()
    jobs: list[Job] = []
    try:
        for order, (request, model) in enumerate(cells):
            index = info["order"][order] if "order" in info else order
            group = {"id": group_id, "index": index, "order": order, "count": len(cells),
                     "grid": {k: v for k, v in info.items() if k != "order"}}
            jobs.append(backend.submit(request, client, model, group=group))
    except Exception:  # a full queue, the store or the disk unavailable: none of it stays queued
        for job in jobs:
            backend.store.cancel(job.id)
            backend.store.delete(job.id)
        raise
    return group_id, jobs


def _group_of(job: Job) -> dict | None:
    group = job.params.get("group")
    return group if isinstance(group, dict) else None


def group_jobs(store: "JobStore", group_id: str, client: str | None = None) -> list[Job]:
    """The group's cells in index order (without the grid), found among the client's newest jobs."""
    found: dict[int, Job] = {}
    count, before, seen = None, None, 0
    while seen < SCAN_LIMIT:
        page = store.list(limit=200, before=before, client=client)
        for job in page:
            group = _group_of(job)
            if group is not None and group.get("id") == group_id and job.id != group_id:
                found[int(group["index"])] = job
                count = int(group.get("count", 0))
        seen += len(page)
        if len(page) < 200 or (count is not None and len(found) >= count):
            break
        before = page[-1].id
    return [found[i] for i in sorted(found)]


def cancel_group(store: "JobStore", group_id: str, client: str | None = None) -> list[Job]:
    cancelled = []
    for job in group_jobs(store, group_id, client):
        if job.state in (QUEUED, RUNNING):
            ended = store.cancel(job.id)
            if ended is not None:
                cancelled.append(ended)
    return cancelled


def collect_group(backend: "Backend", group_id: str, client: str | None = None) -> Job | None:
    existing = backend.store.get(group_id)
    if existing is not None:
        return existing
    cells = group_jobs(backend.store, group_id, client)
    if not cells:
        return None
    group = _group_of(cells[0])
    assert group is not None
    if len(cells) < int(group["count"]) or any(not job.finished for job in cells):
        return None  # still running (or a cell was deleted: the grid would lie)
    spec = group["grid"]
    images: list[Image.Image | None] = [None] * int(group["count"])
    for job in cells:
        if job.state != DONE or not job.images:
            continue
        backend.get(job.id)  # Redis: moves the cell's PNGs to this disk when they have arrived
        path = backend.image_path(job.id, "0.png")
        if path is None:  # Redis: the PNG is on its way to this disk
            return None
        with Image.open(path) as im:
            images[int(_group_of(job)["index"])] = im.convert("RGB")  # type: ignore[index]
    done = [job for job in cells if job.state == DONE and job.images]
    if not done:
        return None  # every cell failed or was cancelled: no grid
    first = min(done, key=lambda job: int(_group_of(job)["index"]))  # type: ignore[index]
    infotext = first.images[0]["infotext"]  # A1111 gives the grid its first cell's infotext
    grids = draw_plot(images, spec)
    pngs = [png_bytes(grid, infotext) for grid in grids]
    backend.images.write(group_id, pngs)
    params = {**first.params, "width": grids[0].width, "height": grids[0].height,
              "group": {"id": group_id, "grid": spec, "count": group["count"], "cells": [j.id for j in cells]}}
    records = [{"n": n, "seed": first.images[0]["seed"], "infotext": infotext} for n in range(len(pngs))]
    if not backend.store.add_done(group_id, first.client, params, records):
        logger.info("group %s: its grid was recorded by another caller", group_id)
    return backend.store.get(group_id)


def collect_recent(backend: "Backend", limit: int = 20) -> builtins.list[str]:
    """Draw the grids of the groups among the newest jobs whose cells have all finished
    (the SQLite worker calls it after each job); the group ids drawn."""
    drawn = []
    groups = {(g["id"], job.client) for job in backend.store.list(limit=limit)
              if (g := _group_of(job)) is not None and "index" in g}
    for group_id, client in groups:
        if backend.store.get(group_id) is None and collect_group(backend, group_id, client) is not None:
            drawn.append(group_id)
    return drawn

