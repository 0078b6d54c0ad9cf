"""Retention: which finished jobs to delete so that a Colab disk or a Drive
folder does not fill up. ``KEEP_IMAGES`` keeps the newest N images (0: no
limit), ``KEEP_DAYS`` the jobs of the last N days (0: forever). Oldest go
first, whole jobs at a time; queued and running jobs are never touched (the
stores only delete finished jobs), nor jobs finished in the last ``GRACE``:
their owner may not have fetched the images yet (a synchronous /sdapi call,
a page about to show them), so a small KEEP_IMAGES holds a little more for a
few minutes rather than delete a result before anyone saw it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from app.jobs.job import Job

GRACE = timedelta(minutes=10)


def expired(finished: list[Job], keep_images: int = 0, keep_days: float = 0,
            at: datetime | None = None, grace: timedelta = GRACE) -> list[Job]:
    """The jobs of ``finished`` (newest first) that retention deletes, oldest first."""
    now = at or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=keep_days) if keep_days else None
    kept_images = 0
    doomed = []
    for job in finished:
        kept_images += len(job.images)
        if now - datetime.fromisoformat(job.finished_at or job.created_at) < grace:
            continue
        too_many = bool(keep_images) and kept_images > keep_images
        too_old = cutoff is not None and datetime.fromisoformat(job.finished_at or job.created_at) < cutoff
        if too_many or too_old:
            doomed.append(job)
    return doomed[::-1]
