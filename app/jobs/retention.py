"""Retention: which finished jobs to delete so that a Colab disk or a Drive
folder does not fill up. ``KEEP_IMAGES`` keeps the newest N images (0: no
limit), ``KEEP_DAYS`` the jobs of the last N days (0: forever). Oldest go
first, whole jobs at a time; queued and running jobs are never touched (the
stores only delete finished jobs)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from app.jobs.job import Job


def expired(finished: list[Job], keep_images: int = 0, keep_days: float = 0,
            at: datetime | None = None) -> list[Job]:
    """The jobs of ``finished`` (newest first) that retention deletes, oldest first."""
    cutoff = (at or datetime.now(timezone.utc)) - timedelta(days=keep_days) if keep_days else None
    kept_images = 0
    doomed = []
    for job in finished:
        kept_images += len(job.images)
        too_many = bool(keep_images) and kept_images > keep_images
        too_old = cutoff is not None and datetime.fromisoformat(job.finished_at or job.created_at) < cutoff
        if too_many or too_old:
            doomed.append(job)
    return doomed[::-1]
