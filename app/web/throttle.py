"""Backoff for wrong passwords, per client address and over all clients.

Only failures are counted and only wrong passwords are refused: the caller
checks the password first, so the right one always gets in, from any
address and during a global throttle (no lockout an attacker can cause).
After ``free`` failures a client must wait ``base * 2**k`` seconds (at most
``cap``) before its next wrong guess is answered 401 rather than 429; each
guess inside the wait still counts, so ignoring Retry-After only makes the
wait longer. The same rule over all clients' failures slows a guesser that
spreads over many addresses.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Failures:
    count: int
    last: float


class FailureThrottle:
    MAX_CLIENTS = 50_000  # beyond this the oldest entries go: memory stays bounded whatever the address space

    def __init__(self, free: int = 5, global_free: int = 50, base: float = 1.0, cap: float = 900.0,
                 window: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.free, self.global_free, self.base, self.cap, self.window = free, global_free, base, cap, window
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Failures] = {}
        self._recent: deque[float] = deque(maxlen=global_free + 32)  # more would only hit the cap

    def _delay(self, count: int, free: int) -> float:
        return 0.0 if count < free else min(self.cap, self.base * 2 ** min(count - free, 32))

    def _global_count(self, now: float) -> int:
        while self._recent and now - self._recent[0] >= self.window:
            self._recent.popleft()
        return len(self._recent)

    def retry_after(self, who: str) -> float:
        """Seconds before a wrong password from ``who`` is answered 401 again (0: now)."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            mine = self._clients.get(who)
            if mine is not None:
                wait = mine.last + self._delay(mine.count, self.free) - now
            if self._recent:
                wait = max(wait, self._recent[-1] + self._delay(self._global_count(now), self.global_free) - now)
            return max(0.0, wait)

    def failed(self, who: str) -> None:
        with self._lock:
            now = self.clock()
            # The table is ordered by last failure (each failure moves its client to the end), so
            # forgetting clients whose backoff and window are over looks only at the oldest few:
            # a failure costs O(1) however many addresses guess (a scan of the whole table cost
            # 58 ms at 100,000 addresses, under the lock).
            mine = self._clients.pop(who, None) or _Failures(0, now)
            mine.count, mine.last = mine.count + 1, now
            self._clients[who] = mine
            while self._clients:
                oldest = next(iter(self._clients))
                f = self._clients[oldest]
                over = now - f.last >= max(self.window, self._delay(f.count, self.free))
                if not over and len(self._clients) <= self.MAX_CLIENTS:
                    break
                del self._clients[oldest]
            self._recent.append(now)

    def succeeded(self, who: str) -> None:
        with self._lock:
            self._clients.pop(who, None)

    def __len__(self) -> int:
        return len(self._clients)
