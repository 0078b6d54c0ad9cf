"""A GPU worker for the Redis queue (``python -m app worker --redis URL``).

``GPUWorker`` is RQ's ``SimpleWorker``: jobs run in the worker process
itself, so the model is loaded once per process and stays on the GPU. (RQ's
default worker forks a child per job, and CUDA cannot be used in a child
forked after the parent initialised it: every job would load the model
again.) What it adds to RQ:

- the loaded engine, reached by ``run_job`` (the RQ task) through
  ``GPUWorker.current``, since RQ imports tasks by name;
- heartbeats from a thread every ``heartbeat`` seconds while a job runs,
  with a registry TTL of three heartbeats: RQ's own TTLs add 60 s or more,
  and a SimpleWorker's main thread is busy in the job and sends none, so a
  killed worker would otherwise be noticed minutes late, not seconds;
- its model (name, demo or not, native size, loading or failed) published in
  Redis for the web app's /api/health and form defaults;
- model switching: a job runs on the model it was submitted with, loaded
  first if another is loaded (``app.jobs.engines.EngineSlot``), and a
  thread loads a newly selected model while the worker is idle;
- the job's own limits: those of the web app that queued it (one source),
  not the worker's defaults;
- no job started while the web app's image disk is nearly full: the job
  stays queued, and this worker starts it once space is back;
- faults handed back, not failed: a Redis outage longer than
  ``outage_seconds`` during a run stops it, and once Redis answers again the
  job is queued again (once; a second such outage fails it); a SIGTERM
  (warm shutdown) stops the running job at its next step and hands it back
  to the queue, then the worker exits: within seconds, not after the job (a
  cancel or skip its owner asked for, however late, ends it as asked instead);
- a finished run's PNGs encoded side by side (the images of a batch in a
  pool, app/jobs/finisher.py) and written to Redis before the RQ
  task returns: RQ's own retry and failure rules cover every write, so a
  worker that dies or a write that fails never leaves a job ``running``
  (the SQLite worker, in-process, overlaps the next job with them);
- live previews: at most one PNG encoded every half second (``ShippedPreviews``).

This module imports RQ and the engine; the CLI imports it only to run a worker.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Callable

from rq.worker import SimpleWorker, WorkerStatus

from app.engine.engine import Engine, GenerationCancelled
from app.engine.types import DEFAULT_LIMITS, StepInfo
from app.jobs import runner
from app.jobs.base import ModelChoice, StorageUnavailable, retry_store
from app.jobs.engines import EngineSlot, ModelLoader
from app.jobs.finisher import png_encoders
from app.jobs.images import disk_room_reason
from app.jobs.job import CANCELLED, FAILED, MODEL, QUEUED, RUNNING, WORKER_LOST, Failure
from app.jobs.redis.protocol import WorkerProtocol
from app.jobs.redis.store import RedisJobStore
from app.jobs.runner import DROPPED, JobEnd, JobOutput, ShippedPreviews, end_job, job_end

logger = logging.getLogger(__name__)

REQUEUED = "requeued"  # what run_t2i_job returns for a job handed back to the queue
OUTAGE_REQUEUES = 1  # a job is queued again after a long Redis outage this many times, then failed


class GPUWorker(SimpleWorker):
    current: "GPUWorker | None" = None  # the worker of this process, for run_job

    def __init__(self, queues, *, load_startup: Callable[[], Engine], startup: ModelChoice,
                 job_queue: RedisJobStore, heartbeat: float = 10.0, preview_every: int = 1,
                 retry_seconds: float = 60, load_model: ModelLoader | None = None, **kwargs):
        self.job_ttl = max(1, math.ceil(heartbeat * 3))  # three missed heartbeats: the worker is dead
        # Idle workers wake from their blocking dequeue every few seconds to clean
        # RQ's registries (that is what finds jobs abandoned by a dead worker).
        kwargs.setdefault("maintenance_interval", max(5, self.job_ttl))
        kwargs.setdefault("worker_ttl", kwargs["maintenance_interval"] + 15)
        super().__init__(queues, **kwargs)
        # ``load_startup`` loads the startup model ``startup`` (again after a switch back): nothing
        # here keeps an engine but the slot, so a switch frees the one loaded before.
        self.slot = EngineSlot(load_startup, startup, load_model)
        self.slot.ensure()
        self.job_queue = job_queue
        self.jobs = WorkerProtocol(job_queue)  # this worker's writes to its jobs
        self.heartbeat_seconds = heartbeat
        self.preview_every = preview_every
        # How long a job's store writes are retried while Redis is away; a longer outage hands the job back.
        self.retry_seconds = retry_seconds
        self._beat_lock = threading.Lock()
        self._beating: tuple | None = None  # (rq job, execution) while one runs
        self._stop_beats = threading.Event()
        self._stopping = threading.Event()  # a warm shutdown (SIGTERM) was asked for
        self.encoders = png_encoders()  # a finished run's PNGs, a batch's side by side
        self.previews = ShippedPreviews(preview_every)
        self._cancel: threading.Event | None = None  # the running job's, for a SIGTERM to stop it
        GPUWorker.current = self

    # --- RQ hooks -----------------------------------------------------------------------

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """Seconds the StartedJobRegistry keeps a job after a heartbeat: three beats."""
        return self.job_ttl

    def execute_job(self, job, queue) -> None:
        execution = self.prepare_execution(job)
        with self._beat_lock:
            self._beating = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._cancel = None
            with self._beat_lock:
                self._beating = None
        self._give_rq_back(job.id)
        self.set_state(WorkerStatus.IDLE)

    def _give_rq_back(self, job_id: str) -> None:
        """RQ has just marked its job finished (or failed); if our record is queued (handed back
        by this run, or re-queued by a cleanup that thought this worker dead), RQ gets it again."""
        try:
            if self.retried(job_id, "queuing it again", lambda: self.jobs.requeue_rq(job_id)):
                logger.warning("job %s is queued again", job_id)
        except StorageUnavailable:  # Redis away again: the StartedJobRegistry cleanup will find it
            logger.exception("job %s: could not be queued again", job_id)

    def handle_warm_shutdown_request(self) -> None:
        """SIGTERM or Ctrl+C: RQ's warm shutdown waits for the running job, which may take
        minutes (a hires batch); a container's stop or a test's teardown would wait that long, or
        kill the worker and leave the job to be noticed dead. So the running job is cancelled at
        its next step and handed back to the queue (``_hand_back``), like a job this worker has
        taken but not begun, and a job waiting for disk space: another worker, or this one
        restarted, runs it from the start. Then RQ's loop ends, and the worker exits."""
        super().handle_warm_shutdown_request()
        self._stopping.set()
        cancel = self._cancel
        if cancel is not None:
            cancel.set()

    @property
    def engine(self) -> Engine | None:
        return self.slot.engine

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        threading.Thread(target=self._beat_forever, name="t2i-heartbeat", daemon=True).start()
        threading.Thread(target=self._follow_forever, name="t2i-model", daemon=True).start()

    def register_birth(self) -> None:
        # A worker killed under this name leaves RQ's record for a minute or more. Once it
        # has missed three heartbeats it is dead, so a restarted worker may take the name.
        last = self.connection.zscore(self.job_queue.key("workers"), self.name)
        info = self.connection.hget(self.job_queue.key("worker-info"), self.name)
        if last is not None and info and time.time() - last > 3 * json.loads(info)["heartbeat"]:
            logger.info("worker %s: taking over the name of a dead worker", self.name)
            self.connection.delete(self.key)
        super().register_birth()

    def subscribe(self) -> None:
        """RQ's, with a 1 s poll, not 60 s: redis-py 8's ``PubSubWorkerThread.stop()`` waits for
        the poll to end, so a stopped worker (SIGTERM) hung up to a minute before exiting."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=1, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def teardown(self) -> None:
        self._stop_beats.set()
        self._publish(alive=False)
        super().teardown()

    # --- heartbeats and the model it offers ---------------------------------------------

    def _beat_forever(self) -> None:
        while True:
            try:
                with self._beat_lock:
                    if self._beating is not None:
                        self.maintain_heartbeats(*self._beating)
                self._publish(alive=True)
            except Exception:  # Redis briefly away: RQ's main loop reconnects; beat again later
                logger.exception("heartbeat failed")
            if self._stop_beats.wait(self.heartbeat_seconds):
                return

    def _follow_forever(self) -> None:
        """While idle, load the model selected now (checked every second, or every heartbeat if shorter)."""
        while not self._stop_beats.wait(min(1.0, self.heartbeat_seconds)):
            try:
                with self._beat_lock:
                    busy = self._beating is not None
                if not busy:  # a job that starts meanwhile waits for the load (EngineSlot.use)
                    self.slot.follow(self.job_queue.selection())
                    self._publish(alive=True)
            except Exception:  # Redis away: try again later
                logger.exception("following the model selection failed")

    def _publish(self, alive: bool) -> None:
        workers, info = self.job_queue.key("workers"), self.job_queue.key("worker-info")
        with self.connection.pipeline() as pipe:
            if alive:
                status = self.slot.status(self.slot.startup or ModelChoice("demo"))
                pipe.zadd(workers, {self.name: time.time()})
                pipe.hset(info, self.name, json.dumps({
                    "model": status.id, "model_name": status.name, "is_demo": status.is_demo,
                    "default_size": list(status.native_size) if status.native_size else None,
                    "state": status.state, "error": status.error, "vae": status.vae, "compile": status.compile,
                    "heartbeat": self.heartbeat_seconds}))
            else:
                pipe.zrem(workers, self.name)
                pipe.hdel(info, self.name)
            pipe.execute()

    # --- one job ------------------------------------------------------------------------

    def run_t2i_job(self, job_id: str) -> str:
        """Run one job of the queue; returns the state it ended in."""
        jobs = self.jobs
        if not self._wait_for_room(job_id):
            return QUEUED  # left queued: RQ gets it back (``_give_rq_back``) unless it was cancelled
        attempt, before = self.retried(job_id, "starting", lambda: jobs.begin(job_id, self.name))
        if not attempt:
            logger.info("job %s is %s: skipped", job_id, before or "gone")
            return before or "gone"
        if before == RUNNING:
            logger.warning("job %s: its last worker died; running it again (attempt %d)", job_id, attempt)
        cancel, lost, skip = threading.Event(), threading.Event(), threading.Event()
        self.previews.start()
        self._cancel = cancel  # first: a SIGTERM from now on sets it
        if self._stopping.is_set():  # a SIGTERM came before this job began: it goes back to the queue
            cancel.set()
        try:
            job = self.retried(job_id, "reading it", lambda: jobs.get(job_id))
            if job is None:
                return "gone"
            request = self.retried(job_id, "reading it", lambda: jobs.request_for(job))
            limits = self.retried(job_id, "reading it", lambda: jobs.job_limits(job_id))
            with self.slot.use(ModelChoice.of_params(job.params)) as engine:  # not unloaded until the job ends
                if engine is None:  # fails the jobs that asked for it; the worker goes on
                    end = JobEnd.failed(Failure(MODEL, f"the model could not be loaded: {self.slot.error}"))
                else:
                    # The web app that accepted the job set its limits (one source). This process runs
                    # one job at a time on its engine, so the engine's limits are this job's meanwhile.
                    engine.limits = limits or DEFAULT_LIMITS
                    result = engine.generate(
                        request, on_step=lambda info: self._on_step(job_id, attempt, info, cancel, lost, skip),
                        cancel=cancel)
                    # Written with the end below, in the RQ task, so RQ's rules cover a write that fails.
                    end = JobEnd.finished(runner.job_output(result, self.encoders))
        except Exception as exc:  # a cancel, a bad input, out of memory, a timeout (RQ's JobTimeoutException) ...
            end = self._stopped(job_id, exc, lost, skip)
        # Outside the try: a finished run is recorded done (with its images), never failed.
        return end_job(job_id, end, _Record(self, job_id, attempt))

    def _stopped(self, job_id: str, exc: BaseException, lost: threading.Event, skip: threading.Event) -> JobEnd:
        """How a run that raised ends. Handed to another attempt (this worker was thought dead):
        nothing to write. Stopped by a Redis outage longer than ``retry_seconds`` or by a warm
        shutdown: back to the queue (an outage: once; a second fails it). Else as ``job_end`` says."""
        if lost.is_set():
            return JobEnd(DROPPED)
        if isinstance(exc, StorageUnavailable):
            logger.warning("job %s: %s; handing it back once Redis answers", job_id, self.outage)
            return JobEnd.handed_back(f"{self.outage}; queued again", counted=True)
        if isinstance(exc, GenerationCancelled) and self._stopping.is_set():
            # A cancel or skip its owner asked for (seen at a step or not yet) wins over the hand-back.
            asked = "skip" if skip.is_set() else self._stop_asked(job_id)
            if asked is None:
                return JobEnd.handed_back(f"its worker {self.name} was stopped (SIGTERM) while running it; "
                                          "queued again")
            return job_end(exc, skipped=asked == "skip")
        return job_end(exc, skipped=skip.is_set())

    def _stop_asked(self, job_id: str) -> str | None:
        """The owner's flag; None too while Redis is away (the hand-back script checks it again)."""
        try:
            return self.retried(job_id, "reading it", lambda: self.jobs.stop_asked(job_id))
        except StorageUnavailable:
            return None

    @property
    def outage(self) -> str:
        return f"Redis was unavailable for more than {self.retry_seconds:g} s while the worker {self.name} ran it"

    def retried(self, job_id: str, what: str, call):
        return retry_store(call, self.retry_seconds, f"job {job_id}: {what}")

    def written(self, job_id: str, what: str, call):
        """A job's last write: retried past a long Redis outage too, since the run it records
        (its images, or why it ended) is over and would be lost."""
        try:
            return self.retried(job_id, what, call)
        except StorageUnavailable:
            logger.warning("job %s: %s waits for Redis to answer", job_id, what)
            self.until_redis_answers()
            return self.retried(job_id, what, call)

    def _wait_for_room(self, job_id: str) -> bool:
        """Wait, the job still queued, while the web app's image disk is nearly full (checked
        every second: the web app publishes its free space that often). False: stop waiting,
        the job was cancelled, or this worker is shutting down (the job stays queued)."""
        queue, warned = self.job_queue, False
        while True:
            disk = self.retried(job_id, "reading the disk space", queue.disk)
            no_room = disk_room_reason(*disk) if disk else None  # None: no web app published it lately
            if not no_room:
                return True
            if not warned:
                logger.warning("job %s waits in the queue: the web app's %s", job_id, no_room)
                warned = True
            if self._stopping.wait(1.0):
                # Running: its last worker died and RQ gave it to this one; queued again like a hand-back.
                self.retried(job_id, "queuing it again", lambda: self.jobs.requeue(job_id, "its worker was stopped"))
                return False
            if self.retried(job_id, "reading it", lambda: queue.state_of(job_id)) not in (QUEUED, RUNNING):
                return False  # cancelled meanwhile

    def until_redis_answers(self) -> None:
        pause = 0.5
        while True:
            try:
                if self.connection.ping():
                    return
            except Exception:  # still down
                pass
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _on_step(self, job_id: str, attempt: int, info: StepInfo, cancel: threading.Event,
                 lost: threading.Event, skip: threading.Event) -> None:
        engine = self.slot.engine
        preview = self.previews.png(engine, info) if engine is not None else None
        answer = self.retried(job_id, "progress",
                              lambda: self.jobs.progress(job_id, attempt, info.step, info.total, preview))
        if answer == 2:
            lost.set()
        if answer == 3:  # a skip: the run stops like a cancel, and the job ends done with its images
            skip.set()
        if answer:  # 1: cancel asked for
            cancel.set()


class _Record:
    """``end_job``'s writes for one attempt of a job on a GPU worker: the PNGs travel in
    the end write, and a write past a long Redis outage waits for Redis (``written``)."""

    def __init__(self, worker: GPUWorker, job_id: str, attempt: int):
        self.worker, self.jobs, self.job_id, self.attempt = worker, worker.jobs, job_id, attempt

    def save_partial(self, output: JobOutput) -> bool:
        return True  # they go with the end write, for the web app to store

    def done(self, output: JobOutput, partial: bool) -> bool:
        return bool(self.worker.written(self.job_id, "done (skipped)" if partial else "done", lambda: self.jobs.complete(
            self.job_id, self.attempt, output.images, output.pngs, output.params_update, partial=partial)))

    def cancelled(self, reason: str, output: JobOutput | None) -> None:
        self.worker.written(self.job_id, "cancelled", lambda: self.jobs.mark_cancelled(
            self.job_id, reason, self.attempt, output.images if output else None, output.pngs if output else None,
            output.params_update if output else None))

    def failed(self, failure: Failure) -> None:
        self.worker.written(self.job_id, "failed", lambda: self.jobs.fail(self.job_id, failure, self.attempt))

    def requeued(self, note: str, counted: bool) -> str:
        worker, jobs, job_id, attempt = self.worker, self.jobs, self.job_id, self.attempt
        if counted:
            worker.until_redis_answers()
        handed = worker.retried(job_id, "queuing it again", lambda: jobs.hand_back(
            job_id, attempt, note, counted=counted, most=OUTAGE_REQUEUES))
        if handed == -2:  # its owner's cancel (or skip) came in after the worker looked: a cancel
            self.cancelled("cancelled as its worker was stopping", None)
            return CANCELLED
        if handed == -1:
            self.failed(Failure(WORKER_LOST, f"{worker.outage}, the second time; it was queued again once already"))
            return FAILED
        return REQUEUED


def run_job(job_id: str) -> str:
    """The RQ task: run job ``job_id`` on this process's loaded engine."""
    worker = GPUWorker.current
    if worker is None:
        raise RuntimeError("app.jobs.redis.worker.run_job runs inside a GPU worker: python -m app worker --redis URL")
    return worker.run_t2i_job(job_id)
