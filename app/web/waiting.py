"""Slots for requests that wait for a job (``?wait`` long-polls, the synchronous
``/sdapi`` calls). Each holds one of the server's worker threads while it waits,
so at most ``WAIT_SLOTS`` wait at once and the rest of the pool
(``SERVER_THREADS - WAIT_SLOTS``) keeps answering pages, health checks and polls."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from flask import current_app

EXTENSION = "t2i_wait_slots"
RETRY_AFTER = "1"  # seconds a long-poll that got no slot is told to wait before asking again


@contextmanager
def wait_slot() -> Iterator[bool]:
    """``with wait_slot() as waiting:`` True when this request may wait; False
    when every slot is taken (never blocks)."""
    slots = current_app.extensions.get(EXTENSION)
    if slots is None:  # setdefault: two first requests at once still share one semaphore
        slots = current_app.extensions.setdefault(EXTENSION, threading.BoundedSemaphore(current_app.config["WAIT_SLOTS"]))
    got = slots.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            slots.release()
