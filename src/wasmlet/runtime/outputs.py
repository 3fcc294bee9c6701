"""Module output: WASI stdout and stderr are pipes, and one thread reads them all.

Why pipes and not wasmtime-py's ``stdout_custom``, how reads are coalesced, and the measured
cost per line: docs/runtime.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# A read this large means a busy pipe (a full 64 KiB pipe of short lines holds a little less:
# each 4 KiB page keeps whole writes).
BUSY_READ = CHUNK // 2
QUIET_READ = 4096  # a busy pipe that had less than this in a round goes back to epoll
BUSY_PIPE_SIZE = 1024 * 1024  # the default pipe-max-size: no privilege needed
COALESCE = 0.002  # seconds between the reads of a busy pipe
# How long a finished run waits for the reader to deliver the rest of its output.
DRAIN_TIMEOUT = 5.0


class Pipe:
    """One output stream of one run: wasmtime writes to :attr:`path`, the pump reads."""

    def __init__(self, pump: OutputPump, consumer: Callable[[bytes], None], what: str) -> None:
        self.what = what
        self._pump = pump
        self._consumer = consumer
        self._failed = False
        self.watched = False  # in the pump's epoll set (not while it is read on a timer)
        self.grown = False  # its buffer was made BUSY_PIPE_SIZE
        self.done = threading.Event()  # end-of-file delivered (or abandoned): the reader let go
        self.read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)

    @property
    def path(self) -> str:
        """The write end, for ``WasiConfig.stdout_file``/``stderr_file`` (it opens its own copy)."""
        return f"/proc/self/fd/{self._write_fd}"

    @property
    def write_fd(self) -> int:
        """The write end, for a child process to get as its stdout or stderr (-1 once dropped)."""
        return self._write_fd

    def opened(self) -> None:
        """Drop our write end once wasmtime has its own: its close is then end-of-file."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1

    def finish(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """After the run: wait until everything written was delivered; False if it timed out."""
        self.opened()
        self._pump.ended(self)
        if self.done.wait(timeout):
            return True
        log.warning("%s: output not finished after %.0fs; dropping the rest", self.what, timeout)
        self._pump.abandon(self)
        return False

    def deliver(self, chunk: bytes) -> None:
        try:
            self._consumer(chunk)
        except Exception:
            if not self._failed:
                log.exception("%s: the output consumer failed; output dropped", self.what)
            self._failed = True


class OutputPump:
    """Reads every :class:`Pipe` it made on one daemon thread (started with the first pipe)."""

    def __init__(self, name: str = "wasm output") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pipes: dict[int, Pipe] = {}
        self._abandoned: list[Pipe] = []
        self._ended: list[Pipe] = []  # written to for the last time: read them to the end now
        self._epoll: select.epoll | None = None
        self._wake = -1  # an eventfd: abandon(), ended() and close() wake the reader with it
        self._closed = False

    def pipe(self, consumer: Callable[[bytes], None], what: str) -> Pipe:
        """A new pipe whose output goes to ``consumer`` (called on the reader thread)."""
        pipe = Pipe(self, consumer, what)
        with self._lock:
            if self._closed:
                os.close(pipe.read_fd)
                pipe.opened()
                raise RuntimeError("the output pump is closed")
            if self._epoll is None:
                self._epoll = select.epoll()
                self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._epoll.register(self._wake, select.EPOLLIN)
                threading.Thread(target=self._run, args=(self._epoll,), name=self._name, daemon=True).start()
            self._pipes[pipe.read_fd] = pipe
            self._epoll.register(pipe.read_fd, select.EPOLLIN)
            pipe.watched = True
        return pipe

    def abandon(self, pipe: Pipe) -> None:
        """Stop reading ``pipe`` (the reader closes it)."""
        self._hand_over(self._abandoned, pipe)

    def ended(self, pipe: Pipe) -> None:
        """Nothing more will be written to ``pipe``: read it to its end now, not on the next round."""
        self._hand_over(self._ended, pipe)

    def _hand_over(self, queue: list[Pipe], pipe: Pipe) -> None:
        with self._lock:
            if self._epoll is None or self._closed or pipe.done.is_set():
                return
            queue.append(pipe)
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Stop the reader; pipes still open are closed without their remaining output."""
        with self._lock:
            self._closed = True
            if self._epoll is not None:
                os.eventfd_write(self._wake, 1)

    def _run(self, epoll: select.epoll) -> None:
        busy: set[Pipe] = set()  # taken out of epoll, read every COALESCE seconds
        while True:
            events = epoll.poll(COALESCE if busy else -1)
            with self._lock:
                if self._closed:
                    break
                ready = [self._pipes.get(fd) for fd, _mask in events]
                abandoned, ended = self._abandoned[:], self._ended[:]
                self._abandoned.clear()  # cleared in place: _hand_over appends to these lists
                self._ended.clear()
            if any(fd == self._wake for fd, _mask in events):
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            self._round(epoll, busy, ready, ended)
            for pipe in abandoned:
                busy.discard(pipe)
                self._release(epoll, pipe)
        with self._lock:
            pipes = list(self._pipes.values())
        for pipe in pipes:
            self._release(epoll, pipe)
        epoll.close()
        os.close(self._wake)

    def _round(
        self, epoll: select.epoll, busy: set[Pipe], ready: list[Pipe | None], ended: list[Pipe]
    ) -> None:
        for pipe in ended:  # their output is complete: the run waits for its end-of-file
            while not pipe.done.is_set() and self._drain(epoll, pipe):
                pass
        waited = list(busy)  # read on this round; the pipes woken now wait for the next
        for woken in ready:
            if woken is None or woken in busy:
                continue
            if self._drain(epoll, woken) and not woken.done.is_set():  # more may follow soon
                epoll.unregister(woken.read_fd)
                woken.watched = False
                busy.add(woken)
        for pipe in waited:
            got = 0 if pipe.done.is_set() else self._drain(epoll, pipe)
            if got >= BUSY_READ and not pipe.grown:
                pipe.grown = True
                with contextlib.suppress(OSError):  # over the user's pipe-user-pages: keep 64 KiB
                    fcntl.fcntl(pipe.read_fd, fcntl.F_SETPIPE_SZ, BUSY_PIPE_SIZE)
            if got < QUIET_READ:
                busy.discard(pipe)
                if not pipe.done.is_set():  # quiet again: back to waiting in epoll
                    epoll.register(pipe.read_fd, select.EPOLLIN)
                    pipe.watched = True

    def _drain(self, epoll: select.epoll, pipe: Pipe) -> int:
        """Deliver what ``pipe`` holds now; the bytes read (its end-of-file releases it)."""
        total = 0
        while not pipe.done.is_set():
            try:
                chunk = os.read(pipe.read_fd, CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("%s: cannot read the output: %s", pipe.what, exc)
                chunk = b""
            if not chunk:
                self._release(epoll, pipe)
                break
            pipe.deliver(chunk)
            total += len(chunk)
            if len(chunk) < BUSY_READ:
                break
        return total

    def _release(self, epoll: select.epoll, pipe: Pipe) -> None:
        """On the reader thread only: forget ``pipe`` and close its read end."""
        if pipe.done.is_set():
            return
        with self._lock:
            self._pipes.pop(pipe.read_fd, None)
        if pipe.watched:
            epoll.unregister(pipe.read_fd)
        os.close(pipe.read_fd)
        pipe.done.set()
