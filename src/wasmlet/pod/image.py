"""Image pulls off the pod workers: a small pool of pull threads, one pull per image at a time.

A pod worker never waits on a registry. It hands a pull to :class:`ImagePuller` and gets a
:class:`PullTicket`; the container stays Waiting (``ContainerCreating``, or its
``ImagePullBackOff`` while a retry runs) and the pod is queued again when the pull ends, as a
kubelet's pod worker shows a pod whose image is being pulled.

- **Bounded**: ``max_parallel`` pulls run at once (kubelet's ``--max-parallel-image-pulls``);
  more wait in order.
- **Shared fairly**: one registry gets at most ``max_parallel - 1`` of them (all of them when
  there is one), so a registry that stalls -- or drips bytes until ``--image-pull-timeout``
  ends each pull -- cannot stop pulls from every other registry.
- **Once per image**: pulls with the same key (image, policy, credentials) asked for while one
  is running share it: every asker is told when it ends and sees the same outcome.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_PARALLEL = 4


class PullTicket(Generic[T]):
    """One pull, running or done; shared by every pod that asked for the same image meanwhile."""

    def __init__(self, key: Hashable, registry: str, job: Callable[[], T]) -> None:
        self.key = key
        self.registry = registry
        self._job = job
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def outcome(self) -> T:
        """The pull's result, or the exception it ended with, raised here. Only once it is done."""
        if not self._done.is_set():
            raise RuntimeError(f"pull {self.key!r} has not finished")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when there is no error

    def _run(self) -> None:
        try:
            self._value = self._job()
        except BaseException as exc:  # handed to every asker through outcome()
            self._error = exc
        self._done.set()


class ImagePuller:
    """The pull pool (see the module docstring). ``close`` lets the threads end."""

    def __init__(self, max_parallel: int = DEFAULT_MAX_PARALLEL) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self.max_parallel = max_parallel
        self.per_registry = max(1, max_parallel - 1)
        self._cond = threading.Condition()
        self._waiting: deque[PullTicket[object]] = deque()
        self._running: dict[Hashable, PullTicket[object]] = {}  # by key: waiting or running
        self._active: dict[str, int] = {}  # registry -> pulls running now
        self._closed = False
        for number in range(max_parallel):
            threading.Thread(target=self._work, name=f"image-pull-{number}", daemon=True).start()

    def pull(
        self, key: Hashable, registry: str, job: Callable[[], T], on_done: Callable[[], None]
    ) -> PullTicket[T]:
        """Run ``job`` on a pull thread, or join the pull of ``key`` already under way.

        ``on_done`` is called (on the pull thread) when the pull ends; ``job`` must not block
        forever (pulls carry their own deadline).
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the image puller is closed")
            ticket = self._running.get(key)
            if ticket is None:
                ticket = PullTicket(key, registry, job)
                self._running[key] = ticket
                self._waiting.append(ticket)
                self._cond.notify_all()
            ticket._callbacks.append(on_done)
            return ticket  # type: ignore[return-value]

    def in_flight(self) -> int:
        with self._cond:
            return len(self._running)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _next(self) -> PullTicket[object] | None:
        """The first waiting pull whose registry has a free share; None once closed."""
        with self._cond:
            while not self._closed:
                for ticket in self._waiting:
                    if self._active.get(ticket.registry, 0) < self.per_registry:
                        self._waiting.remove(ticket)
                        self._active[ticket.registry] = self._active.get(ticket.registry, 0) + 1
                        return ticket
                self._cond.wait()
            return None

    def _work(self) -> None:
        while True:
            ticket = self._next()
            if ticket is None:
                return
            ticket._run()
            with self._cond:
                self._active[ticket.registry] -= 1
                if not self._active[ticket.registry]:
                    del self._active[ticket.registry]
                del self._running[ticket.key]
                callbacks = list(ticket._callbacks)
                self._cond.notify_all()
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("pull %r: a completion callback failed", ticket.key)
