"""Slow reads off the request threads (issue #22): folder scans (checkpoints,
VAEs, LoRAs, embeddings, on a Drive mount seconds each) and LoRA hashing run in
the app's own small pool of ``SLOW_THREADS`` threads. A request that wants one
asks for it (the same read asked twice while it is pending is done once), then
waits for it at most ``SLOW_WAIT`` seconds, and only while it holds a wait slot
(app/web/waiting.py): 40 requests for a slow scan hold at most the wait slots,
so the other server threads keep answering pages and health checks. Past the
wait the request answers from what is known (the last listing, hashes null)."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from app.web.services import services
from app.web.waiting import wait_slot

SLOW_THREADS = 2
SLOW_WAIT = 10.0  # seconds a request waits for a slow read before answering from what is known


class SlowWork:
    """A pool whose reads are kept by name: ``ask`` while one is pending returns that one."""

    def __init__(self, threads: int = SLOW_THREADS):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="t2i-slow")
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}
        self.results: dict[str, Any] = {}  # the last result of each read: what is known

    def ask(self, name: str, read: Callable[[], Any]) -> Future:
        with self._lock:
            future = self._pending.get(name)
            if future is None or future.done():
                future = self._pool.submit(self._run, name, read)
                self._pending[name] = future
            return future

    def _run(self, name: str, read: Callable[[], Any]) -> Any:
        result = read()
        self.results[name] = result
        return result

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def slow_work() -> SlowWork:
    return services().slow


def read_slowly(name: str, read: Callable[[], Any], default: Any = None) -> Any:
    """``read()``'s result when it is done within SLOW_WAIT in a wait slot; else the
    last one known (``default`` before the first). A failed read raises here, as it would
    have on the request thread."""
    work = slow_work()
    future = work.ask(name, read)
    with wait_slot(quiet=True) as waiting:  # a long-poll's kind: /sdapi's reserved slots stay free
        if waiting:
            try:
                return future.result(SLOW_WAIT)
            except FutureTimeout:
                pass
    if future.done():
        return future.result()
    return work.results.get(name, default)
