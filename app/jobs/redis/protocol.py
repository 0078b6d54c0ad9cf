"""The worker side of the Redis queue: what a GPU worker (``app.jobs.redis.worker``) writes
into a job record while it runs the job, over the web side's ``RedisJobStore``.

Every write is scoped to one attempt: ``begin`` numbers it, and once the job has been handed
to another worker (its first one presumed dead), the first one's late writes change nothing.
Progress and the preview PNG (with a TTL) are written on each step, and the same call tells
the worker whether a cancel (or skip) was asked for. A finished run's PNGs travel through
Redis and stay there until the web app has written them into its image folder, so workers
need no shared disk.

No Flask here.
"""
from __future__ import annotations

import builtins
import json
from dataclasses import fields

from app.engine.types import GenerationRequest, Limits
from app.jobs.base import translate_errors
from app.jobs.job import CANCELLED, QUEUED, Failure, Job, now
from app.jobs.redis.store import RedisJobStore, is_outage

PREVIEW_TTL = 3600  # seconds a live preview outlives its last update


@translate_errors(is_outage, "the job queue (Redis) is unavailable")
class WorkerProtocol:
    """A GPU worker's writes to the jobs of ``store``'s queue."""

    def __init__(self, store: RedisJobStore):
        self.store = store
        self.redis, self.key, self.job_key, self.scripts = store.redis, store.key, store.job_key, store.scripts

    def begin(self, job_id: str, worker: str) -> tuple[int, str]:
        """Mark the job running on ``worker``. Returns (attempt, state before);
        attempt 0 means the job must not run (cancelled or already finished)."""
        attempt, before = self.scripts["begin"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running")], args=[job_id, worker, now()])
        return int(attempt), before.decode() if isinstance(before, bytes) else str(before)

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def request_for(self, job: Job) -> GenerationRequest:
        return self.store.request_for(job)

    def job_limits(self, job_id: str) -> Limits | None:
        """The limits of the web app that queued the job (None: a record from before they were kept)."""
        raw = self.redis.hget(self.job_key(job_id), "limits")
        if not raw:
            return None
        known = {f.name for f in fields(Limits)}
        return Limits(**{k: v for k, v in json.loads(raw).items() if k in known})

    def progress(self, job_id: str, attempt: int, step: int, total: int, preview_png: bytes | None = None) -> int:
        """Progress of a running attempt. Returns 0 (go on), 1 (cancel asked for),
        2 (the job is no longer this attempt's: stop quietly) or 3 (skip asked for)."""
        return int(self.scripts["report"](
            keys=[self.job_key(job_id), self.key("cancel", job_id), self.key("preview", job_id)],
            args=[attempt, step, total, preview_png or b"", PREVIEW_TTL]))

    def complete(self, job_id: str, attempt: int, images: builtins.list[dict], pngs: builtins.list[bytes],
                 params_update: dict | None = None, partial: bool = False) -> bool:
        """Done: the image records, and the PNGs for the web app to store
        (``partial``: a skipped run's). False: no longer this attempt's."""
        return bool(self.scripts["finish"](
            keys=[self.job_key(job_id), self.key("running"), self.key("unstored"), self.key("png", job_id),
                  self.key("init", job_id), self.key("cancel", job_id)],
            args=[job_id, attempt, json.dumps(images), json.dumps(self._params(job_id, params_update)), now(),
                  self.store.prefix, int(partial), *pngs]))

    def _params(self, job_id: str, update: dict | None) -> dict:
        row = self.redis.hget(self.job_key(job_id), "params")
        return {**json.loads(row or b"{}"), **(update or {})}

    def fail(self, job_id: str, failure: Failure, attempt: int) -> bool:
        return self.store.fail(job_id, failure, attempt)

    def mark_cancelled(self, job_id: str, reason: str, attempt: int, images: builtins.list[dict] | None = None,
                       pngs: builtins.list[bytes] | None = None, params_update: dict | None = None) -> bool:
        """Cancelled; with ``images`` and ``pngs``, the partial images of the interrupted run,
        stored by the web app like a done job's."""
        kept = [json.dumps(images), json.dumps(self._params(job_id, params_update)), *pngs] if images and pngs else []
        return self.store.end(job_id, CANCELLED, reason, attempt=attempt, kept=kept)

    def hand_back(self, job_id: str, attempt: int, note: str, counted: bool = False, most: int = 1) -> int:
        """Put a running attempt's job back in the queue (``counted``: a Redis outage, at most
        ``most`` times a job). Returns 1 (queued again), 0 (no longer this attempt's), -1
        (counted too often: the caller fails it) or -2 (its owner asked for a cancel or a skip, which
        wins over a hand-back: the caller ends it so). RQ gets the job again from ``requeue_rq``."""
        return int(self.scripts["hand_back"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running"), self.key("cancel", job_id)],
            args=[job_id, attempt, note, int(counted), most]))

    def stop_asked(self, job_id: str) -> str | None:
        """What the job's owner asked of its run: "cancel", "skip" or None."""
        flag = self.redis.get(self.key("cancel", job_id))
        return None if flag is None else "skip" if flag == b"skip" else "cancel"

    def requeue(self, job_id: str, note: str) -> bool:
        """Back to queued, whichever attempt holds it (a job stopped before it began)."""
        return self.store.requeue(job_id, note)

    def requeue_rq(self, job_id: str) -> bool:
        """Give RQ the job again, at the front, when our record says queued: after its run ended
        (RQ has marked its own job finished or failed, with an expiry). True if queued again."""
        if self.store.state_of(job_id) != QUEUED:
            return False
        rq = self.store.rq
        rq.remove(job_id)  # at most one entry: a cleanup's RQ retry may have pushed it already
        rq_job = rq.fetch_job(job_id)
        if rq_job is not None:
            rq_job.delete()
        self.store.enqueue(job_id, at_front=True)
        return True
