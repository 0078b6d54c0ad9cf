"""The one loaded model of a worker, and switching it: the part both workers
share (the SQLite backend's thread and the Redis backend's GPU processes).

Each job carries the model selected when it was submitted (``ModelChoice``,
None for the worker's startup model). Before a job the worker asks
``EngineSlot.ensure`` for that model: if another is loaded, it is freed
first (references dropped, ``gc``, ``torch.cuda.empty_cache``), so one model
is in memory at a time. When idle, ``follow`` loads the model selected now.
A model that fails to load fails the jobs that asked for it with the reason
and is not tried again for each of them, until it is selected again or its
files change (a fixed or replaced file, then a refresh of the catalogue).

A job runs inside ``use(choice)``, which holds the slot's lock until the job
ends: the thread that follows the selection (a Redis worker's) cannot unload
the engine under a running job; it skips its turn while the lock is held.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator

from app.jobs.base import FAILED_TO_LOAD, LOADING, READY, ModelChoice, ModelStatus
from app.jobs.runner import free_memory

if TYPE_CHECKING:
    from app.engine.engine import Engine, EngineOptions
    from app.engine.types import Limits

logger = logging.getLogger(__name__)

ModelLoader = Callable[[ModelChoice], "Engine"]


class EngineSlot:
    """``load_startup()`` loads the startup model ``startup``; ``load_model(choice)``
    any other (None: this worker runs one model only); ``on_unload``: called
    after the engine is dropped (to drop what else holds it, e.g. live previews)."""

    def __init__(self, load_startup: Callable[[], "Engine"], startup: ModelChoice | None = None,
                 load_model: ModelLoader | None = None, on_unload: Callable[[], None] | None = None):
        self._load_startup = load_startup
        self._load_model = load_model
        self._on_unload = on_unload
        self.startup = startup
        self.engine: "Engine | None" = None
        self.loaded: ModelChoice | None = None  # what ``engine`` was loaded for (None: the startup model)
        self.loading: ModelChoice | None = None  # set while a model loads
        self.state: str = LOADING
        self.error: str | None = None
        self.failed_choice: ModelChoice | None = None  # the model that failed to load last
        self._failed: dict[ModelChoice | None, tuple[tuple, str]] = {}  # key -> (its files' signature, why)
        self._seen_selection: ModelChoice | None = None
        self._lock = threading.RLock()  # one load at a time (a Redis worker follows from its heartbeat thread)

    def key(self, choice: ModelChoice | None) -> ModelChoice | None:
        """None for the startup model, however it is named."""
        if choice is None or (self.startup and same_choice(choice, self.startup)):
            return None
        return choice

    def ensure(self, choice: ModelChoice | None = None) -> "Engine | None":
        """The engine of ``choice`` (None: the startup model), loaded first if another
        is loaded; None if it failed to load (``error`` says why)."""
        key = self.key(choice)
        with self._lock:
            if self.engine is not None and same_choice(self.loaded, key):
                return self.engine
            failed = self._failed.get(key)
            if failed is not None and failed[0] == self._signature(key):
                self.state, self.error = FAILED_TO_LOAD, failed[1]
                return None
            # Loading before the old engine goes: no status says "ready" with nothing loaded.
            self.loading, self.state, self.error = key or self.startup, LOADING, None
            self.unload()
            try:
                if key is None:
                    engine = self._load_startup()
                elif self._load_model is None:
                    raise RuntimeError(f"this worker runs one model and cannot load {key.model!r}")
                else:
                    engine = self._load_model(key)
            except Exception as exc:  # ModelLoadError, out of memory, a broken file ...
                logger.exception("the model could not be loaded")
                why = str(exc) or type(exc).__name__
                self._failed[key] = (self._signature(key), why)
                self.failed_choice = key or self.startup
                self.state, self.error = FAILED_TO_LOAD, why
                return None
            finally:
                self.loading = None
            self.engine, self.loaded, self.state = engine, key, READY
            return engine

    @contextmanager
    def use(self, choice: ModelChoice | None = None) -> Iterator["Engine | None"]:
        """``ensure(choice)``, holding the lock until the block ends (a job's whole run):
        ``follow`` from another thread cannot unload the engine meanwhile."""
        with self._lock:
            yield self.ensure(choice)

    def _signature(self, key: ModelChoice | None) -> tuple:
        """The size and mtime of a choice's files (None where missing): a failed model
        is tried again once they change."""
        choice = key or self.startup
        if choice is None:
            return ()
        found = []
        for path in (choice.model, choice.vae):
            try:
                stat = os.stat(path) if path else None
            except OSError:
                stat = None
            found.append((stat.st_size, stat.st_mtime_ns) if stat is not None else None)
        return tuple(found)

    def unload(self) -> None:
        """Drop the loaded engine and free its memory (before another is loaded)."""
        with self._lock:
            if self.engine is None:
                return
            logger.info("unloading %s", self.engine.model_name)
            if hasattr(self.engine, "close"):  # its background compile, if any, stops (fakes have none)
                self.engine.close()  # (no bound method kept in a local: it would keep the engine alive)
            self.engine = None
            if self._on_unload is not None:
                self._on_unload()
            free_memory()

    def follow(self, selected: ModelChoice | None) -> None:
        """When idle: load ``selected`` (the selection now) if it is not loaded. A model
        selected again is tried again, even if it failed before."""
        key = self.key(selected)
        if not self._lock.acquire(blocking=False):  # a job runs (or a model loads): not now
            return
        try:
            if key != self._seen_selection:
                self._seen_selection = key
                self._failed.pop(key, None)
            if self.engine is None or not same_choice(self.loaded, key):
                self.ensure(key)
        finally:
            self._lock.release()

    def status(self, fallback: ModelChoice) -> ModelStatus:
        """Loading which model, ready on which, or failed on which (``fallback``: the startup model)."""
        loading, engine = self.loading, self.engine
        if loading is not None:
            return ModelStatus.not_loaded(loading.model, LOADING, None, loading.vae)
        if engine is not None:
            return ModelStatus.of_engine(engine)
        failed = self.failed_choice or self.startup or fallback
        return ModelStatus.not_loaded(failed.model, self.state, self.error, failed.vae)


def same_choice(a: ModelChoice | None, b: ModelChoice | None) -> bool:
    """Whether two choices name the same files, however spelt (a relative path, the
    catalogue's absolute one): the loaded model is not loaded again for another name."""
    from app.models.registry import same_path

    if a is None or b is None:
        return a is b
    return same_path(a.model, b.model) and (a.vae == b.vae or (a.vae is not None and b.vae is not None
                                                                 and same_path(a.vae, b.vae)))


def load_choice(options: "EngineOptions", choice: ModelChoice, limits: "Limits | None" = None) -> "Engine":
    """Load a switched-to model with the other ``options`` of the startup one. A single
    file's config is the diffusers folder beside it, else the one ``options`` names."""
    from app.engine.engine import Engine
    from app.engine.types import DEFAULT_LIMITS
    from app.models.loading import find_single_file_config

    beside = find_single_file_config(choice.model) if os.path.isfile(choice.model) else None
    engine = Engine.load(replace(options, model=choice.model, vae=choice.vae, config=beside or options.config),
                         limits=limits or DEFAULT_LIMITS)
    engine.model_hash, engine.vae_hash = choice.model_hash, choice.vae_hash
    return engine
