"""The SQLite job store of the default backend.

Jobs live in a SQLite file (``<instance>/jobs.sqlite``), so a restart loses
no queued job and no finished image. Progress, cancel requests and the live
preview of the running job are kept in memory: they are worthless after a
restart. The client side (``JobStore``) serves the web app; the worker side
(``recover``, ``claim``, ``report``, ``finish`` ...) serves this backend's
one worker thread (``app.jobs.sqlite.worker``), which alone moves jobs out
of "running".
"""
from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
from pathlib import Path

from app.engine.types import GenerationRequest
from app.jobs.base import JobStore, ModelChoice, submitted_record, translate_errors
from app.jobs.job import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Failure,
    Job,
    Progress,
    QueueFull,
    generating_first,
    now,
    request_of,
)
from app.jobs.runner import LivePreview

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    params TEXT NOT NULL,                   -- JSON of GenerationRequest.to_dict() (no init image)
    images TEXT NOT NULL DEFAULT '[]',      -- JSON list of {"n", "seed", "infotext"}
    partial INTEGER NOT NULL DEFAULT 0,     -- 1: the images of a run stopped early
    error TEXT,                             -- why it failed or was cancelled, one line
    failure TEXT,                           -- JSON of Failure.to_dict() when failed
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, state);
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    init_image BLOB NOT NULL                -- PNG, already checked and size-limited
);
CREATE TABLE IF NOT EXISTS state (          -- shared settings: the selected model ("model")
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def connect(path: str | Path, timeout: float = 30) -> sqlite3.Connection:
    """A new connection in WAL mode (the worker thread writes while request
    threads read). Autocommit off: callers use ``with conn``. ``timeout``:
    seconds a call waits for another connection's lock."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def init_db(path: str | Path) -> None:
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "partial" not in columns:  # a database made before partial images were kept
            conn.execute("ALTER TABLE jobs ADD COLUMN partial INTEGER NOT NULL DEFAULT 0")
        if "failure" not in columns:  # before failures were kept as data: their jobs keep only the line
            conn.execute("ALTER TABLE jobs ADD COLUMN failure TEXT")
        conn.commit()
    finally:
        conn.close()


OUTAGES = ("locked", "busy", "disk i/o", "unable to open", "disk is full", "readonly")


def is_outage(exc: BaseException) -> bool:
    """A locked, busy or failing database file, not a bug in our SQL."""
    return isinstance(exc, sqlite3.OperationalError) and any(word in str(exc).lower() for word in OUTAGES)


@translate_errors(is_outage, "the job database (SQLite) is unavailable")
class SQLiteJobStore(JobStore):
    """``busy_timeout``: seconds a call waits for a lock held by another
    connection before giving up (the web app then answers 503, the worker
    retries)."""

    def __init__(self, path: str | Path, max_queue: int = 100, max_per_client: int = 5, busy_timeout: float = 5):
        self.path = str(path)
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        init_db(self.path)
        self._pool = _Pool(self.path, timeout=busy_timeout)
        self._changed = threading.Condition()
        self._live_lock = threading.Lock()
        self._progress: dict[str, Progress] = {}
        self._previews: dict[str, bytes | LivePreview] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._skips: set[str] = set()  # running jobs asked to skip (a cancel overrides it)

    def _connect(self) -> "_Connection":
        return _Connection(self._pool)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    # client side

    def submit(self, request: GenerationRequest, client: str, model: ModelChoice | None = None,
               group: dict | None = None) -> Job:
        job_id, params, init_png = submitted_record(request, model, group)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the limit checks and the insert as one step
            mine = conn.execute("SELECT COUNT(*) FROM jobs WHERE client = ? AND state IN ('queued', 'running')",
                                (client,)).fetchone()[0]
            if mine >= self.max_per_client and not (group and group.get("order", 0) > 0):
                raise QueueFull.for_client(mine, self.max_per_client)
            queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if queued >= self.max_queue:
                raise QueueFull.for_queue(queued)
            conn.execute("INSERT INTO jobs (id, client, state, params, created_at) VALUES (?, ?, 'queued', ?, ?)",
                         (job_id, client, json.dumps(params), now()))
            if init_png is not None:
                conn.execute("INSERT INTO inputs (job_id, init_image) VALUES (?, ?)", (job_id, init_png))
        self._notify()
        return self._must_get(job_id)

    def add_done(self, job_id: str, client: str, params: dict, images: builtins.list[dict]) -> bool:
        stamp = now()
        with self._connect() as conn:
            added = conn.execute(
                "INSERT OR IGNORE INTO jobs (id, client, state, params, images, created_at, started_at, finished_at)"
                " VALUES (?, ?, 'done', ?, ?, ?, ?, ?)",
                (job_id, client, json.dumps(params), json.dumps(images), stamp, stamp, stamp)).rowcount
        self._notify()
        return bool(added)

    def selection(self) -> ModelChoice | None:
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = 'model'").fetchone()
        return ModelChoice.of_params(json.loads(row[0])) if row else None

    def select(self, choice: ModelChoice | None) -> None:
        with self._connect() as conn:
            if choice is None:
                conn.execute("DELETE FROM state WHERE key = 'model'")
            else:
                conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('model', ?)",
                             (json.dumps(choice.to_params()),))
        self._notify()  # an idle worker loads it now

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

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None,
             client: str | None = None) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE 1"
        args: builtins.list[object] = []
        if before:
            sql += " AND seq < (SELECT seq FROM jobs WHERE id = ?)"
            args.append(before)
        if states:
            sql += " AND state IN (%s)" % ",".join("?" * len(states))
            args.extend(states)
        if client is not None:
            sql += " AND client = ?"
            args.append(client)
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
            self._skips.discard(job_id)
        if event is not None:  # running here: the worker stops after the current step
            event.set()
        self._notify()
        return self.get(job_id)

    def skip(self, job_id: str) -> Job | None:
        with self._live_lock:
            event = self._cancel.get(job_id)
            if event is not None and not event.is_set():  # running, and not already cancelled
                self._skips.add(job_id)
                event.set()
        return self.get(job_id)

    def counts(self) -> dict:
        with self._connect() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state")
            found = dict(rows.fetchall())
        return {"queued": found.get(QUEUED, 0), "running": found.get(RUNNING, 0)}

    def running(self) -> Job | None:
        """The job the worker is generating (``generating_first``)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE state = 'running' ORDER BY seq DESC").fetchall()
        return next(iter(generating_first(self._job(row) for row in rows)), None)

    def preview(self, job_id: str) -> bytes | None:
        with self._live_lock:
            preview = self._previews.get(job_id)
        return preview.png() if isinstance(preview, LivePreview) else preview

    def delete(self, job_id: str) -> bool:
        with self._connect() as conn:
            gone = conn.execute("DELETE FROM jobs WHERE id = ? AND state IN ('done', 'failed', 'cancelled')",
                                (job_id,)).rowcount
        if gone:
            with self._live_lock:
                self._previews.pop(job_id, None)
        return bool(gone)

    def _job(self, row) -> Job:
        job = Job(id=row["id"], state=row["state"], client=row["client"], params=json.loads(row["params"]),
                  images=json.loads(row["images"]), error=row["error"],
                  failure=Failure.of_dict(json.loads(row["failure"]) if row["failure"] else None),
                  created_at=row["created_at"],
                  started_at=row["started_at"], finished_at=row["finished_at"], partial=bool(row["partial"]))
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
        return request_of(job, self._init_png(job.id))

    def _init_png(self, job_id: str) -> bytes | None:
        with self._connect() as conn:
            row = conn.execute("SELECT init_image FROM inputs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def cancel_event(self, job_id: str) -> threading.Event:
        with self._live_lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def skipped(self, job_id: str) -> bool:
        """Whether the running job's stop was asked for by ``skip`` (not ``cancel``)."""
        with self._live_lock:
            return job_id in self._skips

    def drop_previews(self) -> None:
        """Forget the kept live previews (they hold the engine that made them: a switch frees it)."""
        with self._live_lock:
            self._previews.clear()

    def report(self, job_id: str, step: int, total: int, preview: bytes | LivePreview | None = None) -> None:
        with self._live_lock:
            self._progress[job_id] = Progress(step, total)
            if preview is not None:
                self._previews[job_id] = preview
        # No notify: progress is not a change of state. Waking every waiter (the
        # synchronous API's ``wait``, each with a store query) at every step cost
        # the worker the interpreter lock once per waiter per step.

    def finish(self, job_id: str, images: builtins.list[dict], params_update: dict | None = None,
               partial: bool = False) -> None:
        """Done, with its images (``partial``: a skipped run's)."""
        with self._connect() as conn:
            row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            params = {**json.loads(row["params"]), **(params_update or {})}
            conn.execute("UPDATE jobs SET state = 'done', images = ?, params = ?, finished_at = ?, error = NULL,"
                         " failure = NULL, partial = ? WHERE id = ?",
                         (json.dumps(images), json.dumps(params), now(), int(partial), job_id))
            conn.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        self._forget(job_id, keep_preview=True)

    def fail(self, job_id: str, failure: Failure) -> None:
        self._end(job_id, FAILED, failure.reason, failure=failure)

    def mark_cancelled(self, job_id: str, reason: str = "cancelled", images: builtins.list[dict] | None = None,
                       params_update: dict | None = None) -> None:
        """Cancelled; with ``images``, the partial images of the interrupted run (already on disk)."""
        self._end(job_id, CANCELLED, reason, images, params_update)

    def requeue(self, job_id: str) -> None:
        """Put a running job back (the server is stopping)."""
        with self._connect() as conn:
            conn.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ? AND state = 'running'",
                         (job_id,))
        self._forget(job_id)

    def _end(self, job_id: str, state: str, reason: str, images: builtins.list[dict] | None = None,
             params_update: dict | None = None, failure: Failure | None = None) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE jobs SET state = ?, error = ?, failure = ?, finished_at = ? WHERE id = ?",
                         (state, reason, json.dumps(failure.to_dict()) if failure else None, now(), job_id))
            if images:  # in the same transaction: no reader sees the end without its images
                row = conn.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
                params = {**json.loads(row["params"]), **(params_update or {})}
                conn.execute("UPDATE jobs SET images = ?, params = ?, partial = 1 WHERE id = ?",
                             (json.dumps(images), json.dumps(params), job_id))
            conn.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        self._forget(job_id, keep_preview=bool(images))

    def _forget(self, job_id: str, keep_preview: bool = False) -> None:
        with self._live_lock:
            self._progress.pop(job_id, None)
            self._cancel.pop(job_id, None)
            self._skips.discard(job_id)
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

    def __init__(self, path: str, keep: int = 4, timeout: float = 30):
        self.path = path
        self.keep = keep
        self.timeout = timeout
        self._idle: list = []
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return connect(self.path, self.timeout)

    def give(self, conn) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()


