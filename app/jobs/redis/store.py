"""The Redis job queue: job records in Redis, dispatch through RQ.

``RedisJobStore`` is the ``JobStore`` of the Redis backend
(``app.jobs.redis.backend``); the web app and every GPU worker
(``python -m app worker --redis URL``) share it through Redis:

- a job record is a hash ``t2i:<queue>:job:<id>`` (state, params, progress,
  images, error, timestamps, worker, attempt); a sorted set orders all jobs,
  sets hold the queued and running ids and each client's unfinished ids;
- the RQ job has the same id and runs ``app.jobs.redis.worker.run_job(id)``;
- every state change is one Lua script, so a cancel racing a worker's start,
  or a late worker racing a retry, cannot leave a record half-changed; a
  worker's writes carry its ``attempt`` number and are dropped once the job
  has been handed to another worker;
- progress and the preview PNG (with a TTL) are written by the worker on
  each step, and the same call tells it whether a cancel was asked for;
- finished PNGs (with their ``parameters`` metadata) travel through Redis
  and stay there until the web app has written them into its image folder,
  so workers need no shared disk and a web app that was down collects them
  when it starts again.

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
from dataclasses import asdict, fields

from redis import Redis
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as RedisRetry
from rq import Callback, Queue, Retry

from app.engine.types import GenerationRequest, Limits
from app.jobs.base import JobStore, ModelChoice, translate_errors
from app.jobs.job import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Job,
    Progress,
    QueueFull,
    job_record,
    new_job_id,
    now,
    request_of,
)
from app.jobs.runner import failure_reason

logger = logging.getLogger(__name__)

TASK = "app.jobs.redis.worker.run_job"
FAILURE_CALLBACK = "app.jobs.redis.store.on_rq_failure"
PREVIEW_TTL = 3600  # seconds a live preview outlives its last update
CANCEL_TTL = 24 * 3600

# KEYS: job, jobs, seq, queued, client, init.
# ARGV: id, client, params, created_at, steps, max_per_client, max_queue, init_png or "", limits (JSON).
_SUBMIT = """
local mine = redis.call('SCARD', KEYS[5])
if mine >= tonumber(ARGV[6]) then return {-1, mine} end
local queued = redis.call('SCARD', KEYS[4])
if queued >= tonumber(ARGV[7]) then return {-2, queued} end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'client', ARGV[2], 'state', 'queued', 'params', ARGV[3],
           'images', '[]', 'created_at', ARGV[4], 'seq', seq, 'attempt', 0, 'step', 0, 'total', ARGV[5],
           'limits', ARGV[9])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[8] ~= '' then redis.call('SET', KEYS[6], ARGV[8]) end
return {seq, 0}
"""

# A worker takes the job. "running" is accepted too: RQ only hands a running
# job out again after its worker was found dead. KEYS: job, queued, running.
# ARGV: id, worker, started_at. Returns {attempt or 0, state before}.
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return {0, state or ''} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'started_at', ARGV[3], 'step', 0, 'has_preview', 0)
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {attempt, state}
"""

# KEYS: job, cancel flag, preview. ARGV: attempt, step, total, preview png or "", preview ttl.
# Returns 0: go on, 1: cancel asked for, 2: the job is no longer this attempt's, 3: skip asked for.
_REPORT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return 2
end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  redis.call('HSET', KEYS[1], 'has_preview', 1)
end
local flag = redis.call('GET', KEYS[2])
if not flag then return 0 end
if flag == 'skip' then return 3 end
return 1
"""

# KEYS: job, running, unstored, pngs, init, cancel. ARGV: id, attempt, images, params,
# finished_at, key prefix, partial (0/1), then one PNG per image.
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[4])
for i = 8, #ARGV do redis.call('HSET', KEYS[4], i - 8, ARGV[i]) end
redis.call('HSET', KEYS[1], 'state', 'done', 'images', ARGV[3], 'params', ARGV[4], 'finished_at', ARGV[5], 'error', '',
           'partial', ARGV[7])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[6] .. 'client:' .. redis.call('HGET', KEYS[1], 'client'), ARGV[1])
redis.call('DEL', KEYS[5], KEYS[6])
return 1
"""

# failed / cancelled. KEYS: job, queued, running, init, cancel, unstored, pngs. ARGV: id, state,
# reason, finished_at, key prefix, attempt ('' any), only from this state ('' queued or running),
# then for a run stopped early its images (JSON), params (JSON) and one PNG per image.
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
if ARGV[7] ~= '' and state ~= ARGV[7] then return 0 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[6] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'error', ARGV[3], 'finished_at', ARGV[4])
if #ARGV > 9 then  -- the partial images, kept for the web app like a done job's
  redis.call('DEL', KEYS[7])
  for i = 10, #ARGV do redis.call('HSET', KEYS[7], i - 10, ARGV[i]) end
  redis.call('HSET', KEYS[1], 'images', ARGV[8], 'params', ARGV[9], 'partial', 1)
  redis.call('SADD', KEYS[6], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[5] .. 'client:' .. redis.call('HGET', KEYS[1], 'client'), ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
"""

# The job back in the queue, its progress reset, with a note why (ARGV[note]).
_BACK_IN_QUEUE = """
redis.call('HSET', KEYS[1], 'state', 'queued', 'step', 0, 'has_preview', 0, 'note', ARGV[{note}])
redis.call('HDEL', KEYS[1], 'started_at')
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# A running job whose worker died goes back to the queue (RQ re-enqueues it).
# KEYS: job, queued, running. ARGV: id, note.
_REQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
""" + _BACK_IN_QUEUE.format(note=2)

# A running attempt gives its job back to the queue: a long Redis outage stopped it, or its
# worker was asked to stop. KEYS: job, queued, running. ARGV: id, attempt, note, counted (0/1),
# most counted hand-backs. Returns 1: queued again, 0: no longer this attempt's, -1: handed back
# too often (the caller fails it).
_HAND_BACK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return 0
end
if ARGV[4] == '1' then
  if tonumber(redis.call('HGET', KEYS[1], 'outages') or '0') >= tonumber(ARGV[5]) then return -1 end
  redis.call('HINCRBY', KEYS[1], 'outages', 1)
end
""" + _BACK_IN_QUEUE.format(note=3)

# A job record rebuilt from its images on disk (Redis lost the records). KEYS: job, jobs, seq.
# ARGV: id, client, params, images, created_at, finished_at, partial. Returns 0 if it exists.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'client', ARGV[2], 'state', 'done', 'params', ARGV[3], 'images', ARGV[4],
           'created_at', ARGV[5], 'finished_at', ARGV[6], 'seq', seq, 'attempt', 0, 'step', 0, 'total', 0,
           'partial', ARGV[7], 'error', '', 'restored', 1)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return 1
"""

# A finished job and everything it left. KEYS: job, jobs, unstored, pngs, preview, init, cancel. ARGV: id.
_DELETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'done' and state ~= 'failed' and state ~= 'cancelled' then return 0 end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

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
        self._scripts = {name: self.redis.register_script(text) for name, text in (
            ("submit", _SUBMIT), ("begin", _BEGIN), ("report", _REPORT), ("finish", _FINISH), ("end", _END),
            ("requeue", _REQUEUE), ("delete", _DELETE), ("hand_back", _HAND_BACK), ("restore", _RESTORE))}
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
        job_id = new_job_id()
        params, init_png = job_record(request)
        if model is not None:
            params.update(model.to_params())
        if group is not None:
            params["group"] = group
        # A group is admitted as a whole: its later jobs skip the per-client limit.
        per_client = 2 ** 31 if group and group.get("order", 0) > 0 else self.max_per_client
        seq, count = self._scripts["submit"](
            keys=[self.job_key(job_id), self.key("jobs"), self.key("seq"), self.key("queued"),
                  self.key("client", client), self.key("init", job_id)],
            args=[job_id, client, json.dumps(params), now(), params["steps"], per_client, self.max_queue,
                  init_png or b"", json.dumps(asdict(self.limits)) if self.limits is not None else ""])
        if seq == -1:
            raise QueueFull.for_client(count, self.max_per_client)
        if seq == -2:
            raise QueueFull.for_queue(count)
        try:
            self._enqueue(job_id)
        except Exception as exc:  # Redis went away between the two calls
            self.fail(job_id, f"could not be queued: {failure_reason(exc)}")
            raise
        return self._must_get(job_id)

    def _enqueue(self, job_id: str, at_front: bool = False) -> None:
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
        if self._end(job_id, CANCELLED, "cancelled before it started", only_from=QUEUED):
            # Off the RQ queue, and RQ's job record too: a queued job's has no expiry. A worker
            # that got it anyway finds no RQ job, or our record cancelled, and skips it.
            rq_job = self.rq.fetch_job(job_id)
            if rq_job is not None:
                rq_job.delete(remove_from_queue=True)
            else:
                self.rq.remove(job_id)
        elif self.redis.hget(self.job_key(job_id), "state") == RUNNING.encode():
            # The worker reads the flag with its next progress report and stops after that step.
            self.redis.set(self.key("cancel", job_id), 1, ex=CANCEL_TTL)
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
        jobs = [job for job in found if job is not None and job.state == RUNNING]
        return min(jobs, key=lambda job: job.created_at) if jobs else None

    def preview(self, job_id: str) -> bytes | None:
        if not isinstance(job_id, str):
            return None
        return self.redis.get(self.key("preview", job_id))

    def delete(self, job_id: str) -> bool:
        if not isinstance(job_id, str) or not job_id:
            return False
        gone = bool(self._scripts["delete"](
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

    # --- worker side (app/rq_worker.py) -------------------------------------------------
    # Scoped to one attempt: once a job was handed to another worker (its first one
    # presumed dead), the first one's late writes change nothing.

    def begin(self, job_id: str, worker: str) -> tuple[int, str]:
        """Mark the job running on ``worker``. Returns (attempt, state before);
        attempt 0 means the job must not run (cancelled or already finished)."""
        attempt, before = self._scripts["begin"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running")], args=[job_id, worker, now()])
        return int(attempt), before.decode() if isinstance(before, bytes) else str(before)

    def job_limits(self, job_id: str) -> Limits | None:
        """The limits of the web app that queued the job (None: a record from before they were kept)."""
        raw = self.redis.hget(self.job_key(job_id), "limits")
        if not raw:
            return None
        known = {f.name for f in fields(Limits)}
        return Limits(**{k: v for k, v in json.loads(raw).items() if k in known})

    def hand_back(self, job_id: str, attempt: int, note: str, counted: bool = False, most: int = 1) -> int:
        """Put a running attempt's job back in the queue (``counted``: a Redis outage, at most
        ``most`` times a job). Returns 1 (queued again), 0 (no longer this attempt's) or -1
        (counted too often: the caller fails it). RQ gets the job again from ``requeue_rq``."""
        return int(self._scripts["hand_back"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running")],
            args=[job_id, attempt, note, int(counted), most]))

    def requeue_rq(self, job_id: str) -> bool:
        """Give RQ the job again, at the front, when our record says queued: after its run ended
        (RQ has marked its own job finished or failed, with an expiry). True if queued again."""
        if self.state_of(job_id) != QUEUED:
            return False
        self.rq.remove(job_id)  # at most one entry: a cleanup's RQ retry may have pushed it already
        rq_job = self.rq.fetch_job(job_id)
        if rq_job is not None:
            rq_job.delete()
        self._enqueue(job_id, at_front=True)
        return True

    def restore(self, job_id: str, client: str, params: dict, images: builtins.list[dict], created_at: str,
                finished_at: str, partial: bool = False) -> bool:
        """A done job's record rebuilt from its images on disk; False if the job has a record."""
        return bool(self._scripts["restore"](
            keys=[self.job_key(job_id), self.key("jobs"), self.key("seq")],
            args=[job_id, client, json.dumps(params), json.dumps(images), created_at, finished_at, int(partial)]))

    def add_done(self, job_id: str, client: str, params: dict, images: builtins.list[dict]) -> bool:
        stamp = now()
        return self.restore(job_id, client, params, images, stamp, stamp)

    def request_for(self, job: Job) -> GenerationRequest:
        """The job's request, with its init image decoded again."""
        return request_of(job, self.redis.get(self.key("init", job.id)))

    def progress(self, job_id: str, attempt: int, step: int, total: int, preview_png: bytes | None = None) -> int:
        """Progress of a running attempt. Returns 0 (go on), 1 (cancel asked for)
        or 2 (the job is no longer this attempt's: stop quietly)."""
        return int(self._scripts["report"](
            keys=[self.job_key(job_id), self.key("cancel", job_id), self.key("preview", job_id)],
            args=[attempt, step, total, preview_png or b"", PREVIEW_TTL]))

    def complete(self, job_id: str, attempt: int, images: builtins.list[dict], pngs: builtins.list[bytes],
                 params_update: dict | None = None, partial: bool = False) -> bool:
        """Done: the image records, and the PNGs for the web app to store
        (``partial``: a skipped run's)."""
        return bool(self._scripts["finish"](
            keys=[self.job_key(job_id), self.key("running"), self.key("unstored"), self.key("png", job_id),
                  self.key("init", job_id), self.key("cancel", job_id)],
            args=[job_id, attempt, json.dumps(images), json.dumps(self._params(job_id, params_update)), now(),
                  self.prefix, int(partial), *pngs]))

    def _params(self, job_id: str, update: dict | None) -> dict:
        row = self.redis.hget(self.job_key(job_id), "params")
        return {**json.loads(row or b"{}"), **(update or {})}

    def fail(self, job_id: str, reason: str, attempt: int | None = None) -> bool:
        return self._end(job_id, FAILED, reason, attempt=attempt)

    def mark_cancelled(self, job_id: str, reason: str = "cancelled", attempt: int | None = None,
                       images: builtins.list[dict] | None = None, pngs: builtins.list[bytes] | None = None,
                       params_update: dict | None = None) -> bool:
        """Cancelled; with ``images`` and ``pngs``, the partial images of the interrupted run,
        stored by the web app like a done job's."""
        kept = [json.dumps(images), json.dumps(self._params(job_id, params_update)), *pngs] if images and pngs else []
        return self._end(job_id, CANCELLED, reason, attempt=attempt, kept=kept)

    def requeue(self, job_id: str, note: str = "") -> bool:
        """Back to queued (RQ is re-enqueueing the job after its worker died)."""
        return bool(self._scripts["requeue"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running")], args=[job_id, note]))

    def _end(self, job_id: str, state: str, reason: str, attempt: int | None = None, only_from: str = "",
             kept: builtins.list | None = None) -> bool:
        return bool(self._scripts["end"](
            keys=[self.job_key(job_id), self.key("queued"), self.key("running"), self.key("init", job_id),
                  self.key("cancel", job_id), self.key("unstored"), self.key("png", job_id)],
            args=[job_id, state, reason, now(), self.prefix, "" if attempt is None else attempt, only_from,
                  *(kept or [])]))

    def _job(self, row: dict) -> Job | None:
        if not row:
            return None
        row = {k.decode(): v for k, v in row.items()}
        text = {k: v.decode() for k, v in row.items() if k not in ("params", "images")}
        params = json.loads(row["params"])
        job = Job(id=text["id"], state=text["state"], client=text["client"], params=params,
                  images=json.loads(row["images"]), error=text.get("error") or None,
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
        reason = f"the worker {worker} stopped (killed or disconnected) while running it"
    else:
        reason = f"the worker {worker} failed: {failure_reason(exc_value)}" if exc_value else f"{worker} failed"
    if rq_job.retries_left and rq_job.retries_left > 0:
        logger.warning("job %s: %s; queued again (%d retries left)", job_id, reason, rq_job.retries_left)
        queue.requeue(job_id, reason)
    else:
        tries = queue.attempts(job_id)
        logger.warning("job %s: %s; failed after %d attempt(s)", job_id, reason, tries)
        queue.fail(job_id, f"{reason}; gave up after {tries} attempt(s)")
