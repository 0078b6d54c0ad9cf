"""Ending finished runs off the thread that generates.

Encoding a finished run's PNGs with their metadata and writing them took the
worker thread 50-300 ms per image (more at 768 px and above) while the GPU
sat idle: the next queued job waited for it. A ``Finisher`` takes that work
(encode, store, record the job done) on a thread of its own, in the order the
runs were handed over, so the worker takes its next job at once. A job is
still ``running`` until its PNGs are stored, then ``done`` (or ``failed``
when they cannot be: the same rules as before, only later).

The PNGs of one run are encoded in a small pool: PIL's zlib encoder releases
the interpreter lock, so the images of a batch encode side by side, and
beside the generating thread.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

logger = logging.getLogger(__name__)

FINISHING = "finishing"  # a worker's end state for a finished run handed to its finisher


def png_encoders(name: str = "t2i", workers: int = 2) -> Executor:
    """A pool that encodes a run's PNGs side by side (``runner.job_output``)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-png")


class Finisher:
    """``backlog``: how many finished runs may wait for their end (their
    images are held in memory meanwhile); handing over one more waits."""

    def __init__(self, name: str = "t2i-finish", backlog: int = 2, encoders: int = 2):
        self._ends = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)  # one: ends stay in order
        self.encoders = png_encoders(name, encoders)
        self._room = threading.BoundedSemaphore(backlog)
        self._pending = 0
        self._idle = threading.Condition()

    def submit(self, end: Callable[[], None], holds_run: bool = True) -> None:
        """Run ``end`` after those handed over before it. Its errors are logged,
        never raised: ``end`` records its own failures. ``holds_run``: it holds
        a run's images (counted in the backlog; upkeep after a job is not)."""
        if holds_run:
            self._room.acquire()
        with self._idle:
            self._pending += 1
        try:
            self._ends.submit(self._run, end, holds_run)
        except BaseException:  # shut down already: nothing will run it, so nothing may wait for it
            if holds_run:
                self._room.release()
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            raise

    def _run(self, end: Callable[[], None], holds_run: bool) -> None:
        try:
            end()
        except Exception:
            logger.exception("ending a finished job failed")
        finally:
            if holds_run:
                self._room.release()
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every run handed over has ended; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)
