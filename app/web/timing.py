"""Speed and time-left estimates for the page: iterations per second of a
running job (measured live), and an ETA for queued and running jobs from the
measured speed of recently finished jobs of the same size.

Everything is estimated per request from the job store (no extra state): the
recent finished jobs and the active queue are read once per request (cached
on ``flask.g``), so a listing of many jobs costs two reads, not two per job.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import g

from app.jobs.base import Backend
from app.jobs.job import DONE, QUEUED, RUNNING, Job

RECENT = 30       # finished jobs the speed is measured on
ACTIVE_MAX = 200  # queued and running jobs looked at for a queued job's ETA


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _work(params: dict | None) -> int:
    """What one denoising step costs, in pixels: width x height x images."""
    p = params or {}
    return int(p.get("width") or 0) * int(p.get("height") or 0) * int(p.get("num_images") or 1)


def _steps(job: Job) -> int:
    return int(job.progress.total or (job.params or {}).get("steps") or 0)


def _recent(jobs: Backend) -> list[tuple[int, float]]:
    """(work, seconds per step, all in: steps, decoding, saving) of recent finished jobs."""
    if "t2i_recent" not in g:
        recent = []
        for job in jobs.list(limit=RECENT, states=(DONE,)):
            secs, steps = _seconds(job.started_at, job.finished_at), _steps(job)
            if secs and steps and _work(job.params):
                recent.append((_work(job.params), secs / steps))
        g.t2i_recent = recent
    return g.t2i_recent


def seconds_per_step(jobs: Backend, params: dict | None) -> float | None:
    """Measured on finished jobs of the same size and image count; else
    scaled by pixels from the nearest size measured; None before any job."""
    work, recent = _work(params), _recent(jobs)
    if not work or not recent:
        return None
    same = [s for w, s in recent if w == work]
    if same:
        return sum(same) / len(same)
    nearest_work, secs = min(recent, key=lambda r: abs(r[0] - work))
    return secs * work / nearest_work


def _remaining(jobs: Backend, job: Job) -> float | None:
    """Seconds until the job ends, as far as one can tell now."""
    steps = _steps(job)
    if job.state == RUNNING and job.progress.step > 0:
        live = _seconds(job.started_at, _now())
        per_step = seconds_per_step(jobs, job.params) or (live / job.progress.step if live else None)
        if per_step is None:
            return None
        # Blend the history with what this run shows: the live rate wins as the job goes on.
        if live:
            weight = job.progress.step / max(steps, 1)
            per_step = weight * (live / job.progress.step) + (1 - weight) * per_step
        return max(0, steps - job.progress.step) * per_step
    per_step = seconds_per_step(jobs, job.params)
    return None if per_step is None else steps * per_step


def known_active(jobs: list[Job]) -> None:
    """This request has read the queue already (GET /api/queue): the ETAs count from that read."""
    g.t2i_active = jobs


def _active(jobs: Backend) -> list[Job]:
    if "t2i_active" not in g:
        g.t2i_active = jobs.list(limit=ACTIVE_MAX, states=(QUEUED, RUNNING))
    return g.t2i_active


def timing(jobs: Backend, job: Job) -> dict:
    """``its``: iterations per second (running: measured so far; done: over the
    whole job); ``eta_seconds``: time left until the job is done, for a queued
    job including every job ahead of it; None where there is nothing to go on."""
    its = eta = None
    if job.state == RUNNING and job.progress.step > 0:
        live = _seconds(job.started_at, _now())
        its = job.progress.step / live if live else None
        eta = _remaining(jobs, job)
    elif job.state == QUEUED:
        ahead = [j for j in _active(jobs) if j.id != job.id and
                 (j.state == RUNNING or (j.position or 0) < (job.position or 0))]
        parts = [_remaining(jobs, j) for j in [*ahead, job]]
        eta = None if any(p is None for p in parts) else sum(p for p in parts if p is not None)
    elif job.state == DONE:
        secs = _seconds(job.started_at, job.finished_at)
        its = _steps(job) / secs if secs else None
    return {"its": None if its is None else round(its, 2), "eta_seconds": None if eta is None else round(eta, 1)}
