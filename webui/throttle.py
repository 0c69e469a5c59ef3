"""The guessing limit for the admin password and the setup code.

Each attempt is counted as a failure *before* the slow check (scrypt, ~50 ms) runs, under a lock, and
forgiven if it succeeds: parallel requests cannot all pass the check-then-record gap. Limits:
- per client address: MAX_FAILURES within FAILURE_WINDOW_S locks that address out for the window;
- for everyone: MAX_GLOBAL_FAILURES within the window (many addresses, e.g. a LAN host spoofing sources);
- memory: at most MAX_TRACKED_ADDRESSES addresses are remembered, the least recently failing forgotten first.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from dataclasses import dataclass

MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
MAX_GLOBAL_FAILURES = 30
MAX_TRACKED_ADDRESSES = 1024


@dataclass(frozen=True)
class Attempt:
    """A counted attempt; pass it to `Throttle.succeeded` if the password or code was right."""
    client: str
    time: float


class Throttle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Address -> failure times (oldest first); the dict's order is least recently failing first.
        self._by_client: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._all: collections.deque[float] = collections.deque()

    def _expire_locked(self, now: float) -> None:
        while self._all and now - self._all[0] > FAILURE_WINDOW_S:
            self._all.popleft()
        while self._by_client:
            client, times = next(iter(self._by_client.items()))
            if times and now - times[-1] <= FAILURE_WINDOW_S:
                break
            del self._by_client[client]  # its newest failure is out of the window: nothing left to count

    def attempt(self, client: str, now: float) -> Attempt | None:
        """Counts an attempt from `client` as a failure, or None if it is locked out (nothing counted)."""
        with self._lock:
            self._expire_locked(now)
            times = self._by_client.get(client)
            if times is not None:
                while times and now - times[0] > FAILURE_WINDOW_S:
                    times.popleft()
                if len(times) >= MAX_FAILURES:
                    return None
            if len(self._all) >= MAX_GLOBAL_FAILURES:
                return None
            if times is None:
                while len(self._by_client) >= MAX_TRACKED_ADDRESSES:
                    self._by_client.popitem(last=False)
                times = self._by_client[client] = collections.deque()
            times.append(now)
            self._by_client.move_to_end(client)
            self._all.append(now)
            return Attempt(client, now)

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt was right: the address starts afresh and the attempt no longer counts for anyone."""
        with self._lock:
            self._by_client.pop(attempt.client, None)
            with contextlib.suppress(ValueError):  # already out of the window
                self._all.remove(attempt.time)

    def tracked(self) -> int:
        with self._lock:
            return len(self._by_client)

    def clear(self) -> None:
        with self._lock:
            self._by_client.clear()
            self._all.clear()
