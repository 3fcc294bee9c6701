"""What one image pull may cost: a size cap on every body read and a total deadline.

A registry is untrusted input. Two limits hold whatever it claims or does:

- **Sizes.** :func:`read_bounded` streams a response body and stops after ``limit + 1`` bytes,
  whatever ``Content-Length`` or the descriptor said (a declared length above the limit is
  refused before the first byte is read). Callers check a descriptor's declared size against
  the same limit before they ask for the body at all.
- **Time.** A :class:`PullDeadline` is one pull's total budget across all of its requests
  (token, manifest, index, blob). Each request's timeout is what is left of it (never more than
  the per-request timeout), and when it passes, a timer shuts down every socket the pull has
  opened, so a server that drips one byte at a time -- which a per-read timeout never catches --
  ends the pull at the deadline, whether it drips the headers or the body.

The deadline is found through a context variable (:func:`current`), set on the thread that
runs the pull by :meth:`PullDeadline.active`, because ``requests`` hands connections out deep
inside urllib3: :func:`watch_connections` makes a session's connection pools report every
connection they hand out to the deadline active on the calling thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import requests
import requests.adapters
import urllib3.connectionpool
import urllib3.exceptions

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

MIB: Final = 1024 * 1024
# The OCI distribution spec: registries should accept manifests of at least 4 MiB, and
# containerd refuses larger ones; an index or a config is a manifest-sized JSON document too.
MAX_MANIFEST_BYTES: Final = 4 * MIB
# The default --max-module-size. A wasm module is code plus its data segments: the largest
# real ones (a Python or Ruby interpreter with its standard library, a ML runtime) are tens of
# MiB; 512 MiB leaves an order of magnitude of room and still keeps one hostile image from
# filling a node's disk or holding a pull for long.
DEFAULT_MAX_MODULE_BYTES: Final = 512 * MIB
# The default --image-pull-timeout: the kubelet's --runtime-request-timeout (2m), which bounds
# runtime calls; CRI runtimes cancel a pull that made no progress for 1m.
DEFAULT_PULL_TIMEOUT: Final = 120.0
_CHUNK: Final = 65536


class LimitExceeded(Exception):
    """A pull went over one of its limits; ``cause`` says which, for the pod's status."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def size_text(size: int) -> str:
    """``536870912`` -> ``512Mi (536870912 bytes)``: what a user sets and what was counted."""
    for suffix, power in (("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size >= 1 << power and size % (1 << power) == 0:
            return f"{size >> power}{suffix} ({size} bytes)"
    return f"{size} bytes"


def duration_text(seconds: float) -> str:
    """``120`` -> ``2m0s``, as Go prints a duration (the way kubelet flags are written)."""
    whole = int(seconds)
    minutes, rest = divmod(whole, 60)
    frac = seconds - whole
    secs = f"{rest + frac:g}s" if frac else f"{rest}s"
    return f"{minutes}m{secs}" if minutes else secs


# --- sizes ---------------------------------------------------------------------------------------


def read_bounded(response: requests.Response, limit: int, what: str, setting: str) -> Iterator[bytes]:
    """The body of ``response`` in chunks, never more than ``limit`` bytes of it.

    Raises :class:`LimitExceeded` naming ``what`` and ``setting`` when ``Content-Length`` says
    more than ``limit`` (before reading) or when byte ``limit + 1`` arrives (the read stops
    there). Transport errors pass through, for the caller to word.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise LimitExceeded(
            f"{what} is {size_text(int(declared))} (Content-Length), more than {setting} {size_text(limit)}"
        )
    total = 0
    preloaded = response.iter_content(_CHUNK) if response.raw is None else None  # content in memory
    while True:
        if preloaded is not None:
            chunk = next(preloaded, b"")
        else:
            chunk = response.raw.read(min(_CHUNK, limit + 1 - total), decode_content=True)
        if not chunk:
            _check_current()  # an end that came from the deadline's shutdown is the deadline's
            return
        total += len(chunk)
        if total > limit:
            raise LimitExceeded(
                f"{what} is larger than {setting} {size_text(limit)}; the download was stopped there"
            )
        yield chunk


# --- time ----------------------------------------------------------------------------------------


def _check_current() -> None:
    deadline = current()
    if deadline is not None:
        deadline.check()


_active: contextvars.ContextVar[PullDeadline | None] = contextvars.ContextVar("pull_deadline", default=None)


def current() -> PullDeadline | None:
    """The deadline of the pull running on this thread, if any."""
    return _active.get()


class PullDeadline:
    """A total time budget for one pull; see the module docstring.

    ``setting`` names where the budget comes from (``--image-pull-timeout``), for the message.
    """

    def __init__(
        self,
        seconds: float,
        setting: str = "--image-pull-timeout",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.setting = setting
        self._clock = clock
        self.expires_at = clock() + seconds
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._expired = threading.Event()

    @property
    def expired(self) -> bool:
        return self._expired.is_set() or self._clock() >= self.expires_at

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock())

    def timeout(self, per_request: float) -> float:
        """The timeout for the next request: the per-request one, or less if that is all that is left."""
        return max(0.001, min(per_request, self.remaining()))

    def cause(self) -> str:
        return f"the pull did not finish within {self.setting} {duration_text(self.seconds)}"

    def check(self) -> None:
        if self.expired:
            raise LimitExceeded(self.cause())

    def watch(self, connection: Any) -> None:
        """Shut ``connection`` down when the deadline passes (at once if it has passed)."""
        with self._lock:
            self._connections.add(connection)
        if self._expired.is_set():
            _shut_down(connection)

    def expire(self) -> None:
        """End the pull now: every watched connection is shut down (the timer calls this)."""
        self._expired.set()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _shut_down(connection)

    @contextlib.contextmanager
    def active(self) -> Iterator[PullDeadline]:
        """Make this the current thread's deadline, with a timer that enforces it."""
        timer = threading.Timer(self.remaining(), self.expire)
        timer.name = "pull-deadline"
        timer.daemon = True
        token = _active.set(self)
        timer.start()
        try:
            yield self
        finally:
            timer.cancel()
            _active.reset(token)


def _shut_down(connection: Any) -> None:
    """Shut the socket down under whoever is blocked reading it (TLS included: the raw socket's
    own shutdown, not the TLS close, which must not race the reader)."""
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _watched(super()._get_conn(timeout))


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _watched(super()._get_conn(timeout))


def _watched(connection: BaseHTTPConnection) -> BaseHTTPConnection:
    """``connection``, shut down by the current pull's deadline if there is one."""
    deadline = current()
    if deadline is not None:
        deadline.watch(connection)
    return connection


def watch_connections(session: requests.Session) -> None:
    """Have ``session``'s HTTP(S) adapters report each connection to the current deadline."""
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            adapter.poolmanager.pool_classes_by_scheme = {
                "http": _WatchedHTTPConnectionPool,
                "https": _WatchedHTTPSConnectionPool,
            }


TRANSPORT_ERRORS: Final = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)
"""What reading a body can raise when the connection breaks (or is shut down at the deadline)."""


ERROR_BODY_BYTES: Final = 64 * 1024
"""How much of an error answer is read: enough for a registry's error JSON, never a flood."""


def read_prefix(response: requests.Response, limit: int = ERROR_BODY_BYTES) -> bytes:
    """At most the first ``limit`` bytes of ``response``'s body (the rest is never read)."""
    if response.request is not None and response.request.method == "HEAD":
        return b""
    if response.raw is None or getattr(response, "_content_consumed", False):
        return bytes(response.content or b"")[:limit]
    chunks: list[bytes] = []
    total = 0
    with contextlib.suppress(*TRANSPORT_ERRORS):
        while total < limit:
            chunk = response.raw.read(min(_CHUNK, limit - total), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)
