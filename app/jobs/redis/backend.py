"""The web app's side of the Redis queue, chosen by the ``REDIS_URL`` setting.

With it, ``create_app`` starts no GPU worker of its own: ``python -m app
worker --redis URL`` processes run the jobs. In place of the worker thread
it keeps ``RedisUpkeep``, a thread that

1. writes finished images, which arrive through Redis, into the instance
   image folder (``RedisImageStore`` also does it on demand, so an image URL
   works the moment its job is done);
2. cleans RQ's StartedJobRegistry every second, so a job whose worker died
   is retried or failed within seconds even while every other worker is busy;
3. tells /api/health which model the connected workers serve;
4. publishes the image disk's free space every second for the workers' disk
   check (first, so a full disk that stops images being stored cannot stop
   it), and applies retention (the images live here) once a minute;
5. rebuilds the gallery's job records from the PNGs on disk (their
   ``job.json``, else their infotext) when Redis lost them: a restart of a
   Redis without persistence.

``submit`` refuses a job (503, nothing queued) while the image disk is below
``MIN_FREE_DISK_MB``; each job carries the web app's limits, which the
workers validate with.

A job with images (done, or cancelled with its partial ones) is shown only
once they are readable here: ``get``, ``wait`` and ``list`` write its
waiting PNGs first.
"""
from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from PIL import Image

from app.engine.infotext_fields import request_from_infotext
from app.engine.metadata import read_parameters
from app.engine.types import GenerationRequest, Limits
from app.jobs import groups
from app.jobs.base import LOADING, READY, Backend, ModelChoice, ModelStatus, StorageUnavailable
from app.jobs.images import IMAGE_NAME, JOB_ID, ImageStore, disk_room_reason, is_image_name
from app.jobs.job import Job
from app.jobs.redis.store import RedisJobStore

logger = logging.getLogger(__name__)

CLEANUP_LOCK_SECONDS = 10
JOB_FILE = "job.json"  # beside a job's PNGs: its record, for rebuilding the gallery should Redis lose it
NO_WORKER = "no GPU worker is connected; start one with: python -m app worker --redis REDIS_URL --model MODEL"


class RedisImageStore(ImageStore):
    """The image folder, filled from Redis as jobs finish on the workers."""

    def __init__(self, root: str | Path, store: RedisJobStore):
        super().__init__(root)
        self.store = store
        # Jobs whose PNGs reached this disk, by any thread: a page asking for a job stores its images
        # too, and the upkeep must still see them arrive (a plot's grid waits on its last cell's).
        self.jobs_stored = 0
        self._counting = threading.Lock()

    def path(self, job_id: str, name: str) -> Path | None:
        found = super().path(job_id, name)
        if found is None and is_image_name(job_id, name) and self.collect(job_id):
            found = super().path(job_id, name)
        return found

    def collect(self, job_id: str) -> int:
        """Write the job's PNGs waiting in Redis to disk, then drop them from Redis."""
        pngs = self.store.pending_images(job_id)
        if not pngs:
            return 0
        try:
            self.write(job_id, pngs)
        except OSError as exc:  # disk full here: the PNGs stay in Redis for a later try
            raise StorageUnavailable(f"the images of job {job_id} cannot be saved on the web app's disk: {exc}") from exc
        self._write_record(job_id)
        self.store.images_stored(job_id)
        with self._counting:
            self.jobs_stored += 1
        return len(pngs)

    def _write_record(self, job_id: str) -> None:
        """``job.json`` beside the PNGs: owner, params and image records, which a rebuild
        after Redis lost its records reads (the infotext alone has no owner)."""
        job = self.store.get(job_id)
        if job is None:
            return
        record = {"id": job.id, "client": job.client, "params": job.params, "images": job.images,
                  "created_at": job.created_at, "finished_at": job.finished_at, "partial": job.partial}
        try:
            (self.root / job_id / JOB_FILE).write_text(json.dumps(record))
        except OSError as exc:  # a nice-to-have: the PNGs' infotext still rebuilds the entry
            logger.warning("job %s: %s not written: %s", job_id, JOB_FILE, exc)

    def rebuild(self) -> int:
        """Records for the jobs whose images are on disk but whose record Redis lost;
        returns how many were restored. Oldest first, so the gallery keeps its order."""
        folders = [f for f in self.root.iterdir() if f.is_dir() and JOB_ID.match(f.name)]
        restored = 0
        for folder in sorted(folders, key=lambda f: f.stat().st_mtime):
            try:
                record = self._record_on_disk(folder)
            except (OSError, ValueError) as exc:  # unreadable: left on disk, not shown
                logger.warning("gallery rebuild: %s skipped: %s", folder.name, exc)
                continue
            if record is not None and self.store.restore(**record):
                restored += 1
        if restored:
            logger.warning("gallery rebuilt: %d job(s) restored from the images on disk (Redis had lost them)",
                           restored)
        return restored

    def _record_on_disk(self, folder: Path) -> dict | None:
        pngs = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := IMAGE_NAME.match(p.name)))
        if not pngs:
            return None
        stamp = datetime.fromtimestamp(pngs[0][1].stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds")
        saved = folder / JOB_FILE
        if saved.is_file():
            data = json.loads(saved.read_text())
            return {"job_id": folder.name, "client": str(data.get("client") or ""), "params": data["params"],
                    "images": data["images"], "created_at": data.get("created_at") or stamp,
                    "finished_at": data.get("finished_at") or stamp, "partial": bool(data.get("partial"))}
        images: list[dict] = []
        params = None
        for n, path in pngs:
            with Image.open(path) as image:
                text = read_parameters(image) or ""
            if not text and images:  # a ControlNet map: they follow the images and carry no infotext
                continue
            fields = request_from_infotext(text) if text else {}
            if params is None:
                params = GenerationRequest.from_dict(fields).to_dict()
            images.append({"n": n, "seed": fields.get("seed", params["seed"]), "infotext": text})
        # No owner recorded: "" is nobody's client id, so a private gallery shows it to no one but the admin.
        return {"job_id": folder.name, "client": "", "params": params, "images": images, "created_at": stamp,
                "finished_at": stamp, "partial": False}

    def ensure(self, job: Job | None) -> Job | None:
        """``job``, once its images (a done job's, or a cancelled one's partial ones) are on this disk."""
        if job is not None and job.images and self.store.is_unstored(job.id):
            self.collect(job.id)
        return job


class RedisBackend(Backend):
    """Jobs in Redis, run by ``python -m app worker`` processes. ``model`` is
    what the workers are expected to serve (shown until one connects)."""

    store: RedisJobStore
    images: RedisImageStore

    def __init__(self, url: str, image_root: str | Path, *, model: str, name: str = "t2i", max_queue: int = 100,
                 max_per_client: int = 5, retries: int = 2, job_timeout: int = 3600, keep_images: int = 0,
                 keep_days: float = 0, min_free_mb: int = 0, limits: Limits | None = None):
        self.model = model
        self.min_free_mb = min_free_mb
        self.store = RedisJobStore(url, name=name, max_queue=max_queue, max_per_client=max_per_client,
                                   retries=retries, job_timeout=job_timeout)
        self.store.limits = limits
        self.images = RedisImageStore(image_root, self.store)
        self.keep_images, self.keep_days = keep_images, keep_days
        self.upkeep = RedisUpkeep(self.store, self.images, min_free_mb=min_free_mb, retention=self._after_images)
        self._persistence: tuple[float, str | None] = (-1e9, None)

    def _after_images(self) -> None:
        """Upkeep when jobs' images reach this disk: retention, and the grid of a plot whose
        last cell's images just arrived (app/jobs/groups.py)."""
        self.apply_retention()
        groups.collect_recent(self)

    def submit(self, request: GenerationRequest, client: str, model: ModelChoice | None = None,
               group: dict | None = None) -> Job:
        """Refused before anything is queued while the image disk is nearly full: a worker
        would not start it, and a 503 must mean no job was queued."""
        no_room = disk_room_reason(self.images.free_mb(), self.min_free_mb)
        if no_room:
            raise StorageUnavailable(f"the web app's {no_room}")
        return super().submit(request, client, model, group)

    def get(self, job_id: str) -> Job | None:
        return self.images.ensure(self.store.get(job_id))

    def wait(self, job_id: str, timeout: float) -> Job | None:
        return self.images.ensure(self.store.wait(job_id, timeout))

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None,
             client: str | None = None) -> list[Job]:
        jobs = self.store.list(limit=limit, before=before, states=states, client=client)
        waiting = set(self.store.unstored())
        for job in jobs:
            if job.id in waiting:
                self.images.ensure(job)
        return jobs

    def warnings(self) -> builtins.list[str]:
        """The no-persistence warning, checked at most once a minute."""
        checked_at, warning = self._persistence
        if time.monotonic() - checked_at > 60:
            try:
                warning = self.store.persistence_warning()
            except StorageUnavailable:
                warning = None  # the outage itself answers 503 elsewhere
            self._persistence = (time.monotonic(), warning)
        return [warning] if warning else []

    def status(self) -> ModelStatus:
        workers = self.upkeep.workers()
        if workers:
            first = workers[0]
            size = first.get("default_size")
            return ModelStatus(first["model_name"], first["model"], first["is_demo"], first.get("state", READY),
                               first.get("error"), tuple(size) if size else None, vae=first.get("vae"),
                               compile=first.get("compile", "off"))
        return ModelStatus.not_loaded(self.model, LOADING, NO_WORKER)

    def start(self) -> None:
        if not self.upkeep.is_alive():
            self.upkeep.publish_disk()  # before the first job can be taken
            self.upkeep.start()

    def stop(self, timeout: float = 30) -> None:
        self.upkeep.stop(timeout)
        try:
            self.store.forget_disk()  # no stale figure for the workers once this app is gone
        except StorageUnavailable:
            pass


class RedisUpkeep(threading.Thread):
    """The web app's thread: stores finished images, retries or fails the jobs
    of dead workers, and knows which workers are alive."""

    def __init__(self, store: RedisJobStore, images: RedisImageStore, poll_seconds: float = 0.5, min_free_mb: int = 0,
                 retention: Callable[[], object] | None = None, retention_every: float = 60):
        super().__init__(name="t2i-redis", daemon=True)
        self.queue = store
        self.images = images
        self.poll_seconds = poll_seconds
        self.min_free_mb = min_free_mb
        self.retention = retention
        self.retention_every = retention_every
        self._next_retention = 0.0
        self._stop_event = threading.Event()
        self._seen: tuple[float, list[dict]] = (0.0, [])
        self._stored_seen = 0  # images.jobs_stored at the last retention

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
        if cleanup:
            # First: a full disk makes storing images fail below, and the workers must
            # go on hearing about it (a stale figure expires and no longer stops them).
            self.publish_disk()
            self._rebuild_if_lost()
        stored = 0
        for job_id in self.queue.unstored():
            try:
                stored += self.images.collect(job_id)
            except StorageUnavailable as exc:  # this disk is full: the PNGs wait in Redis
                logger.warning("%s", exc)
                break
        if cleanup:
            self._clean_started_jobs()
            self._forget_dead_workers()
        counted = self.images.jobs_stored  # stored here, or by a request that asked for a job
        if self.retention is not None and (counted != self._stored_seen or time.monotonic() >= self._next_retention):
            self._stored_seen = counted
            self._next_retention = time.monotonic() + self.retention_every
            self.retention()
        return stored

    def _rebuild_if_lost(self) -> None:
        """Rebuild the records from the images on disk once per Redis dataset: a marker key
        without expiry says it was done; a Redis that restarted with nothing has none."""
        marker = self.queue.key("indexed")
        if not self.queue.redis.exists(marker):
            self.images.rebuild()  # two web apps at once: each record is restored once (``restore``)
            self.queue.redis.set(marker, 1)

    def publish_disk(self) -> None:
        """The image disk's free space and the need, for the workers' check before each job."""
        self.queue.publish_disk(self.images.free_mb(), self.min_free_mb)

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
