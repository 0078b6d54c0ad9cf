"""The Redis job queue, web side: job records in Redis, dispatch through RQ.

``RedisJobStore`` is the ``JobStore`` of the Redis backend
(``app.jobs.redis.backend``); the web app and every GPU worker
(``python -m app worker --redis URL``) share it through Redis:

- a job record is a hash ``t2i:<queue>:job:<id>`` (state, params, progress,
  images, error, failure, timestamps, worker, attempt); a sorted set orders
  all jobs, sets hold the queued and running ids and each client's unfinished ids;
- the RQ job has the same id and runs ``app.jobs.redis.worker.run_job(id)``;
- every state change is one Lua script (``app.jobs.redis.scripts``);
- a worker's writes (``app.jobs.redis.protocol``) carry its ``attempt``
  number and are dropped once the job has been handed to another worker;
- finished PNGs (with their ``parameters`` metadata) travel through Redis
  and stay there until the web app has written them into its image folder,
  so a web app that was down collects them when it starts again.

A worker that dies mid-job stops renewing its RQ heartbeat; RQ's
StartedJobRegistry cleanup then retries the job (``Retry``) or fails it, and
calls ``on_rq_failure``, which puts the record back in the queue or marks it
failed with the reason.

No Flask here: the GPU workers import this module too.
"""
from __future__ import annotations

import builtins
import json
import logging
from dataclasses import asdict

from redis import Redis
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as RedisRetry
from rq import Callback, Queue, Retry

from app.engine.types import GenerationRequest, Limits
from app.jobs.base import JobStore, ModelChoice, submitted_record, translate_errors
from app.jobs.job import (
    CANCELLED,
    DONE,
    ERROR,
    FAILED,
    QUEUED,
    RUNNING,
    WORKER_LOST,
    Failure,
    Job,
    Progress,
    QueueFull,
    generating_first,
    now,
    request_of,
)
from app.jobs.redis.scripts import register as register_scripts
from app.jobs.runner import failure_reason

logger = logging.getLogger(__name__)

TASK = "app.jobs.redis.worker.run_job"
FAILURE_CALLBACK = "app.jobs.redis.store.on_rq_failure"
CANCEL_TTL = 24 * 3600

NO_PERSISTENCE = ("Redis has no persistence (appendonly no, save \"\"): a Redis restart loses every queued job "
                  "and every record; set appendonly yes (or a save schedule) on the Redis server")


def is_outage(exc: BaseException) -> bool:
    """Redis down, restarting (BusyLoadingError is a ConnectionError), too slow,
    or refusing writes because it cannot persist (MISCONF)."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("MISCONF")


@translate_errors(is_outage, "the job queue (Redis) is unavailable")
class RedisJobStore(JobStore):
    """Jobs in Redis, run by GPU worker processes through RQ.

    ``retries``: how many times a job whose worker died is run again before it
    is marked failed; ``job_timeout``: seconds one job may run on a worker."""

    def __init__(self, url_or_connection: str | Redis, name: str = "t2i", max_queue: int = 100,
                 max_per_client: int = 5, retries: int = 2, job_timeout: int = 3600):
        # One quick retry, not redis-py's default backoff of seconds: it reconnects after a
        # Redis restart, and a web request answers 503 at once while Redis is down.
        self.redis = (Redis.from_url(url_or_connection, retry=RedisRetry(ConstantBackoff(0.1), 1))
                      if isinstance(url_or_connection, str) else url_or_connection)
        self.name = name
        self.prefix = f"t2i:{name}:"
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        self.retries = retries
        self.job_timeout = job_timeout
        self.rq = Queue(name, connection=self.redis)
        self.scripts = register_scripts(self.redis)
        # The web app's limits, written into each job it queues: a worker validates with
        # these, not its own defaults (one source). None: a store that only runs jobs.
        self.limits: Limits | None = None

    # key names
    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    # --- client side (the web app) ------------------------------------------------------

    def submit(self, request: GenerationRequest, client: str, model: ModelChoice | None = None,
               group: dict | None = None) -> Job:
        job_id, params, init_png = submitted_record(request, model, group)
        # A group is admitted as a whole: its later jobs skip the per-client limit.
        per_client = 2 ** 31 if group and group.get("order", 0) > 0 else self.max_per_client
        seq, count = self.scripts["submit"](
            keys=[self.job_key(job_id), self.key("jobs"), self.key("seq"), self.key("queued"),
                  self.key("client", client), self.key("init", job_id)],
            args=[job_id, client, json.dumps(params), now(), params["steps"], per_client, self.max_queue,
                  init_png or b"", json.dumps(asdict(self.limits)) if self.limits is not None else ""])
        if seq == -1:
            raise QueueFull.for_client(count, self.max_per_client)
        if seq == -2:
            raise QueueFull.for_queue(count)
        try:
            self.enqueue(job_id)
        except Exception as exc:  # Redis went away between the two calls
            self.fail(job_id, Failure(ERROR, f"could not be queued: {failure_reason(exc)}"))
            raise
        return self._must_get(job_id)

    def enqueue(self, job_id: str, at_front: bool = False) -> None:
        self.rq.enqueue_call(
            TASK, args=(job_id,), job_id=job_id, timeout=self.job_timeout, result_ttl=600,
            failure_ttl=7 * 24 * 3600, description=f"t2i job {job_id}",
            retry=Retry(max=self.retries, enqueue_at_front=True) if self.retries > 0 else None,
            on_failure=Callback(FAILURE_CALLBACK), at_front=at_front)

    def selection(self) -> ModelChoice | None:
        raw = self.redis.get(self.key("selection"))
        return ModelChoice.of_params(json.loads(raw)) if raw else None

    def select(self, choice: ModelChoice | None) -> None:
        """Shared by every web app and worker of this queue; idle workers load it within a second."""
        if choice is None:
            self.redis.delete(self.key("selection"))
        else:
            self.redis.set(self.key("selection"), json.dumps(choice.to_params()))

    def get(self, job_id: str) -> Job | None:
        if not isinstance(job_id, str) or not job_id:
            return None
        job = self._job(self.redis.hgetall(self.job_key(job_id)))
        if job is not None and job.state == QUEUED:
            index = self.redis.lpos(self.rq.key, job_id)
            job.position = None if index is None else index + 1
        return job

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None,
             client: str | None = None) -> list[Job]:
        top = "+inf"
        if before:
            score = self.redis.zscore(self.key("jobs"), before)
            if score is None:
                return []
            top = f"({int(score)}"
        order = {job_id.decode(): i + 1 for i, job_id in enumerate(self.redis.lrange(self.rq.key, 0, -1))}
        found: builtins.list[Job] = []
        page = max(int(limit), 50)
        offset = 0
        while len(found) < limit:
            ids = self.redis.zrevrangebyscore(self.key("jobs"), top, "-inf", start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.job_key(job_id.decode()))
                rows = pipe.execute()
            for row in rows:
                job = self._job(row)
                if job is None or (states and job.state not in states) or (client is not None and job.client != client):
                    continue
                job.position = order.get(job.id) if job.state == QUEUED else None
                found.append(job)
                if len(found) == limit:
                    break
        return found

    def cancel(self, job_id: str) -> Job | None:
        # Twice at most: a running job handed back to the queue between the two reads is queued again.
        for _ in range(2):
            if self.end(job_id, CANCELLED, "cancelled before it started", only_from=QUEUED):
                # Off the RQ queue, and RQ's job record too: a queued job's has no expiry. A worker
                # that got it anyway finds no RQ job, or our record cancelled, and skips it.
                rq_job = self.rq.fetch_job(job_id)
                if rq_job is not None:
                    rq_job.delete(remove_from_queue=True)
                else:
                    self.rq.remove(job_id)
                break
            if self.redis.hget(self.job_key(job_id), "state") == RUNNING.encode():
                # The worker reads the flag with its next progress report and stops after that step
                # (a stopping worker's hand-back refuses while it is set).
                self.redis.set(self.key("cancel", job_id), 1, ex=CANCEL_TTL)
                break
        return self.get(job_id)

    def skip(self, job_id: str) -> Job | None:
        if isinstance(job_id, str) and self.redis.hget(self.job_key(job_id), "state") == RUNNING.encode():
            # The same flag as a cancel, set only if none is there: a cancel asked for first stays a cancel.
            self.redis.set(self.key("cancel", job_id), "skip", ex=CANCEL_TTL, nx=True)
        return self.get(job_id)

    def counts(self) -> dict:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(self.key("queued"))
            pipe.scard(self.key("running"))
            queued, running = pipe.execute()
        return {"queued": queued, "running": running}

    def running(self) -> Job | None:
        found = [self.get(job_id.decode()) for job_id in self.redis.smembers(self.key("running"))]
        return next(iter(generating_first(job for job in found if job is not None and job.state == RUNNING)), None)

    def preview(self, job_id: str) -> bytes | None:
        if not isinstance(job_id, str):
            return None
        return self.redis.get(self.key("preview", job_id))

    def delete(self, job_id: str) -> bool:
        if not isinstance(job_id, str) or not job_id:
            return False
        gone = bool(self.scripts["delete"](
            keys=[self.job_key(job_id), self.key("jobs"), self.key("unstored"), self.key("png", job_id),
                  self.key("preview", job_id), self.key("init", job_id), self.key("cancel", job_id)], args=[job_id]))
        if gone:  # RQ's own record of it (a finished one expires anyway)
            rq_job = self.rq.fetch_job(job_id)
            if rq_job is not None:
                rq_job.delete()
        return gone

    def persistence_warning(self) -> str | None:
        """NO_PERSISTENCE when Redis keeps nothing across a restart; None when it
        does, or when CONFIG is not allowed (managed Redis: it cannot tell)."""
        try:
            config = {**self.redis.config_get("appendonly"), **self.redis.config_get("save")}
        except ResponseError:
            return None
        text = {str(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else str(v))
                for k, v in config.items()}
        return NO_PERSISTENCE if text.get("appendonly") == "no" and not text.get("save") else None

    # --- the image disk, published by the web app for the workers -----------------------

    def publish_disk(self, free_mb: int, need_mb: int, ttl: int = 10) -> None:
        self.redis.set(self.key("disk"), json.dumps({"free_mb": free_mb, "need_mb": need_mb}), ex=ttl)

    def forget_disk(self) -> None:
        self.redis.delete(self.key("disk"))

    def disk(self) -> tuple[int, int] | None:
        """(free MB, MB needed) on the web app's image disk, or None if no web app published it lately."""
        raw = self.redis.get(self.key("disk"))
        if raw is None:
            return None
        found = json.loads(raw)
        return int(found["free_mb"]), int(found["need_mb"])

    def state_of(self, job_id: str) -> str | None:
        state = self.redis.hget(self.job_key(job_id), "state")
        return state.decode() if state else None

    def worker_of(self, job_id: str) -> str | None:
        """The name of the worker that ran (or runs) the job."""
        name = self.redis.hget(self.job_key(job_id), "worker")
        return name.decode() if name else None

    def attempts(self, job_id: str) -> int:
        return int(self.redis.hget(self.job_key(job_id), "attempt") or 0)

    # --- images waiting for the web app's disk ------------------------------------------

    def unstored(self) -> builtins.list[str]:
        return sorted(job_id.decode() for job_id in self.redis.smembers(self.key("unstored")))

    def is_unstored(self, job_id: str) -> bool:
        return bool(self.redis.sismember(self.key("unstored"), job_id))

    def pending_images(self, job_id: str) -> dict[int, bytes]:
        return {int(n): png for n, png in self.redis.hgetall(self.key("png", job_id)).items()}

    def images_stored(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key("png", job_id))
            pipe.srem(self.key("unstored"), job_id)
            pipe.execute()

    def restore(self, job_id: str, client: str, params: dict, images: builtins.list[dict], created_at: str,
                finished_at: str, partial: bool = False) -> bool:
        """A done job's record rebuilt from its images on disk; False if the job has a record."""
        return bool(self.scripts["restore"](
            keys=[self.job_key(job_id), self.key("jobs"), self.key("seq")],
            args=[job_id, client, json.dumps(params), json.dumps(images), created_at, finished_at, int(partial)]))

    def add_done(self, job_id: str, client: str, params: dict, images: builtins.list[dict]) -> bool:
        stamp = now()
        return self.restore(job_id, client, params, images, stamp, stamp)

    # --- ends every side may write (the worker's, scoped to its attempt: app.jobs.redis.protocol) ---

    def request_for(self, job: Job) -> GenerationRequest:
        """The job's request, with its init image decoded again."""
        return request_of(job, self.redis.get(self.key("init", job.id)))

    def fail(self, job_id: str, failure: Failure, attempt: int | None = None) -> bool:
        return self.end(job_id, FAILED, failure.reason, attempt=attempt, failure=failure)

    def requeue(self, job_id: str, note: str = "") -> bool:
        """Back to queued (RQ is re-enqueueing the job after its worker died)."""
        return bool(self.scripts["requeue"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running")], args=[job_id, note]))

    def end(self, job_id: str, state: str, reason: str, attempt: int | None = None, only_from: str = "",
            failure: Failure | None = None, kept: builtins.list | None = None) -> bool:
        """Failed or cancelled (``END``); ``attempt``: only if still that attempt's; ``kept``: a
        stopped run's images (JSON), params (JSON) and PNGs."""
        return bool(self.scripts["end"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running"), self.key("init", job_id),
                  self.key("cancel", job_id), self.key("unstored"), self.key("png", job_id)],
            args=[job_id, state, reason, now(), self.prefix, "" if attempt is None else attempt, only_from,
                  json.dumps(failure.to_dict()) if failure else "", *(kept or [])]))

    def _job(self, row: dict) -> Job | None:
        if not row:
            return None
        row = {k.decode(): v for k, v in row.items()}
        text = {k: v.decode() for k, v in row.items() if k not in ("params", "images")}
        params = json.loads(row["params"])
        job = Job(id=text["id"], state=text["state"], client=text["client"], params=params,
                  images=json.loads(row["images"]), error=text.get("error") or None,
                  failure=Failure.of_dict(json.loads(text["failure"]) if text.get("failure") else None),
                  created_at=text["created_at"], started_at=text.get("started_at") or None,
                  finished_at=text.get("finished_at") or None, has_preview=text.get("has_preview") == "1",
                  partial=text.get("partial") == "1")
        if job.state == DONE:
            job.progress = Progress(params["steps"], params["steps"])
        else:
            job.progress = Progress(int(text.get("step") or 0), int(text.get("total") or params["steps"]))
        return job


def on_rq_failure(rq_job, connection, exc_type, exc_value, traceback) -> None:
    """RQ's failure callback. Runs where RQ noticed the failure: in the
    worker when ``run_job`` raised, or in whichever process cleaned the
    StartedJobRegistry (a worker, or the web app) when the job's worker
    stopped sending heartbeats (``AbandonedJobError``)."""
    from rq.exceptions import AbandonedJobError

    queue = RedisJobStore(connection, name=rq_job.origin)
    job_id = rq_job.id
    worker = queue.worker_of(job_id) or "a worker"
    if exc_type is not None and issubclass(exc_type, AbandonedJobError):
        kind, reason = WORKER_LOST, f"the worker {worker} stopped (killed or disconnected) while running it"
    else:
        kind, reason = ERROR, f"the worker {worker} failed: {failure_reason(exc_value)}" if exc_value else f"{worker} failed"
    if rq_job.retries_left and rq_job.retries_left > 0:
        logger.warning("job %s: %s; queued again (%d retries left)", job_id, reason, rq_job.retries_left)
        queue.requeue(job_id, reason)
    else:
        tries = queue.attempts(job_id)
        logger.warning("job %s: %s; failed after %d attempt(s)", job_id, reason, tries)
        queue.fail(job_id, Failure(kind, f"{reason}; gave up after {tries} attempt(s)"))
