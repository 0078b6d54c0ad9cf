"""The job queue and the worker that owns the GPU.

``JobQueue`` is the small interface the web layer uses; ``SQLiteJobQueue``
implements it with a SQLite file, so a restart loses no queued job and no
finished image. Another backend (Redis/RQ) implements the same methods.
Progress and the live preview of the running job are kept in memory: they
are worthless after a restart.

One ``Worker`` thread runs jobs in order, one at a time. It catches failures
per job (log, mark failed with the reason, free memory, go on).
"""
from __future__ import annotations

import gc
import io
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import db
from .types import MAX_SEED, GenerationRequest, ValidationError

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
PARAM_NAMES = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler",
               "num_images", "strength")


class QueueFull(Exception):
    """Too many jobs queued, in all (``per_client`` False) or for one client."""

    def __init__(self, message: str, per_client: bool):
        super().__init__(message)
        self.per_client = per_client

    @classmethod
    def for_client(cls, unfinished: int, limit: int) -> "QueueFull":
        return cls(f"you already have {unfinished} unfinished jobs; the limit is {limit}. "
                   "Wait for one to finish or cancel one.", per_client=True)

    @classmethod
    def for_queue(cls, queued: int) -> "QueueFull":
        return cls(f"the queue is full ({queued} jobs); try again later", per_client=False)


@dataclass
class Progress:
    step: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        return round(self.step / self.total, 4) if self.total else 0.0


@dataclass
class Job:
    id: str
    state: str
    client: str
    params: dict  # PARAM_NAMES plus has_init_image
    images: list[dict] = field(default_factory=list)  # {"n", "seed", "infotext"}
    error: str | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    position: int | None = None  # 1 = next to run; None unless queued
    progress: Progress = field(default_factory=Progress)
    has_preview: bool = False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    return uuid.uuid4().hex


def rebuild_request(job: Job, read_init: Callable[[str], bytes | None]) -> GenerationRequest:
    """The job's request again, from its params and, for img2img, the init PNG
    that ``read_init(job_id)`` fetches from the store."""
    init = None
    if job.params.get("has_init_image"):
        png = read_init(job.id)
        if png is None:
            raise ValidationError("init_image", None, "is missing from the job store")
        from PIL import Image

        with Image.open(io.BytesIO(png)) as im:
            init = im.convert("RGB")
    return GenerationRequest(init_image=init, **{name: job.params[name] for name in PARAM_NAMES})


def preview_due(info, every: int) -> bool:
    """A live preview every ``every`` steps and at the last one (0: never)."""
    return bool(every) and (info.step % every == 0 or info.step == info.total)


class LivePreview:
    """The live preview of one step, encoded only when someone asks for it.

    Encoding a PNG every step (2-11 ms, in the worker thread, holding the
    interpreter lock) slowed every image by several percent, while a browser
    looks at one preview every half second. So the worker keeps a copy of
    the step's latents (a clone on their device: no copy to the host, no
    sync) and ``png()`` makes the image on the first request, in the
    requesting thread, and keeps it for later ones."""

    def __init__(self, engine, latents):
        self._engine = engine
        self._latents = latents[:1].detach().clone()
        self._png: bytes | None = None
        self._lock = threading.Lock()

    def png(self) -> bytes | None:
        """PNG bytes, or None if the preview failed (never worth failing anything)."""
        with self._lock:
            if self._png is None and self._latents is not None:
                try:
                    buf = io.BytesIO()
                    self._engine.preview(self._latents)[0].save(buf, format="PNG")
                    self._png = buf.getvalue()
                except Exception:
                    logger.exception("preview failed")
                self._latents = None  # encoded (or failed): the tensor is not needed any more
            return self._png


def live_preview(engine, info, every: int) -> LivePreview | None:
    """The step's preview, unencoded, when one is due (see ``preview_due``)."""
    return LivePreview(engine, info.latents) if preview_due(info, every) else None


def preview_png(engine, info, every: int) -> bytes | None:
    """The live preview of step ``info`` as PNG bytes, encoded now, when one is
    due; None when it is not due or fails. For a worker in another process
    (the Redis backend), which must ship bytes."""
    preview = live_preview(engine, info, every)
    return None if preview is None else preview.png()


@dataclass(frozen=True)
class JobEnd:
    """How a job that raised ends: ``state`` CANCELLED or FAILED, the reason
    shown to the user, and whether the error was unexpected (logged with its
    traceback; the worker frees memory after it)."""

    state: str
    reason: str
    unexpected: bool


def job_end(job_id: str, exc: Exception) -> JobEnd:
    from .engine import GenerationCancelled

    if isinstance(exc, GenerationCancelled):
        return JobEnd(CANCELLED, f"cancelled after step {exc.step} of {exc.total}", False)
    if isinstance(exc, ValidationError):
        return JobEnd(FAILED, str(exc), False)
    logger.exception("job %s failed", job_id, exc_info=exc)  # out of memory, a timeout ...
    return JobEnd(FAILED, _failure_reason(exc), True)


def job_params(request: GenerationRequest) -> dict:
    """What a job records of its request. A random seed is picked here, so the
    job (and "reuse settings") always knows the seed it ran with."""
    params = {name: getattr(request, name) for name in PARAM_NAMES}
    if params["seed"] is None or params["seed"] == -1:
        params["seed"] = secrets.randbelow(MAX_SEED + 1)
    params["has_init_image"] = request.init_image is not None
    return params


class JobQueue:
    """The interface of a job queue. Client side: ``submit``, ``get``,
    ``list``, ``cancel``, ``counts``, ``wait``, ``preview``. Worker side:
    ``recover``, ``claim``, ``request_for``, ``report``, ``finish``,
    ``fail``, ``mark_cancelled``, ``requeue``, ``cancel_event``,
    ``wait_for_work``. Jobs are ``Job`` values; ids are opaque strings."""

    def submit(self, request: GenerationRequest, client: str, init_png: bytes | None = None) -> Job:
        """Queue a validated request; raise QueueFull over the limits."""
        raise NotImplementedError

    def get(self, job_id: str) -> Job | None:
        """The job with its queue position and progress, or None."""
        raise NotImplementedError

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None) -> list[Job]:
        """Newest first; ``before`` pages on from a job id."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled at once. Running: the worker stops within a step."""
        raise NotImplementedError

    def counts(self) -> dict:
        """{"queued": n, "running": n}"""
        raise NotImplementedError

    def running(self) -> Job | None:
        raise NotImplementedError

    def preview(self, job_id: str) -> bytes | None:
        """The latest live preview PNG of a running job."""
        raise NotImplementedError

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is finished or ``timeout`` seconds pass; the job as it is then."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.finished or time.monotonic() >= deadline:
                return job
            self.wait_for_change(min(0.5, max(0.0, deadline - time.monotonic())))

    def wait_for_change(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early when a job changes state."""
        time.sleep(timeout)

    def wait_for_work(self, timeout: float) -> None:
        self.wait_for_change(timeout)

    # Worker side. One worker per queue; it alone moves jobs out of "running".

    def recover(self) -> int:
        """At start: jobs left running by a dead process go back to the queue."""
        raise NotImplementedError

    def claim(self) -> Job | None:
        """The oldest queued job, now running; None if none."""
        raise NotImplementedError

    def request_for(self, job: Job) -> GenerationRequest:
        raise NotImplementedError

    def cancel_event(self, job_id: str) -> threading.Event:
        """Set when someone cancels the running job (or the server stops)."""
        raise NotImplementedError

    def report(self, job_id: str, step: int, total: int, preview: "bytes | LivePreview | None" = None) -> None:
        """Progress of the running job and, maybe, its newest live preview:
        PNG bytes or a ``LivePreview`` encoded when asked for."""
        raise NotImplementedError

    def finish(self, job_id: str, images: list[dict], params_update: dict | None = None) -> None:
        raise NotImplementedError

    def fail(self, job_id: str, reason: str) -> None:
        raise NotImplementedError

    def mark_cancelled(self, job_id: str, reason: str = "cancelled") -> None:
        raise NotImplementedError

    def requeue(self, job_id: str) -> None:
        raise NotImplementedError


class SQLiteJobQueue(JobQueue):
    def __init__(self, path: str | Path, max_queue: int = 100, max_per_client: int = 5):
        self.path = str(path)
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        db.init_db(self.path)
        self._pool = _Pool(self.path)
        self._changed = threading.Condition()
        self._live_lock = threading.Lock()
        self._progress: dict[str, Progress] = {}
        self._previews: dict[str, bytes | LivePreview] = {}
        self._cancel: dict[str, threading.Event] = {}

    def _connect(self):
        return _Connection(self._pool)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    # client side

    def submit(self, request: GenerationRequest, client: str, init_png: bytes | None = None) -> Job:
        job_id = new_job_id()
        params = job_params(request)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # count and insert atomically
            mine = conn.execute("SELECT COUNT(*) FROM jobs WHERE client = ? AND state IN ('queued', 'running')",
                                (client,)).fetchone()[0]
            if mine >= self.max_per_client:
                raise QueueFull.for_client(mine, self.max_per_client)
            queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if queued >= self.max_queue:
                raise QueueFull.for_queue(queued)
            conn.execute("INSERT INTO jobs (id, client, state, params, created_at) VALUES (?, ?, 'queued', ?, ?)",
                         (job_id, client, json.dumps(params), now()))
            if init_png is not None:
                conn.execute("INSERT INTO inputs (job_id, init_image) VALUES (?, ?)", (job_id, init_png))
        self._notify()
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        if not isinstance(job_id, str):
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = self._job(row)
            if job.state == QUEUED:
                job.position = 1 + conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq < ?",
                                                (row["seq"],)).fetchone()[0]
        return job

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1", []
        if before:
            sql += " AND seq < (SELECT seq FROM jobs WHERE id = ?)"
            args.append(before)
        if states:
            sql += " AND state IN (%s)" % ",".join("?" * len(states))
            args.extend(states)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(int(limit))
        with self._connect() as conn:
            rows = conn.execute(sql, args).fetchall()
            queued_seqs = [r[0] for r in conn.execute("SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq")]
        order = {seq: i + 1 for i, seq in enumerate(queued_seqs)}
        jobs = []
        for row in rows:
            job = self._job(row)
            job.position = order.get(row["seq"]) if job.state == QUEUED else None
            jobs.append(job)
        return jobs

    def cancel(self, job_id: str) -> Job | None:
        with self._connect() as conn:
            conn.execute("UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'cancelled before it started'"
                         " WHERE id = ? AND state = 'queued'", (now(), job_id))
        with self._live_lock:
            event = self._cancel.get(job_id)
        if event is not None:  # running here: the worker stops after the current step
            event.set()
        self._notify()
        return self.get(job_id)

    def counts(self) -> dict:
        with self._connect() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state")
            found = dict(rows.fetchall())
        return {"queued": found.get(QUEUED, 0), "running": found.get(RUNNING, 0)}

    def running(self) -> Job | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE state = 'running' ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else self._job(row)

    def preview(self, job_id: str) -> bytes | None:
        with self._live_lock:
            preview = self._previews.get(job_id)
        return preview.png() if isinstance(preview, LivePreview) else preview

    def _job(self, row) -> Job:
        job = Job(id=row["id"], state=row["state"], client=row["client"], params=json.loads(row["params"]),
                  images=json.loads(row["images"]), error=row["error"], created_at=row["created_at"],
                  started_at=row["started_at"], finished_at=row["finished_at"])
        with self._live_lock:
            live = self._progress.get(job.id)
            job.has_preview = job.id in self._previews
        if live is not None:
            job.progress = Progress(live.step, live.total)
        elif job.state == DONE:
            job.progress = Progress(job.params["steps"], job.params["steps"])
        else:
            job.progress = Progress(0, job.params["steps"])
        return job

    # worker side

    def recover(self) -> int:
        """Jobs left ``running`` by a killed process go back to the queue, in their old place."""
        with self._connect() as conn:
            count = conn.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'").rowcount
        if count:
            logger.info("re-queued %d job(s) that were running when the server stopped", count)
        return count

    def claim(self) -> Job | None:
        """Take the oldest queued job and mark it running."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", (now(), row["id"]))
            # Before the commit: a cancel() that sees the job running must find its event.
            with self._live_lock:
                self._cancel[row["id"]] = threading.Event()
        self._notify()
        return self.get(row["id"])

    def request_for(self, job: Job) -> GenerationRequest:
        """The job's request, with its init image decoded again."""
        return rebuild_request(job, self._init_png)

    def _init_png(self, job_id: str) -> bytes | None:
        with self._connect() as conn:
            row = conn.execute("SELECT init_image FROM inputs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def cancel_event(self, job_id: str) -> threading.Event:
        with self._live_lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def report(self, job_id: str, step: int, total: int, preview: "bytes | LivePreview | None" = None) -> None:
        with self._live_lock:
            self._progress[job_id] = Progress(step, total)
            if preview is not None:
                self._previews[job_id] = preview
        # No notify: progress is not a change of state. Waking every waiter (the
        # synchronous API's ``wait``, each with a store query) at every step cost
        # the worker the interpreter lock once per waiter per step.

    def finish(self, job_id: str, images: list[dict], params_update: dict | None = None) -> None:
        with self._connect() as conn:
            row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            params = {**json.loads(row["params"]), **(params_update or {})}
            conn.execute("UPDATE jobs SET state = 'done', images = ?, params = ?, finished_at = ?, error = NULL"
                         " WHERE id = ?", (json.dumps(images), json.dumps(params), now(), job_id))
            conn.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        self._forget(job_id, keep_preview=True)

    def fail(self, job_id: str, reason: str) -> None:
        self._end(job_id, FAILED, reason)

    def mark_cancelled(self, job_id: str, reason: str = "cancelled") -> None:
        self._end(job_id, CANCELLED, reason)

    def requeue(self, job_id: str) -> None:
        """Put a running job back (the server is stopping)."""
        with self._connect() as conn:
            conn.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ? AND state = 'running'",
                         (job_id,))
        self._forget(job_id)

    def _end(self, job_id: str, state: str, reason: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?",
                         (state, reason, now(), job_id))
            conn.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        self._forget(job_id)

    def _forget(self, job_id: str, keep_preview: bool = False) -> None:
        with self._live_lock:
            self._progress.pop(job_id, None)
            self._cancel.pop(job_id, None)
            if not keep_preview:
                self._previews.pop(job_id, None)
            # Keep a few finished previews for pollers that arrive late; drop the rest.
            for old in list(self._previews)[:-4]:
                if old not in self._cancel:
                    self._previews.pop(old, None)
        self._notify()


class _Connection:
    """``with`` block: a connection from the pool (or a new one), committed on
    success, rolled back on error, then given back."""

    def __init__(self, pool: "_Pool"):
        self.pool = pool

    def __enter__(self):
        self.conn = self.pool.take()
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        except BaseException:
            self.conn.close()
            raise
        self.pool.give(self.conn)
        return False


class _Pool:
    """Idle SQLite connections, reused: opening one (WAL and pragmas) costs
    about half a millisecond of interpreter time, paid per store call before,
    and every web request runs in a new thread, so per-thread connections
    would not be reused. A connection is used by one thread at a time."""

    def __init__(self, path: str, keep: int = 4):
        self.path = path
        self.keep = keep
        self._idle: list = []
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return db.connect(self.path)

    def give(self, conn) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()


class Worker(threading.Thread):
    """Owns the engine; loads it once (lazily, here, so the app starts fast),
    then runs queued jobs one by one."""

    def __init__(self, queue: JobQueue, load_engine: Callable[[], object], gallery, preview_every: int = 1,
                 poll_seconds: float = 0.5):
        super().__init__(name="t2i-worker", daemon=True)
        self.queue = queue
        self._load_engine = load_engine
        self.gallery = gallery
        self.preview_every = preview_every
        self.poll_seconds = poll_seconds
        self.engine = None
        self.model_state = "loading"  # "loading" | "ready" | "failed"
        self.model_error: str | None = None
        self._stop_event = threading.Event()

    # 1. load the model, 2. put back jobs a killed process left running, 3. run jobs until stopped.
    def run(self) -> None:
        try:
            self.queue.recover()
        except Exception:
            logger.exception("could not put back the jobs left running")
        self.ensure_engine()
        while not self._stop_event.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the store itself failed (disk full, say): the thread must not die
                logger.exception("the worker hit an error outside a job; going on")
                self._stop_event.wait(max(self.poll_seconds, 1.0))
                continue
            if not busy:
                self.queue.wait_for_work(self.poll_seconds)

    def stop(self, timeout: float = 30) -> None:
        """Stop after the current step; the interrupted job goes back to the queue
        (the running job sees the stop at its next step, see ``_run_job``)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def ensure_engine(self):
        if self.engine is None and self.model_state != "failed":
            try:
                self.engine = self._load_engine()
                self.model_state = "ready"
            except Exception as exc:  # ModelLoadError, out of memory, a broken file ...
                logger.exception("the model could not be loaded")
                self.model_state, self.model_error = "failed", str(exc) or type(exc).__name__
        return self.engine

    def run_once(self) -> bool:
        """Run the next queued job, if any. Returns whether there was one."""
        job = self.queue.claim()
        if job is None:
            return False
        ok = self._run_job(job)
        if not ok:
            _free_memory()  # a failed or stopped run may leave big tensors behind
        return True

    def _run_job(self, job: Job) -> bool:
        """Run one job to its end state; False if it did not finish well."""
        engine = self.ensure_engine()
        if engine is None:
            self.queue.fail(job.id, f"the model could not be loaded: {self.model_error}")
            return False
        # The run stops when the user cancels (``asked``) or the server stops; kept apart
        # so that a user's cancel during shutdown stays a cancel and is not re-queued.
        asked = self.queue.cancel_event(job.id)
        stop = threading.Event()

        def on_step(info) -> None:
            self._on_step(job.id, info)
            if asked.is_set() or self._stop_event.is_set():
                stop.set()

        try:
            request = self.queue.request_for(job)
            result = engine.generate(request, on_step=on_step, cancel=stop)
            images = self.gallery.save(job.id, result)
            self.queue.finish(job.id, images, {"width": result.width, "height": result.height})
            logger.info("job %s done in %.1fs", job.id, result.seconds)
            return True
        except Exception as exc:
            end = job_end(job.id, exc)
            if end.state == CANCELLED and not asked.is_set():
                self.queue.requeue(job.id)  # stopped by the server, not the user
            elif end.state == CANCELLED:
                self.queue.mark_cancelled(job.id, end.reason)
            else:
                self.queue.fail(job.id, end.reason)
        return False

    def _on_step(self, job_id: str, info) -> None:
        self.queue.report(job_id, info.step, info.total, live_preview(self.engine, info, self.preview_every))


def _failure_reason(exc: Exception) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return f"out of GPU memory ({name}); try a smaller size or fewer images"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text[:300]}" if text else name


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
