"""Slots for requests that wait for a job (``?wait`` long-polls, the synchronous
``/sdapi`` calls). Each holds one of the server's worker threads while it waits,
so at most ``WAIT_SLOTS`` wait at once and the rest of the pool
(``SERVER_THREADS - WAIT_SLOTS``) keeps answering pages, health checks and polls.

The slots are shared fairly (issue #22): one client holds at most
``WAIT_SLOTS_PER_CLIENT`` of them (past that: 429), and ``SYNC_WAIT_SLOTS`` of
them are only for the synchronous A1111 calls, which have no "ask again" answer:
clients long-polling, however many, cannot make everyone's ``/sdapi/v1/txt2img`` 503."""
from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from app.web.auth import client_id
from app.web.errors import ApiError
from app.web.services import services

RETRY_AFTER = "1"  # seconds a long-poll that got no slot is told to wait before asking again
SYNC_RETRY_AFTER = "5"  # the same for a synchronous call, refused before its job was queued


class WaitSlots:
    """Counts of the slots in use, in all and per client (thread-safe; never blocks)."""

    def __init__(self, total: int, sync_reserved: int, per_client: int):
        self.total, self.per_client = total, per_client
        self.long_poll_total = max(0, total - sync_reserved)  # what long-polls may take between them
        self._lock = threading.Lock()
        self._used = 0
        self._long_polls = 0
        self._by_client: Counter[str] = Counter()

    def take(self, client: str, sync: bool) -> str | None:
        """None when the slot is taken; else why not: "client" (its share is used) or "busy"."""
        with self._lock:
            if self._by_client[client] >= self.per_client:
                return "client"
            if self._used >= self.total or (not sync and self._long_polls >= self.long_poll_total):
                return "busy"
            self._used += 1
            self._long_polls += not sync
            self._by_client[client] += 1
            return None

    def held(self, client: str) -> int:
        """The slots ``client`` holds now (for tests to know their waits have begun)."""
        with self._lock:
            return self._by_client[client]

    def give(self, client: str, sync: bool) -> None:
        with self._lock:
            self._used -= 1
            self._long_polls -= not sync
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]


def wait_slots_for(config: Any) -> WaitSlots:
    """The app's counter, made with it (``create_app``): made on a first request instead, two
    first requests could each make one, and nothing could look at it before then."""
    return WaitSlots(config["WAIT_SLOTS"], config["SYNC_WAIT_SLOTS"], config["WAIT_SLOTS_PER_CLIENT"])


def _slots() -> WaitSlots:
    return services().wait_slots


@contextmanager
def wait_slot(sync: bool = False, quiet: bool = False) -> Iterator[bool]:
    """``with wait_slot() as waiting:`` True when this request may wait; False
    when every slot it may use is taken (never blocks). 429 with Retry-After when
    the client already holds its ``WAIT_SLOTS_PER_CLIENT``. ``sync``: a synchronous
    /sdapi call, which may also take the ``SYNC_WAIT_SLOTS`` long-polls may not.
    ``quiet``: past the client's share, no 429 either, just no slot (app/web/slow.py)."""
    slots, client = _slots(), client_id()
    refused = slots.take(client, sync)
    if refused == "client" and not quiet:
        field, value = ("wait", client) if not sync else (None, None)
        raise ApiError(429, f"this client already has {slots.per_client} requests waiting for jobs "
                            f"(WAIT_SLOTS_PER_CLIENT = {slots.per_client}); ask again when one has its answer",
                       field, value, headers={"Retry-After": SYNC_RETRY_AFTER if sync else RETRY_AFTER})
    try:
        yield refused is None
    finally:
        if refused is None:
            slots.give(client, sync)
