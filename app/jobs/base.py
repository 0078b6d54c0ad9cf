"""The one interface the web layer talks to: ``Backend``.

A backend is a job store (where jobs wait and their records live), an image
store (the finished PNGs on disk) and whatever runs the jobs (a worker thread
in this process, or GPU worker processes behind Redis). The web layer calls
these methods and never asks which kind it has; ``tests/test_backend_contract.py``
runs the same tests against every implementation.

Implementations: ``app.jobs.sqlite.SQLiteBackend`` (the default: a SQLite
file and one worker thread) and ``app.jobs.redis.RedisBackend`` (jobs in
Redis, run by ``python -m app worker`` processes).
"""
from __future__ import annotations

import builtins
import functools
import inspect
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from app.engine.types import GenerationRequest
from app.jobs import groups
from app.jobs.images import ImageStore
from app.jobs.job import FINISHED, QUEUED, RUNNING, Job, job_record, new_job_id
from app.jobs.retention import GRACE, expired
from app.models.demo import DEMO_MODEL_ID
from app.models.loading import display_name

if TYPE_CHECKING:
    from app.engine.engine import Engine

logger = logging.getLogger(__name__)

LOADING, READY, FAILED_TO_LOAD = "loading", "ready", "failed"
T = TypeVar("T")


class StorageUnavailable(Exception):
    """The job store cannot be reached right now (a locked SQLite file, Redis
    down or restarting). Passing: the web layer answers 503 with Retry-After,
    and the workers retry their writes (``retry_store``)."""


def translate_errors(is_outage: Callable[[BaseException], bool], what: str):
    """Class decorator: the public methods of a store raise StorageUnavailable
    for what ``is_outage`` calls an outage, so no caller needs to know the
    store's own exception types."""
    def wrap(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if is_outage(exc):
                    raise StorageUnavailable(f"{what}: {exc}") from exc
                raise
        return call

    def decorate(cls):
        for name, value in list(vars(cls).items()):
            if inspect.isfunction(value) and not name.startswith("_"):
                setattr(cls, name, wrap(value))
        return cls

    return decorate


def retry_store(call: Callable[[], T], seconds: float = 60, what: str = "store write") -> T:
    """``call()``, tried again with backoff (0.2 s doubling to 5 s) while the
    store is unavailable, for up to ``seconds``; then StorageUnavailable.
    A worker uses it for the writes that must not be lost (claim, progress,
    done, failed): a busy SQLite file or a Redis restart only delays them."""
    deadline, pause = time.monotonic() + seconds, 0.2
    while True:
        try:
            return call()
        except StorageUnavailable as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: %s; trying again in %.1fs", what, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


@dataclass(frozen=True)
class ModelChoice:
    """The model (and VAE) a job runs on, as the loader takes them: a path,
    Hub id or "demo", and a VAE file or folder (None: the model's own).
    A job carries the choice made when it was submitted, so a switch never
    changes the model under a queued or running job."""

    model: str
    vae: str | None = None
    # The files' short hashes (A1111's "Model hash", "VAE hash"), known to the web app's
    # catalogue, which caches them: a worker need not read a 5 GB file to name it. They
    # name the files, they do not choose them: two choices of the same files are equal.
    model_hash: str | None = field(default=None, compare=False)
    vae_hash: str | None = field(default=None, compare=False)

    def to_params(self) -> dict:
        return {"sd_model": self.model, "sd_vae": self.vae, "sd_model_hash": self.model_hash,
                "sd_vae_hash": self.vae_hash}

    @classmethod
    def of_params(cls, params: dict) -> "ModelChoice | None":
        """The choice a job's params carry; None for a job queued with no selection (the worker's own model)."""
        model = params.get("sd_model")
        if not isinstance(model, str) or not model:
            return None
        return cls(model, params.get("sd_vae"), params.get("sd_model_hash"), params.get("sd_vae_hash"))


def submitted_record(request: GenerationRequest, model: ModelChoice | None,
                     group: dict | None) -> tuple[str, dict, bytes | None]:
    """A new job's id, params and init PNG, as both stores keep them: job_record's, with the model chosen at
    submission and the group the job belongs to."""
    params, init_png = job_record(request)
    if model is not None:
        params.update(model.to_params())
    if group is not None:
        params["group"] = group
    return new_job_id(), params, init_png


@dataclass(frozen=True)
class QueueView:
    """The whole queue and one client's jobs as of one read, so every count a page shows agrees."""

    active: list[Job]  # every queued and running job, running first, then queued by position
    mine: list[Job]  # the client's queued and running jobs (as in ``active``) and its newest finished ones

    @property
    def counts(self) -> dict[str, int]:
        running = sum(job.state == RUNNING for job in self.active)
        return {"queued": len(self.active) - running, "running": running}

    @property
    def ahead(self) -> int | None:
        """How many jobs run before the client's next queued one; None: it has none queued."""
        queued = [job.position or 0 for job in self.mine if job.state == QUEUED]
        return self.counts["running"] + min(queued) - 1 if queued else None


@dataclass(frozen=True)
class ModelStatus:
    """The model the backend runs jobs on, as the pages and /api/health show it."""

    name: str  # short display name (metadata, header)
    id: str  # what was asked for: Hub id, path or "demo"
    is_demo: bool
    state: str  # LOADING, READY or FAILED_TO_LOAD
    error: str | None = None  # why it failed (may name paths: for the owner, not strangers)
    native_size: tuple[int, int] | None = None  # known once loaded
    vae: str | None = None  # the VAE file or folder in use (None: the model's own)
    compile: str = "off"  # the UNet's torch.compile: off, compiling (jobs run eager), compiled or failed

    @classmethod
    def not_loaded(cls, model: str, state: str, error: str | None, vae: str | None = None) -> "ModelStatus":
        """What is known of ``model`` (a Hub id, path or "demo") before it is loaded."""
        return cls(display_name(model), model, model == DEMO_MODEL_ID, state, error, vae=vae)

    @classmethod
    def of_engine(cls, engine: "Engine") -> "ModelStatus":
        return cls(engine.model_name, engine.model, engine.is_demo, READY, None, engine.default_size,
                   vae=engine.vae, compile=engine.compile_status)


class JobStore(ABC):
    """Where jobs wait and their records live, seen from the web app."""

    @abstractmethod
    def submit(self, request: GenerationRequest, client: str, model: ModelChoice | None = None,
               group: dict | None = None) -> Job:
        """Queue a validated request (a random seed is drawn now, once) to run
        on ``model`` (None: the worker's own); raise QueueFull over the limits.
        ``group``: kept as the job's ``params["group"]`` (an X/Y/Z plot's cell,
        see ``Backend.submit_group``); a group's jobs after its first (``order`` > 0)
        skip the per-client limit, so that a plot is admitted as a whole."""

    @abstractmethod
    def add_done(self, job_id: str, client: str, params: dict, images: builtins.list[dict]) -> bool:
        """Record a job that ran nowhere (an X/Y/Z plot's grid, drawn from its cells' images,
        written first) as done now; False if ``job_id`` has a record already."""

    @abstractmethod
    def selection(self) -> ModelChoice | None:
        """The model new jobs run on, shared by every web app and worker; None: none chosen (the startup model)."""

    @abstractmethod
    def select(self, choice: ModelChoice | None) -> None:
        """Choose the model for jobs submitted from now on (idle workers load it at once)."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job with its queue position and progress, or None."""

    @abstractmethod
    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None,
             client: str | None = None) -> list[Job]:
        """Newest first; ``before`` pages on from a job id; ``client``: only that client's jobs."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled at once, with no images. Running: the worker stops
        after its current step and the job ends cancelled with the images that
        step decodes to (``partial``; none if it stopped before its first step)."""

    @abstractmethod
    def skip(self, job_id: str) -> Job | None:
        """Running: the worker stops the run after its current step, like a
        cancel, but the job ends done with the images so far (``partial``).
        Anything else: nothing changes. A later cancel overrides a skip."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """{"queued": n, "running": n}"""

    @abstractmethod
    def running(self) -> Job | None:
        """The oldest running job, if any."""

    @abstractmethod
    def preview(self, job_id: str) -> bytes | None:
        """The latest live preview PNG of a running (or just finished) job."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record; False (and nothing removed) if it is
        queued, running or unknown."""

    def queue_view(self, client: str, limit: int = 10, most: int = 1000) -> QueueView:
        """The queue (at most ``most`` jobs) and ``client``'s jobs: all its unfinished ones and its
        ``limit`` newest finished ones. The queue is read once and wins: a job that changed
        between the two reads shows as the queue read has it, and one queued since waits for
        the next view, so a position, a count and a job's state never disagree."""
        active = self.list(limit=most, states=(QUEUED, RUNNING))
        active.sort(key=lambda job: (job.state != RUNNING, job.position or 0, job.created_at))
        live = {job.id for job in active}
        finished = [job for job in self.list(limit=limit + len(live), client=client)
                    if job.finished and job.id not in live][:limit]
        return QueueView(active, [job for job in active if job.client == client] + finished)

    def finished_jobs(self) -> builtins.list[Job]:
        """Every finished job, newest first (retention walks them)."""
        found: builtins.list[Job] = []
        before = None
        while True:
            page = self.list(limit=200, before=before, states=FINISHED)
            found.extend(page)
            if len(page) < 200:
                return found
            before = page[-1].id

    def _must_get(self, job_id: str) -> Job:
        """A job this store has just written."""
        job = self.get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished from the store")
        return job

    def wait_for_change(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early when a job may have changed."""
        time.sleep(min(timeout, 0.2))

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is finished or ``timeout`` seconds pass; the job as it is then."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.finished or time.monotonic() >= deadline:
                return job
            self.wait_for_change(min(0.5, max(0.0, deadline - time.monotonic())))


class Backend(ABC):
    """Jobs, their images and the model that runs them. The client-side calls
    go to ``store`` and ``images``; each implementation says how jobs run."""

    store: JobStore
    images: ImageStore

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, client: str, model: ModelChoice | None = None,
               group: dict | None = None) -> Job:
        """Queue ``request`` on ``model`` (a per-job override), else on the model selected now;
        ``group``: see ``JobStore.submit``."""
        return self.store.submit(request, client, model or self.store.selection(), group=group)

    # --- groups (an X/Y/Z plot: app/jobs/groups.py) ----------------------------------------

    def submit_group(self, cells: builtins.list[tuple[GenerationRequest, ModelChoice | None]], client: str,
                     info: dict) -> tuple[str, builtins.list[Job]]:
        return groups.submit_group(self, cells, client, info)

    def group_jobs(self, group_id: str, client: str | None = None) -> builtins.list[Job]:
        return groups.group_jobs(self.store, group_id, client)

    def cancel_group(self, group_id: str, client: str | None = None) -> builtins.list[Job]:
        """Cancel the group's unfinished jobs; the jobs cancelled."""
        return groups.cancel_group(self.store, group_id, client)

    def collect_group(self, group_id: str, client: str | None = None) -> Job | None:
        """The group's grid job, drawn now if its cells have all finished; None while they run
        (or when none made an image)."""
        return groups.collect_group(self, group_id, client)

    # --- the model ------------------------------------------------------------------------

    model: str  # the startup model (a path, Hub id or "demo")
    vae: str | None = None  # the startup VAE

    def selection(self) -> ModelChoice:
        """The model new jobs run on: the last one selected, else the startup model."""
        return self.store.selection() or ModelChoice(self.model, self.vae)

    def pending_switch(self, status: ModelStatus) -> ModelChoice | None:
        """The model selected by a switch while another is loaded (the switch is under
        way), else None: also when none was selected, or when the selected one failed."""
        chosen = self.store.selection()
        if chosen is None or status.state == FAILED_TO_LOAD or (status.id, status.vae) == (chosen.model, chosen.vae):
            return None
        return chosen

    def select(self, choice: ModelChoice) -> None:
        """Switch: jobs submitted from now on run on ``choice``; queued and running ones keep theirs."""
        startup = ModelChoice(self.model, self.vae)
        self.store.select(None if (choice.model, choice.vae) == (startup.model, startup.vae) else choice)

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def list(self, limit: int = 50, before: str | None = None, states: tuple[str, ...] | None = None,
             client: str | None = None) -> list[Job]:
        return self.store.list(limit=limit, before=before, states=states, client=client)

    def cancel(self, job_id: str) -> Job | None:
        return self.store.cancel(job_id)

    def skip(self, job_id: str) -> Job | None:
        return self.store.skip(job_id)

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def queue_view(self, client: str, limit: int = 10) -> QueueView:
        return self.store.queue_view(client, limit)

    def running(self) -> Job | None:
        return self.store.running()

    def wait(self, job_id: str, timeout: float) -> Job | None:
        return self.store.wait(job_id, timeout)

    def preview(self, job_id: str) -> bytes | None:
        return self.store.preview(job_id)

    def delete(self, job_id: str) -> bool:
        """Delete a finished job and its images; False if it is not finished
        (cancel it first) or unknown. The record goes first: a crash between
        the two leaves unlinked files, never a gallery entry without its image."""
        if not self.store.delete(job_id):
            return False
        self.images.remove(job_id)
        return True

    def prune(self, keep_images: int = 0, keep_days: float = 0, at: datetime | None = None,
              grace: timedelta | None = None) -> builtins.list[str]:
        """Apply retention (as of ``at``, default now); returns the ids deleted
        (see ``app.jobs.retention``; ``grace`` defaults to ``keep_grace``)."""
        grace = self.keep_grace if grace is None else grace
        deleted = [job.id for job in expired(self.store.finished_jobs(), keep_images, keep_days, at, grace)
                   if self.delete(job.id)]
        if deleted:
            logger.info("retention: deleted %d old job(s) and their images", len(deleted))
        return deleted

    keep_images: int = 0  # retention settings, applied by ``apply_retention``
    keep_days: float = 0
    keep_grace: timedelta = GRACE  # how long a fresh result is safe from retention

    def apply_retention(self) -> builtins.list[str]:
        if not (self.keep_images or self.keep_days):
            return []
        return self.prune(self.keep_images, self.keep_days)

    def warnings(self) -> builtins.list[str]:
        """What an operator should know about this backend's setup (/api/health)."""
        return []

    # --- images ---------------------------------------------------------------------------

    def image_path(self, job_id: str, name: str) -> Path | None:
        """The file of ``/images/<job_id>/<name>``, or None (also for names that are not ours)."""
        return self.images.path(job_id, name)

    def read_image(self, job_id: str, n: int) -> bytes | None:
        path = self.image_path(job_id, f"{n}.png")
        return None if path is None else path.read_bytes()

    # --- what runs the jobs ---------------------------------------------------------------

    @abstractmethod
    def status(self) -> ModelStatus:
        """The model's state: loading, ready or failed."""

    @abstractmethod
    def start(self) -> None:
        """Start running jobs (load the model, or watch the workers)."""

    @abstractmethod
    def stop(self, timeout: float = 30) -> None:
        """Stop; a running job goes back to the queue."""
