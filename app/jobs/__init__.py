"""The job queue: ``Job`` and its states, the ``Backend`` interface the web
layer talks to, its SQLite and Redis implementations, the image store, and
``run_job``, which both kinds of worker use to run a job on an engine."""
from app.jobs.base import Backend, JobStore, ModelStatus
from app.jobs.images import ImageStore
from app.jobs.job import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, STATES, Job, Progress, QueueFull

__all__ = ["Backend", "CANCELLED", "DONE", "FAILED", "FINISHED", "ImageStore", "Job", "JobStore", "ModelStatus",
           "Progress", "QUEUED", "QueueFull", "RUNNING", "STATES"]
