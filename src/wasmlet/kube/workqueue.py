"""A keyed work queue with delayed adds, as client-go's: a key is processed by one worker at a
time; adding a key while it is processed marks it dirty so it runs once more afterwards. A key
waits on at most one timer, the earliest asked for (client-go's delaying queue does the same),
so callers may ask for a later look on every pass without timers piling up.
Idle, it costs nothing: workers and the timer thread block on conditions.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._timers: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # the one live timer of each waiting key
        self._seq = itertools.count()
        self._closed = False
        self._timer = threading.Thread(target=self._run_timers, name="workqueue-timer", daemon=True)
        self._timer.start()

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify_all()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        with self._cond:
            if self._due.get(key, due + 1) <= due:
                return  # already due sooner
            self._due[key] = due
            heapq.heappush(self._timers, (due, next(self._seq), key))
            self._cond.notify_all()

    def get(self) -> str | None:
        """The next key (None once closed). Call :meth:`done` when finished with it."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            key = self._queue.popleft()
            self._queued.discard(key)
            self._processing.add(key)
            return key

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run_timers(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._timers:
                    self._cond.wait()
                    continue
                due, _seq, key = self._timers[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._timers)
                if self._due.get(key) == due:  # not superseded by an earlier timer
                    del self._due[key]
                    self._add_locked(key)
