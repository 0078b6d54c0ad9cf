"""The worker thread of the SQLite backend: it owns the engine, loads it
(lazily, in the thread, so the app starts fast), then runs queued jobs one by
one in order of arrival.

Model switching: each job carries the model selected when it was submitted
(``ModelChoice``); before a job the worker loads that model if another is
loaded, freeing the old engine first (one model in memory at a time), and
when idle it loads a newly selected model at once.

A finished run's PNGs are encoded, stored and its job ended by a ``Finisher``
(app/jobs/finisher.py) while the worker already runs the next job; the
upkeep after a job (retention, plot grids) runs there too, after its end."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from app.engine.engine import Engine
from app.engine.types import StepInfo
from app.jobs.base import ModelChoice, StorageUnavailable, retry_store
from app.jobs.engines import EngineSlot, ModelLoader
from app.jobs.finisher import FINISHING, Finisher
from app.jobs.images import ImageStore, disk_room_reason
from app.jobs.job import DISK_FULL, FAILED, MODEL, QUEUED, Failure, Job
from app.jobs.runner import EngineLoader, JobEnd, JobOutput, end_job, job_end, job_output, live_preview
from app.jobs.sqlite.store import SQLiteJobStore

if TYPE_CHECKING:
    from app.engine.types import GenerationResult

logger = logging.getLogger(__name__)


class Worker(threading.Thread):
    """``min_free_mb``: a job fails unrun when the image disk has less free;
    ``retry_seconds``: how long a store write is retried while the database
    is locked before it waits for the next loop; ``after_job``: called after
    each finished job (retention); ``load_model``: loads another model than
    the startup one (``startup``, loaded by ``load_engine``) for a switch
    (None: jobs that ask for another model fail)."""

    def __init__(self, store: SQLiteJobStore, load_engine: EngineLoader, images: ImageStore, preview_every: int = 1,
                 poll_seconds: float = 0.5, min_free_mb: int = 0, retry_seconds: float = 60,
                 after_job: Callable[[], object] | None = None, load_model: ModelLoader | None = None,
                 startup: ModelChoice | None = None):
        super().__init__(name="t2i-worker", daemon=True)
        self.store = store
        self.images = images
        self.preview_every = preview_every
        self.poll_seconds = poll_seconds
        # Live previews hold the engine that made them: a switch drops them with it.
        self.slot = EngineSlot(load_engine, startup, load_model, on_unload=lambda: store.drop_previews())
        self.min_free_mb = min_free_mb
        self.retry_seconds = retry_seconds
        self.after_job = after_job
        self._unrecorded: list[Callable[[], None]] = []  # end states not yet written (the store was down)
        self.finisher = Finisher()
        self._stop_event = threading.Event()

    # 1. put back jobs a killed process left running, 2. load the model, 3. run jobs until stopped.
    def run(self) -> None:
        try:
            self.store.recover()
        except Exception:
            logger.exception("could not put back the jobs left running")
        self.ensure_engine()
        while not self._stop_event.is_set():
            try:
                busy = self.run_once(overlap=True)
            except Exception:  # the store itself failed (disk full, say): the thread must not die
                logger.exception("the worker hit an error outside a job; going on")
                self._stop_event.wait(max(self.poll_seconds, 1.0))
                continue
            if not busy:
                self.follow_selection()
                self.store.wait_for_change(self.poll_seconds)
        self.finisher.wait()  # the runs that finished are recorded before the thread ends

    def stop(self, timeout: float = 30) -> None:
        """Stop after the current step; the interrupted job goes back to the queue
        (the running job sees the stop at its next step, see ``_run_job``)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    # The model: see app/jobs/engines.py.
    @property
    def engine(self) -> Engine | None:
        return self.slot.engine

    @property
    def model_state(self) -> str:
        return self.slot.state

    @property
    def model_error(self) -> str | None:
        return self.slot.error

    def ensure_engine(self, choice: ModelChoice | None = None) -> Engine | None:
        return self.slot.ensure(choice)

    def follow_selection(self) -> None:
        try:
            selected = self.store.selection()
        except StorageUnavailable:
            return
        self.slot.follow(selected)

    def run_once(self, overlap: bool = False) -> bool:
        """Run the next queued job, if any. Returns whether there was one.
        ``overlap``: return once its run is over, its end still being written
        by the finisher (the worker's loop); else once it has ended."""
        while self._unrecorded:  # first the end of a job the store missed; raises while it is still down
            self._unrecorded[0]()
            self._unrecorded.pop(0)
        job = self.store.claim()
        if job is None:
            return False
        self._run_job(job)
        self.finisher.submit(self._after_job, holds_run=False)  # after the job's end, which may be on its way
        if not overlap:
            self.finisher.wait()
        return True

    def _after_job(self) -> None:
        if self.after_job is not None:
            try:
                self.after_job()
            except Exception:
                logger.exception("after-job upkeep (retention) failed")

    def record(self, job: Job, what: str, write: Callable[[], None]) -> None:
        """A job's end state, retried while the store is unavailable; if it
        stays down, kept and written before the next job is claimed."""
        try:
            retry_store(write, self.retry_seconds, f"job {job.id}: {what}")
        except StorageUnavailable:
            self._unrecorded.append(write)
            raise

    def _run_job(self, job: Job) -> str:
        """Run one job to its end; returns the state it ended in (FINISHING: its run
        finished, the finisher ends it)."""
        with self.slot.use(ModelChoice.of_params(job.params)) as engine:  # not unloaded until the run ends
            if engine is None:
                failure = Failure(MODEL, f"the model could not be loaded: {self.model_error}")
                return end_job(job.id, JobEnd.failed(failure), _Record(self, job))
            end = self._run_on(engine, job)
        return FINISHING if end is None else end_job(job.id, end, _Record(self, job))

    def _run_on(self, engine: Engine, job: Job) -> JobEnd | None:
        """How the job ends; None: its run finished and is handed to the finisher."""
        no_room = self.min_free_mb and disk_room_reason(self.images.free_mb(), self.min_free_mb)
        if no_room:
            return JobEnd.failed(Failure(DISK_FULL, no_room))
        # The run stops when the user cancels (``asked``) or the server stops; kept apart
        # so that a user's cancel during shutdown stays a cancel and is not re-queued.
        asked = self.store.cancel_event(job.id)
        stop = threading.Event()

        def on_step(info: StepInfo) -> None:
            self.store.report(job.id, info.step, info.total, live_preview(engine, info, self.preview_every))
            if asked.is_set() or self._stop_event.is_set():
                stop.set()

        try:
            request = retry_store(lambda: self.store.request_for(job), self.retry_seconds, f"job {job.id}: reading it")
            result = engine.generate(request, on_step=on_step, cancel=stop)
        except Exception as exc:
            end = job_end(exc, skipped=self.store.skipped(job.id))
            if end.state != FAILED and not asked.is_set():  # stopped by the server, not by its user
                return JobEnd.handed_back("the server stopped while it ran; queued again")
            return end
        self.finisher.submit(lambda: self._finish(job, result))
        return None

    def _finish(self, job: Job, result: "GenerationResult") -> None:
        """A finished run's end, on the finisher's thread: its PNGs encoded and stored,
        then the job done; failed when they cannot be stored (a full disk ...)."""
        try:
            output = job_output(result, self.finisher.encoders)
            self.images.write(job.id, output.pngs)
        except Exception as exc:
            end = job_end(exc)
        else:  # a job whose images are written is recorded done, never failed
            end = JobEnd.finished(output)
        end_job(job.id, end, _Record(self, job))


class _Record:
    """``end_job``'s writes for one job of the SQLite worker, each retried (``Worker.record``)."""

    def __init__(self, worker: Worker, job: Job):
        self.worker, self.store, self.job = worker, worker.store, job

    def save_partial(self, output: JobOutput) -> bool:
        """Written to the image folder like a done job's (all or nothing)."""
        try:
            self.worker.images.write(self.job.id, output.pngs)
            return True
        except OSError as exc:
            logger.error("job %s: its partial images could not be saved: %s", self.job.id, exc)
            return False

    def done(self, output: JobOutput, partial: bool) -> bool:
        self.worker.record(self.job, "done", lambda: self.store.finish(
            self.job.id, output.images, output.params_update, partial=partial))
        return True

    def cancelled(self, reason: str, output: JobOutput | None) -> None:
        self.worker.record(self.job, "cancelled", lambda: self.store.mark_cancelled(
            self.job.id, reason, output.images if output else None, output.params_update if output else None))

    def failed(self, failure: Failure) -> None:
        self.worker.record(self.job, "failed", lambda: self.store.fail(self.job.id, failure))

    def requeued(self, note: str, counted: bool) -> str:
        self.worker.record(self.job, "re-queued", lambda: self.store.requeue(self.job.id))
        return QUEUED
