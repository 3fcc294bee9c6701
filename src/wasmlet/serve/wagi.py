"""A container served as WAGI: Running while its listeners are open; each request runs a fresh
instance of the container's module, in-process, with the request as CGI (:mod:`.cgi`).

An instance starts in well under a millisecond from the precompiled module, so nothing is kept
between requests: a request cannot see another's memory, and an idle handler costs a socket. Each
instance has the container's memory limit, CPU limit and mounts; it may run ``timeout`` seconds
(then it is stopped and the client gets 504); what it writes on stderr goes to the container's
log; its stdout is the response, at most ``max_response_bytes``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from wasmlet.held_dir import HeldDir
from wasmlet.runtime.engine import EXIT_KILLED, Execution, ExitStatus, RunSpec
from wasmlet.serve import cgi
from wasmlet.serve.listeners import HttpServers, Listener, ListenerLimits, Request, Response

log = logging.getLogger(__name__)

Preopen = tuple[HeldDir, str, bool]  # a mount, held open while the container serves

DEFAULT_PORT = 3000  # Krustlet's wagi provider served on 3000 when the pod named no port
TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 16 * 2**20
END_WAIT = 10.0  # seconds a stopping container waits for its stopped requests to return


class Caller(Protocol):
    """Runs one instance to its end on the calling thread (:meth:`wasmlet.runtime.engine.Runtime.call`)."""

    def call(self, spec: RunSpec, watch: Callable[[Execution], None] | None = None) -> ExitStatus: ...


@dataclass(frozen=True)
class WagiOptions:
    timeout: float = TIMEOUT
    max_response_bytes: int = MAX_RESPONSE_BYTES
    limits: ListenerLimits = field(default_factory=ListenerLimits)


class _Deadlines:
    """Stops instances that run past their deadline; one thread for the node, asleep when idle."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Execution]] = []
        self._order = itertools.count()  # ties broken by arrival, never by comparing executions
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, execution: Execution, seconds: float) -> None:
        with self._wake:
            entry = (time.monotonic() + seconds, next(self._order), execution)
            earliest = not self._heap or entry < self._heap[0]
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wagi-deadlines", daemon=True)
                self._thread.start()
            if earliest:  # otherwise the thread wakes before this deadline anyway: no switch per request
                self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].running):
                    _at, _key, execution = heapq.heappop(self._heap)
                    if execution.running:
                        execution.stop(0)
                self._wake.wait(min(self._heap[0][0] - now, 1.0) if self._heap else None)


class WagiServing:
    """The node's WAGI handlers: what the container starter hands a WAGI container to."""

    def __init__(self, runtime: Caller, servers: HttpServers, options: WagiOptions = WagiOptions()) -> None:
        self.runtime = runtime
        self.servers = servers
        self.options = options
        self.deadlines = _Deadlines()

    def serve(
        self,
        template: RunSpec,
        route: cgi.Route,
        addresses: Sequence[tuple[str, int]],
        preopens: Sequence[Preopen],
        on_exit: Callable[[ExitStatus], None],
    ) -> WagiContainer:
        """Serve ``template``'s module on ``addresses``; its mounts stay open until it stops, and
        each request's instance opens them again through ``/proc/self/fd``."""
        by_fd = [(Path(held.proc_path), guest, read_only) for held, guest, read_only in preopens]
        container = WagiContainer(self, replace(template, preopens=by_fd), route, preopens, on_exit)
        container.open(addresses)
        return container


class WagiContainer:
    """The running container (a :class:`wasmlet.pod.run.RunningModule`)."""

    memory_base: int | None = None  # no instance lives between requests

    def __init__(
        self,
        serving: WagiServing,
        template: RunSpec,
        route: cgi.Route,
        preopens: Sequence[Preopen],
        on_exit: Callable[[ExitStatus], None],
    ) -> None:
        self._serving = serving
        self._template = template
        self._route = route
        self._preopens = preopens
        self._on_exit = on_exit
        self._listeners: list[Listener] = []
        self._started = datetime.now(UTC)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a request ends
        self._in_flight: set[Execution] = set()
        self._active = 0  # requests inside handle()
        self._stopping = False
        self._ended = False  # no request may start any more: the mounts are about to close

    def open(self, addresses: Sequence[tuple[str, int]]) -> None:
        """Listen on each address; if one cannot be had, the container ends at once with why."""
        options = self._serving.options
        for host, port in addresses:
            try:
                self._listeners.append(self._serving.servers.listen(host, port, self.handle, options.limits))
            except OSError as exc:
                with self._lock:
                    self._stopping = True  # ended here: a stop() later must not end it again
                self._end(
                    ExitStatus(
                        1,
                        "Error",
                        f"cannot listen on {host}:{port}: {exc.strerror}",
                        self._started,
                        datetime.now(UTC),
                    )
                )
                return
        log.info("%s: serving WAGI route %s on %s", self._template.name, self._route.pattern, addresses)

    def stop(self, grace: float) -> None:
        """Stop listening; requests being handled get ``grace`` seconds, then their instances stop."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        for listener in self._listeners:
            listener.close()
        threading.Thread(
            target=self._drain, args=(grace,), name=f"{self._template.name}: stop", daemon=True
        ).start()

    def _drain(self, grace: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, grace)
            left = list(self._in_flight)
        for execution in left:
            execution.stop(0)
        now = datetime.now(UTC)
        self._end(
            ExitStatus(
                EXIT_KILLED, "Killed", "killed: requests outlived the grace period", self._started, now
            )
            if left
            else ExitStatus(0, "Completed", "", self._started, now)
        )

    def _end(self, status: ExitStatus) -> None:
        for listener in self._listeners:
            listener.close()
        with self._idle:
            self._ended = True  # from here handle() answers 503
            late = list(self._in_flight)  # begun after the grace period's count
        for execution in late:
            execution.stop(0)
        with self._idle:
            # A request that started still has the mounts' descriptors in its instance's
            # preopens: close them only once none runs (a number closed early could be reused
            # by another pod's directory). Stopped instances end within milliseconds.
            if not self._idle.wait_for(lambda: self._active == 0, END_WAIT):
                log.error(
                    "%s: requests still running after %ss; their mounts stay open",
                    self._template.name,
                    END_WAIT,
                )
                self._on_exit(status)
                return
        for held, _guest, _read_only in self._preopens:
            held.close()
        self._on_exit(status)

    def handle(self, request: Request) -> Response:
        with self._lock:
            if self._ended:
                return Response(503, [("content-type", "text/plain")], b"the handler is stopping\n")
            self._active += 1
        try:
            return self._handle(request)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _handle(self, request: Request) -> Response:
        path = request.target.partition("?")[0]
        if not self._route.matches(path):
            return Response(404, [("content-type", "text/plain")], b"not found\n")
        options = self._serving.options
        out = bytearray()
        over: list[int] = []  # once a write is refused, every later one is: no response with a hole

        def stdout(data: bytes) -> None:
            if over or len(out) + len(data) > options.max_response_bytes:
                over.append(len(data))
                raise OSError("response too large")  # the module's write fails (EIO)
            out.extend(data)

        spec = replace(
            self._template,
            env=cgi.environment(request, self._route, self._template.env),
            stdin=request.body,
            stdout=stdout,
            inline_output=True,
        )
        started: list[Execution] = []

        def watch(execution: Execution) -> None:
            started.append(execution)
            with self._lock:
                self._in_flight.add(execution)
            self._serving.deadlines.add(execution, options.timeout)

        try:
            status = self._serving.runtime.call(spec, watch=watch)
        finally:
            with self._lock:
                self._in_flight.difference_update(started)
        if status.reason == "Killed":
            return Response(504, [("content-type", "text/plain")], b"the handler ran out of time\n")
        if over:  # never serve what fit (a cut body), even if the module went on as if written
            limit = options.max_response_bytes
            self._template.stderr(
                f"wasmlet: request {request.method} {path}: the response is over {limit} bytes\n".encode()
            )
            return Response(
                500,
                [("content-type", "text/plain")],
                f"the handler's response is over {limit} bytes\n".encode(),
            )
        if status.exit_code != 0:
            self._template.stderr(
                f"wasmlet: request {request.method} {path}: {status.reason} {status.message}\n".encode()
            )
            return Response(500, [("content-type", "text/plain")], b"the handler failed\n")
        return cgi.response(bytes(out))
