"""Running one job on an engine: the part both workers share (the thread of
the SQLite backend and the GPU worker processes of the Redis backend).

``run_job`` turns the job's request into image records and PNG bytes;
``job_end`` says how a job that raised ends, with the images of a run that
was stopped early (a user's cancel keeps them, as A1111 keeps an interrupted
image; a skip ends the job done with them). Failures are handled at this one
boundary: the worker catches per job, logs, marks it failed with a reason a
user can read, frees memory and goes on.
"""
from __future__ import annotations

import io
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from app.engine.engine import GenerationCancelled, GenerationOutOfMemory
from app.engine.metadata import png_bytes
from app.engine.previews import preview_grid
from app.engine.types import GenerationRequest, StepInfo, ValidationError
from app.jobs.images import DiskFull
from app.jobs.job import CANCELLED, DONE, FAILED

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


INVALID_REQUEST = "invalid request: "  # how the reason of a job failed for its input starts


def failed_for_input(error: str | None) -> tuple[str, str, str | None] | None:
    """(field, message, value) when a job's failure reason says it failed for its input
    (a ValidationError found while it ran: the caller's to fix, a 400); else None."""
    if error is None or not error.startswith(INVALID_REQUEST):
        return None
    message = error[len(INVALID_REQUEST):]
    value = re.search(r"\(got (.*)\)$", message)
    return message.split(":", 1)[0], message, value.group(1) if value else None


@dataclass(frozen=True)
class JobEnd:
    """How a job that raised ends: ``state`` CANCELLED, FAILED or (a skipped
    run with images) DONE, the reason shown to the user, whether the error
    was unexpected (logged with its traceback; the worker frees memory after
    it), and ``output``: the images of a run stopped early, to be written and
    recorded like a done job's (None when it stopped before its first step,
    or failed)."""

    state: str
    reason: str
    unexpected: bool
    output: JobOutput | None = None


def job_end(job_id: str, exc: BaseException, skipped: bool = False) -> JobEnd:
    """``skipped``: the stop was a skip (``/sdapi/v1/skip``), not a cancel."""
    if isinstance(exc, GenerationCancelled):
        output = None if exc.partial is None else job_output(exc.partial)
        if skipped and output is not None:
            return JobEnd(DONE, f"skipped after step {exc.step} of {exc.total}", False, output)
        verb = "skipped" if skipped else "cancelled"
        return JobEnd(CANCELLED, f"{verb} after step {exc.step} of {exc.total}", False, output)
    if isinstance(exc, ValidationError):  # found when it ran (a LoRA that does not fit the model ...)
        return JobEnd(FAILED, INVALID_REQUEST + str(exc), False)
    if isinstance(exc, DiskFull):
        logger.error("job %s: %s", job_id, exc.strerror)
        return JobEnd(FAILED, exc.strerror or "disk full", False)
    logger.exception("job %s failed", job_id, exc_info=exc)  # out of memory, a timeout ...
    return JobEnd(FAILED, failure_reason(exc), True)


def failure_reason(exc: BaseException) -> str:
    """One line a user can act on, from any exception."""
    name = type(exc).__name__
    if isinstance(exc, GenerationOutOfMemory):  # its message names the size, the images and what to lower
        return str(exc)
    if "OutOfMemory" in name:
        return f"out of GPU memory ({name}); try a smaller size or fewer images"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text[:300]}" if text else name


def free_memory() -> None:
    """After a failed run: a traceback's frames can hold GPU tensors in cycles.
    (After a good job refcounting has freed them, and gc.collect() costs about
    a second, so only then.) The workers run on any GPU, so CUDA's cache is emptied when there is one."""
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
