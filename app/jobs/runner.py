"""Running one job on an engine: the part both workers share (the thread of
the SQLite backend and the GPU worker processes of the Redis backend).

``run_job`` turns the job's request into image records and PNG bytes;
``job_end`` says how a job that raised ends, with the images of a run that
was stopped early (a user's cancel keeps them, as A1111 keeps an interrupted
image; a skip ends the job done with them), and ``end_job`` ends it: both
workers end every job through it. Failures are handled at this one boundary:
the worker catches per job, and ``end_job`` logs, marks it failed with its
cause as data (``Failure``: a kind, and a reason a user can read), frees
memory and goes on.
"""
from __future__ import annotations

import io
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from app.engine.engine import GenerationCancelled, GenerationOutOfMemory
from app.engine.metadata import png_bytes
from app.engine.previews import preview_grid
from app.engine.types import GenerationRequest, StepInfo, ValidationError
from app.jobs.images import DiskFull
from app.jobs.job import (
    CANCELLED,
    DISK_FULL,
    DONE,
    ERROR,
    FAILED,
    OUT_OF_MEMORY,
    QUEUED,
    Failure,
)

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from app.engine.engine import Engine
    from app.engine.types import GenerationResult

logger = logging.getLogger(__name__)

EngineLoader = Callable[[], "Engine"]


@dataclass(frozen=True)
class JobOutput:
    """A finished run: one record per image (``n``, ``seed``, ``infotext``),
    the PNGs with their metadata (then those of its ControlNet maps, numbered
    on after the images), and the size it ran at."""

    images: list[dict]
    pngs: list[bytes]
    width: int
    height: int
    seconds: float
    control_maps: int = 0  # how many of ``pngs`` after the images are ControlNet maps

    @property
    def params_update(self) -> dict:
        """What the job's params learn from the run: the size (None meant "the model's"), and how
        many ControlNet maps follow its images (what /sdapi appends to them, as the extension does)."""
        update: dict = {"width": self.width, "height": self.height}
        if self.control_maps:
            update["control_maps"] = self.control_maps
        return update


def run_job(engine: "Engine", request: GenerationRequest, on_step: Callable[[StepInfo], None],
            cancel: threading.Event) -> JobOutput:
    """Generate the job's images; raises GenerationCancelled, ValidationError
    or whatever the engine raised (see ``job_end``)."""
    return job_output(engine.generate(request, on_step=on_step, cancel=cancel))


def job_output(result: "GenerationResult", encoders: "Executor | None" = None) -> JobOutput:
    """The records and PNGs (with their infotext) of a run's result, finished or partial;
    ``encoders``: a pool that encodes the PNGs side by side (``app.jobs.finisher``)."""
    made = list(zip(result.images, result.seeds, result.infotexts))
    images = [{"n": n, "seed": seed, "infotext": text} for n, (_, seed, text) in enumerate(made)]
    encode = encoders.map if encoders is not None else map
    pngs = list(encode(png_bytes, [image for image, _, _ in made] + list(result.control_maps),
                       [text for _, _, text in made] + [None] * len(result.control_maps)))
    return JobOutput(images, pngs, result.width, result.height, result.seconds, len(result.control_maps))


class JobRecord(Protocol):
    """How one worker writes a job's end into its store (each write retried as that worker
    retries its store). ``end_job`` decides which, and when."""

    def save_partial(self, output: JobOutput) -> bool:
        """Keep the images of a run stopped early, like a done job's (all or nothing); False
        when they cannot be (the job then ends without them)."""

    def done(self, output: JobOutput, partial: bool) -> bool:
        """Done with its images; False when the job was no longer this worker's (dropped)."""

    def cancelled(self, reason: str, output: JobOutput | None) -> None:
        """Cancelled, with the images of the run so far if it made any."""

    def failed(self, failure: Failure) -> None: ...

    def requeued(self, note: str, counted: bool) -> str:
        """Back in the queue, with a note why (``counted``: a Redis outage, allowed once);
        returns the state the job is in after it: QUEUED, or FAILED when handed back too often."""


DROPPED = "dropped"  # an end with nothing to write: the job was handed to another worker meanwhile


@dataclass(frozen=True)
class JobEnd:
    """How a job ends: ``state`` DONE, CANCELLED, FAILED, QUEUED (handed back to the queue) or
    DROPPED; ``reason``: the line shown for a cancel (or a hand-back's note); ``output``: the
    run's images (a finished run's, or those of a run stopped early; None when it stopped
    before its first step, or failed); ``failure``: why it failed; ``error``: the exception
    it raised, logged with its traceback when it was unexpected (``unexpected``)."""

    state: str
    reason: str | None = None
    output: JobOutput | None = None
    failure: Failure | None = None
    error: BaseException | None = None
    unexpected: bool = False
    partial: bool = False  # ``output`` is a run stopped early
    counted: bool = False  # a hand-back after a Redis outage (allowed once per job)

    @classmethod
    def finished(cls, output: JobOutput) -> "JobEnd":
        return cls(DONE, output=output)

    @classmethod
    def failed(cls, failure: Failure) -> "JobEnd":
        """A job that fails before it runs (its model could not be loaded, no room for its images ...)."""
        return cls(FAILED, failure=failure)

    @classmethod
    def handed_back(cls, note: str, counted: bool = False) -> "JobEnd":
        return cls(QUEUED, reason=note, counted=counted)

    @property
    def ended_well(self) -> bool:
        """A run that finished: nothing raised mid-run, so refcounting has freed its tensors."""
        return self.state == DONE and not self.partial


def job_end(exc: BaseException, skipped: bool = False) -> JobEnd:
    """How a job whose run raised ``exc`` ends. ``skipped``: the stop was a skip
    (``/sdapi/v1/skip``), not a cancel."""
    if isinstance(exc, GenerationCancelled):
        output = None if exc.partial is None else job_output(exc.partial)
        if skipped and output is not None:
            return JobEnd(DONE, f"skipped after step {exc.step} of {exc.total}", output, partial=True)
        verb = "skipped" if skipped else "cancelled"
        return JobEnd(CANCELLED, f"{verb} after step {exc.step} of {exc.total}", output, partial=True)
    return JobEnd(FAILED, failure=failure_of(exc), error=exc, unexpected=not isinstance(exc, (ValidationError, DiskFull)))


def failure_of(exc: BaseException) -> Failure:
    """The failure a run's exception is: a ValidationError found when it ran (a LoRA that does
    not fit the model ...) is the request's, with its field and value; then a full disk, out of
    memory, or else an error, each in one line a user can act on."""
    if isinstance(exc, ValidationError):
        return Failure.invalid(exc)
    if isinstance(exc, DiskFull):
        return Failure(DISK_FULL, exc.strerror or "disk full")
    name = type(exc).__name__
    if isinstance(exc, GenerationOutOfMemory):  # its message names the size, the images and what to lower
        return Failure(OUT_OF_MEMORY, str(exc))
    if "OutOfMemory" in name:
        return Failure(OUT_OF_MEMORY, f"out of GPU memory ({name}); try a smaller size or fewer images")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Failure(ERROR, f"{name}: {text[:300]}" if text else name)


def failure_reason(exc: BaseException) -> str:
    """One line a user can act on, from any exception."""
    return failure_of(exc).message


def end_job(job_id: str, end: JobEnd, record: JobRecord) -> str:
    """The one way both workers end a job: write ``end`` through ``record``, log it, and free
    GPU memory after every end but a finished run (a cancel, a skip, a failure, a hand-back:
    the frames of what it raised can hold GPU tensors in cycles; after a finished run
    refcounting has freed them, and gc.collect() costs about a second). Returns the state the
    job ended in (or DROPPED)."""
    try:
        return _write_end(job_id, end, record)
    finally:
        if not end.ended_well:
            free_memory()


def _write_end(job_id: str, end: JobEnd, record: JobRecord) -> str:
    if end.state == DONE and not end.partial:
        assert end.output is not None
        if not record.done(end.output, partial=False):
            logger.warning("job %s was cancelled or handed to another worker; its result is dropped", job_id)
            return DROPPED
        logger.info("job %s done in %.1fs", job_id, end.output.seconds)
        return DONE
    if end.state in (DONE, CANCELLED):
        kept = end.output if end.output is not None and record.save_partial(end.output) else None
        if end.state == DONE and kept is not None:  # skipped: done with the images so far
            if not record.done(kept, partial=True):
                logger.warning("job %s was handed to another worker; its images are dropped", job_id)
                return DROPPED
            logger.info("job %s %s: done with %d image(s)", job_id, end.reason, len(kept.images))
            return DONE
        record.cancelled(end.reason or CANCELLED, kept)
        logger.info("job %s %s%s", job_id, end.reason, f", keeping {len(kept.images)} image(s)" if kept else "")
        return CANCELLED
    if end.state == FAILED:
        assert end.failure is not None
        if end.unexpected:
            logger.error("job %s failed", job_id, exc_info=end.error)
        else:
            logger.warning("job %s failed (%s): %s", job_id, end.failure.kind, end.failure.reason)
        record.failed(end.failure)
        return FAILED
    if end.state == QUEUED:
        logger.warning("job %s: %s", job_id, end.reason)
        return record.requeued(end.reason or "", end.counted)
    logger.warning("job %s is no longer this worker's; stopped", job_id)
    return DROPPED


def free_memory() -> None:
    """Collect garbage and empty CUDA's cache (when there is one: the workers run on any GPU);
    ``end_job`` says when it is worth its second."""
    from app.models.devices import free_memory as give_back

    give_back("cuda")


# --- live previews ------------------------------------------------------------------------

def preview_due(info: StepInfo, every: int) -> bool:
    """A live preview every ``every`` steps and at the last one (0: never)."""
    return bool(every) and (info.step % every == 0 or info.step == info.total)


class LivePreview:
    """The live preview of one step, encoded only when someone asks for it:
    one PNG showing every image of the batch (``preview_grid``).

    Encoding a PNG every step (2-11 ms, in the worker thread, holding the
    interpreter lock) slowed every image by several percent, while a browser
    looks at one preview every half second. So the worker keeps a copy of
    the step's latents (a clone on their device: no copy to the host, no
    sync) and ``png()`` makes the image on the first request, in the
    requesting thread, and keeps it for later ones."""

    def __init__(self, engine: "Engine", latents: Any):
        self._engine = engine
        self._latents = latents.detach().clone()
        self._png: bytes | None = None
        self._lock = threading.Lock()

    def png(self) -> bytes | None:
        """PNG bytes, or None if the preview failed (never worth failing anything)."""
        with self._lock:
            if self._png is None and self._latents is not None:
                try:
                    buf = io.BytesIO()
                    preview_grid(self._engine.preview(self._latents)).save(buf, format="PNG")
                    self._png = buf.getvalue()
                except Exception:
                    logger.exception("preview failed")
                self._latents = None  # encoded (or failed): the tensor is not needed any more
            return self._png


def live_preview(engine: "Engine", info: StepInfo, every: int) -> LivePreview | None:
    """The step's preview, unencoded, when one is due (see ``preview_due``)."""
    # An Extras job reports its operations with no latents: nothing to preview.
    return LivePreview(engine, info.latents) if info.latents is not None and preview_due(info, every) else None


def preview_png(engine: "Engine", info: StepInfo, every: int) -> bytes | None:
    """The live preview of step ``info`` as PNG bytes, encoded now, when one is
    due; None when it is not due or fails. For a worker in another process
    (the Redis backend), which must ship bytes."""
    preview = live_preview(engine, info, every)
    return None if preview is None else preview.png()


class ShippedPreviews:
    """The live previews a worker in another process (the Redis backend) ships
    as PNG bytes: it must encode one to send it (2-11 ms holding the interpreter
    lock, more at large sizes), while a browser looks about every half second.
    So at most one every ``seconds`` of the due ones (``preview_due``), and
    always the last step's (what a job shows once done); ``start`` at each job
    (its first due step ships one)."""

    def __init__(self, every: int, seconds: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.every, self.seconds, self._clock = every, seconds, clock
        self._at = -math.inf

    def start(self) -> None:
        self._at = -math.inf

    def png(self, engine: "Engine", info: StepInfo) -> bytes | None:
        """None: none this step (the one shipped last stays)."""
        if info.step != info.total and self._clock() - self._at < self.seconds:
            return None
        png = preview_png(engine, info, self.every)
        if png is not None:
            self._at = self._clock()
        return png
