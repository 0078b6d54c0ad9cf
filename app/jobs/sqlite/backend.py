"""The default backend: jobs in a SQLite file, run by one worker thread on
this process's GPU."""
from __future__ import annotations

from pathlib import Path

from app.jobs import groups
from app.jobs.base import Backend, ModelChoice, ModelStatus
from app.jobs.engines import ModelLoader
from app.jobs.images import ImageStore
from app.jobs.runner import EngineLoader
from app.jobs.sqlite.store import SQLiteJobStore
from app.jobs.sqlite.worker import Worker


class SQLiteBackend(Backend):
    """Retention (``keep_images``, ``keep_days``) runs after each finished job;
    ``min_free_mb`` and ``busy_timeout``: see ``Worker`` and ``SQLiteJobStore``."""

    def __init__(self, database: str | Path, image_root: str | Path, load_engine: EngineLoader, *, model: str,
                 max_queue: int = 100, max_per_client: int = 5, preview_every: int = 1, keep_images: int = 0,
                 keep_days: float = 0, min_free_mb: int = 0, busy_timeout: float = 5,
                 load_model: ModelLoader | None = None, vae: str | None = None):
        self.model, self.vae = model, vae  # the startup model, for the status shown while it loads
        self.store = SQLiteJobStore(database, max_queue=max_queue, max_per_client=max_per_client,
                                    busy_timeout=busy_timeout)
        self.images = ImageStore(image_root)
        self.keep_images, self.keep_days = keep_images, keep_days
        self.worker = Worker(self.store, load_engine, self.images, preview_every=preview_every,
                             min_free_mb=min_free_mb, after_job=self._after_job, load_model=load_model,
                             startup=ModelChoice(model, vae))
        # A (re)started server runs its startup model until told otherwise; jobs still queued keep theirs.
        self.store.select(None)

    def _after_job(self) -> None:
        """Upkeep after each job: retention, and the grid of a plot whose last cell just ended."""
        self.apply_retention()
        groups.collect_recent(self)

    def status(self) -> ModelStatus:
        return self.worker.slot.status(ModelChoice(self.model, self.vae))

    def start(self) -> None:
        if not self.worker.is_alive():
            self.worker.start()

    def stop(self, timeout: float = 30) -> None:
        self.worker.stop(timeout)
