"""A job: one validated request in the queue, its state, progress and images.

A job stores its request as one value, ``GenerationRequest.to_dict()`` (the
init image apart, as PNG bytes), so the list of fields exists only in the
request type.
"""
from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from app.engine.types import GenerationRequest, ValidationError, short_repr

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

# Why a job failed (``Failure.kind``): what the web layer answers depends on it, never on the text.
INVALID = "invalid"  # its input, found only when it ran (a LoRA for another model ...): the caller's to fix
DISK_FULL = "disk_full"  # no room for its images: the server's disk, worth a retry once space is freed
OUT_OF_MEMORY = "out_of_memory"  # the GPU's memory: a smaller size or fewer images may run
MODEL = "model"  # the model it asked for could not be loaded
WORKER_LOST = "worker_lost"  # its worker died, or lost the queue (Redis) for too long
ERROR = "error"  # anything else: a bug or a fault, logged with its traceback
FAILURE_KINDS = (INVALID, DISK_FULL, OUT_OF_MEMORY, MODEL, WORKER_LOST, ERROR)
INVALID_REQUEST = "invalid request: "  # how the reason shown for an INVALID failure starts


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


@dataclass(frozen=True)
class Failure:
    """Why a failed job failed, as data: ``kind`` (one of FAILURE_KINDS), ``message`` (one
    line a user can act on) and, for INVALID, the request ``field`` and its ``value`` as
    shown (``short_repr``, as ``ValidationError.to_dict`` shows it)."""

    kind: str
    message: str
    field: str | None = None
    value: str | None = None

    @property
    def reason(self) -> str:
        """The job's ``error`` line."""
        return INVALID_REQUEST + self.message if self.kind == INVALID else self.message

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "field": self.field, "value": self.value}

    @classmethod
    def of_dict(cls, data: dict | None) -> "Failure | None":
        """A stored failure again; None for none (a record from before failures were kept)."""
        if not data:
            return None
        return cls(str(data["kind"]), str(data["message"]), data.get("field"), data.get("value"))

    @classmethod
    def invalid(cls, exc: ValidationError) -> "Failure":
        return cls(INVALID, str(exc), exc.field, short_repr(exc.value))


@dataclass
class Job:
    id: str
    state: str
    client: str
    params: dict  # GenerationRequest.to_dict(), then the size it ran at
    images: list[dict] = field(default_factory=list)  # {"n", "seed", "infotext"}
    error: str | None = None  # why it failed or was cancelled, one line (a failure's ``reason``)
    failure: Failure | None = None  # why it failed, as data; None unless failed
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    position: int | None = None  # 1 = next to run; None unless queued
    progress: Progress = field(default_factory=Progress)
    has_preview: bool = False
    partial: bool = False  # its images are those of a run stopped early (cancelled, interrupted or skipped)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def generating_first(jobs: Iterable[Job]) -> list[Job]:
    """The running jobs, the last started first, then the others, oldest first. The one rule for "the
    job that is generating": an older job may still be running while its PNGs are written
    (app/jobs/finisher.py) as the next one generates, and with several Redis workers each runs one."""
    jobs = list(jobs)
    # Started in the same millisecond: the later queued (then the order given) is taken to be the newer.
    running = sorted((j for j in jobs if j.state == RUNNING), key=lambda j: (j.started_at or "", j.created_at),
                     reverse=True)
    return running + sorted((j for j in jobs if j.state != RUNNING), key=lambda j: j.created_at)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    return uuid.uuid4().hex


def job_record(request: GenerationRequest) -> tuple[dict, bytes | None]:
    """What a job store keeps of a request: its ``to_dict()``, with a random
    seed drawn now if it has none (so the job knows the seed it ran with), and
    the init image as PNG bytes (None for txt2img). An inpainting mask rides
    in the same PNG as its alpha channel (resized to the init image), so the
    stores keep one image per job."""
    request = request.with_seed()
    if request.init_image is None:
        return request.to_dict(), None
    image = request.init_image
    if request.mask is not None:
        from app.engine.inpaint import binary_mask

        image = image.convert("RGB").copy()
        image.putalpha(binary_mask(request.mask, image.size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return request.to_dict(), buf.getvalue()


def request_of(job: Job, init_png: bytes | None) -> GenerationRequest:
    """The job's request again, from its params and, for img2img, the init PNG
    the store kept."""
    init = mask = None
    if job.params.get("has_init_image"):
        if init_png is None:
            raise ValidationError("init_image", None, "is missing from the job store")
        from PIL import Image

        with Image.open(io.BytesIO(init_png)) as im:
            init = im.convert("RGB")
            if job.params.get("has_mask"):
                mask = im.getchannel("A") if "A" in im.getbands() else None
                if mask is None:
                    raise ValidationError("mask", None, "is missing from the job store")
    return GenerationRequest.from_dict(job.params, init_image=init, mask=mask)
