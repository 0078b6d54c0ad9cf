"""The web app's side of the Redis queue, chosen by the ``REDIS_URL`` setting.

With it, ``create_app`` starts no GPU worker of its own: ``python -m app
worker --redis URL`` processes run the jobs. In place of the worker thread
it keeps ``RedisWorkers``, a thread that

1. writes finished images, which arrive through Redis, into the instance
   image folder (``RedisGallery`` also does it on demand, so an image URL
   works the moment its job is done);
2. cleans RQ's StartedJobRegistry every second, so a job whose worker died
   is retried or failed within seconds even while every other worker is busy;
3. tells /api/health which model the connected workers serve.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .gallery import IMAGE_NAME, JOB_ID, Gallery, _checked_id
from .redis_queue import RedisJobQueue

logger = logging.getLogger(__name__)

CLEANUP_LOCK_SECONDS = 10
NO_WORKER = "no GPU worker is connected; start one with: python -m app worker --redis REDIS_URL --model MODEL"


def redis_backend(app) -> tuple[RedisJobQueue, "RedisGallery", "RedisWorkers"]:
    """The job queue, image folder and worker stand-in for ``app``."""
    config = app.config
    if config["ENGINE"] is not None:
        logger.warning("REDIS_URL is set: ENGINE is not used; the GPU workers load their own model")
    queue = RedisJobQueue(config["REDIS_URL"], name=config["REDIS_QUEUE"], max_queue=config["MAX_QUEUE"],
                          max_per_client=config["MAX_QUEUED_PER_CLIENT"], retries=config["REDIS_RETRIES"],
                          job_timeout=config["REDIS_JOB_TIMEOUT"])
    images = RedisGallery(Path(app.instance_path) / "images", queue)
    return queue, images, RedisWorkers(queue, images)


class RedisGallery(Gallery):
    """The image folder, filled from Redis as jobs finish on the workers."""

    def __init__(self, root: str | os.PathLike, queue: RedisJobQueue):
        super().__init__(root)
        self.queue = queue

    def path(self, job_id: str, name: str) -> Path | None:
        found = super().path(job_id, name)
        if found is None and isinstance(job_id, str) and JOB_ID.match(job_id) and isinstance(name, str) \
                and IMAGE_NAME.match(name) and self.store(job_id):
            found = super().path(job_id, name)
        return found

    def store(self, job_id: str) -> int:
        """Write the job's PNGs waiting in Redis to disk, then drop them from Redis."""
        pngs = self.queue.pending_images(job_id)
        if not pngs:
            return 0
        folder = self.root / _checked_id(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for n, data in pngs.items():
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / f"{n}.png")  # never half a PNG under the real name
        self.queue.images_stored(job_id)
        return len(pngs)


@dataclass(frozen=True)
class WorkerModel:
    """What /api/health and the form need of the model the workers serve
    (the duck-typed part of an Engine that app/api.py reads)."""

    model: str
    model_name: str
    is_demo: bool
    default_size: tuple[int, int]


class RedisWorkers(threading.Thread):
    """Stands where the in-process ``Worker`` stands (``app.extensions["t2i_worker"]``)."""

    def __init__(self, queue: RedisJobQueue, gallery: RedisGallery, poll_seconds: float = 0.5):
        super().__init__(name="t2i-redis", daemon=True)
        self.queue = queue
        self.gallery = gallery
        self.poll_seconds = poll_seconds
        self._stop_event = threading.Event()
        self._seen: tuple[float, list[dict]] = (0.0, [])

    # --- what app/api.py reads ----------------------------------------------------------

    @property
    def engine(self) -> WorkerModel | None:
        workers = self.workers()
        if not workers:
            return None
        first = workers[0]
        return WorkerModel(first["model"], first["model_name"], first["is_demo"], tuple(first["default_size"]))

    @property
    def model_state(self) -> str:
        return "ready" if self.workers() else "loading"

    @property
    def model_error(self) -> str | None:
        return None if self.workers() else NO_WORKER

    def workers(self) -> list[dict]:
        """The live workers, as they describe themselves (cached for a second)."""
        seen_at, workers = self._seen
        if time.monotonic() - seen_at < 1.0:
            return workers
        redis = self.queue.redis
        try:
            beats = dict(redis.zrange(self.queue.key("workers"), 0, -1, withscores=True))
            infos = redis.hgetall(self.queue.key("worker-info"))
        except Exception:
            logger.exception("cannot read the workers from Redis")
            beats, infos = {}, {}
        workers = []
        for name, raw in sorted(infos.items()):
            info = json.loads(raw)
            # Three missed heartbeats: that worker is gone (killed, or its machine is).
            if time.time() - beats.get(name, 0) <= 3 * info["heartbeat"] + 1:
                workers.append({"name": name.decode(), **info})
        self._seen = (time.monotonic(), workers)
        return workers

    # --- the thread ---------------------------------------------------------------------

    def run(self) -> None:
        next_cleanup = 0.0
        while not self._stop_event.is_set():
            due = time.monotonic() >= next_cleanup
            try:
                self.run_once(cleanup=due)
            except Exception:  # Redis restarting, say: try again a little later
                logger.exception("redis queue upkeep failed")
                self._stop_event.wait(5)
            if due:
                next_cleanup = time.monotonic() + 1.0
            self._stop_event.wait(self.poll_seconds)

    def run_once(self, cleanup: bool = True) -> int:
        """Store waiting images; find jobs of dead workers. Returns images stored."""
        stored = sum(self.gallery.store(job_id) for job_id in self.queue.unstored())
        if cleanup:
            self._clean_started_jobs()
            self._forget_dead_workers()
        return stored

    def _clean_started_jobs(self) -> None:
        """Retry or fail jobs whose worker's heartbeat expired (calling on_rq_failure),
        under the lock RQ's workers take for the same cleanup: two cleanups at once
        would both see a dead job and re-queue it twice. Ours expires in seconds,
        not RQ's 15 minutes, should this process die holding it."""
        from redis.exceptions import LockError
        from rq.registry import StartedJobRegistry
        from rq.timeouts import TimerDeathPenalty

        lock = self.queue.redis.lock(self.queue.rq.registry_cleaning_key, timeout=CLEANUP_LOCK_SECONDS,
                                     blocking=False)
        if not lock.acquire():
            return  # a GPU worker is cleaning right now
        try:
            # A thread cannot use RQ's default SIGALRM timeouts.
            StartedJobRegistry(queue=self.queue.rq, death_penalty_class=TimerDeathPenalty).cleanup()
        finally:
            try:
                lock.release()
            except LockError:  # expired meanwhile (a very slow cleanup): nothing to release
                pass

    def _forget_dead_workers(self, after: float = 600) -> None:
        """Drop workers silent for ``after`` seconds from /api/health's list for good."""
        redis, workers = self.queue.redis, self.queue.key("workers")
        dead = redis.zrangebyscore(workers, 0, time.time() - after)
        if dead:
            redis.zrem(workers, *dead)
            redis.hdel(self.queue.key("worker-info"), *dead)

    def stop(self, timeout: float = 30) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
