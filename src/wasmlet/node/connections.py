"""The kubelet API's connections held to account: a cap, and deadlines until a request is authorized.

A watchdog shuts down a connection that misses its deadline; the deadlines, the cap and what is
closed first are in docs/security.md ("Kubelet API connections").
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 500
HEADER_TIMEOUT = 30.0
IDLE_TIMEOUT = 90.0
REFUSAL_LOG_INTERVAL = 10.0
"""Refused connections are counted and logged at most once per this many seconds."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT  # seconds from accept until a request is authorized
    idle_timeout: float = IDLE_TIMEOUT  # seconds between an answer and the next request's headers

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        if self.header_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError(
                f"timeouts must be positive (header {self.header_timeout}s, idle {self.idle_timeout}s)"
            )


@dataclass
class _Connection:
    peer: str
    opened: float
    deadline: float | None
    authorized: bool = False  # has had an authorized request
    closed_because: str = ""  # why the watchdog shut it down
    failure: str = ""  # why serving it failed


def _shutdown_socket(sock: socket.socket) -> None:
    """End the connection under the thread blocked on it. ``socket.socket.shutdown`` on purpose:
    ``SSLSocket.shutdown`` would drop the TLS object that other thread is using."""
    with contextlib.suppress(OSError):  # the peer is gone already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Connections:
    """Open connections of one server, keyed by their socket, and the watchdog over their deadlines.

    Sockets are shut down only while registered and under the lock, and :meth:`release` is called
    before a socket is closed, so a descriptor number reused by a newer connection is never hit.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[socket.socket, _Connection] = {}
        self._lock = threading.Condition()
        self._wake_at: float | None = None
        self._stopped = False
        self._shut_down = 0  # registered connections already shut down, waiting for their thread
        self._refused = 0
        self._refusal_logged = float("-inf")

    def __len__(self) -> int:
        """Connections that count against the cap: open and not shut down yet."""
        with self._lock:
            return len(self._open) - self._shut_down

    def admit(self, sock: socket.socket, peer: str) -> bool:
        """Count a newly accepted connection in, making room if the cap is reached; False: refuse it."""
        now = time.monotonic()
        with self._lock:
            live = len(self._open) - self._shut_down
            if live >= self.limits.max_connections and not self._evict_one():
                self._note_refusal(now)
                return False
            deadline = now + self.limits.header_timeout
            self._open[sock] = _Connection(peer, now, deadline)
            self._wake_for(deadline)
            return True

    def authorized(self, sock: socket.socket) -> None:
        """An authorized request is being answered: no deadline until the answer is complete."""
        with self._lock:
            conn = self._open.get(sock)
            if conn is not None and not conn.closed_because:
                conn.authorized = True
                conn.deadline = None

    def answered(self, sock: socket.socket) -> None:
        """An answer is complete and the connection is kept alive for another request."""
        with self._lock:
            conn = self._open.get(sock)
            if conn is None or conn.closed_because or not conn.authorized:
                return  # never authorized: the deadline from accept still runs
            conn.deadline = time.monotonic() + self.limits.idle_timeout
            self._wake_for(conn.deadline)

    def closed_because(self, sock: socket.socket) -> str:
        """Why the watchdog closed this connection ("" while it has not)."""
        with self._lock:
            conn = self._open.get(sock)
            return conn.closed_because if conn is not None else ""

    def failed(self, sock: socket.socket, cause: str) -> None:
        """Remember why serving the connection failed, for the one line :meth:`release` logs."""
        with self._lock:
            conn = self._open.get(sock)
            if conn is not None and not conn.failure:
                conn.failure = cause

    def release(self, sock: socket.socket) -> None:
        """Forget a connection that is about to be closed; log one line if it failed or timed out."""
        with self._lock:
            conn = self._open.pop(sock, None)
            if conn is not None and conn.closed_because:
                self._shut_down -= 1
        if conn is None or not (conn.closed_because or conn.failure):
            return
        # The watchdog's reason first: it explains the failure it caused. A connection that has had
        # an authorized request is the apiserver's (or another authorized client's): its idle ends
        # and hang-ups are routine, and logged only at debug level.
        level = logging.DEBUG if conn.authorized else logging.INFO
        log.log(
            level,
            "kubelet API: closed the connection from %s: %s",
            conn.peer,
            conn.closed_because or conn.failure,
        )

    def watch(self) -> None:
        """Shut down connections whose deadline passed, until :meth:`stop`. Runs in its own thread."""
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                next_deadline: float | None = None
                for sock, conn in self._open.items():
                    if conn.deadline is None:
                        continue
                    if conn.deadline <= now:
                        self._shut(sock, conn, self._timed_out(conn))
                    elif next_deadline is None or conn.deadline < next_deadline:
                        next_deadline = conn.deadline
                self._wake_at = next_deadline
                self._lock.wait(None if next_deadline is None else next_deadline - now)
                self._flush_refusals(time.monotonic())

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def _timed_out(self, conn: _Connection) -> str:
        if conn.authorized:
            return f"idle for {self.limits.idle_timeout:g}s after its last request"
        return f"no authorized request within {self.limits.header_timeout:g}s of connecting"

    def _wake_for(self, deadline: float) -> None:
        if self._wake_at is None or deadline < self._wake_at:
            self._wake_at = deadline
            self._lock.notify_all()

    def _evict_one(self) -> bool:
        """Close the oldest connection that has not had an authorized request; False if none has."""
        candidates = [(c.opened, s) for s, c in self._open.items() if not (c.authorized or c.closed_because)]
        if not candidates:
            return False
        _opened, sock = min(candidates, key=lambda item: item[0])
        cause = (
            f"{self.limits.max_connections} connections were open (--max-api-connections) and this one, "
            "the oldest, had not made an authorized request"
        )
        self._shut(sock, self._open[sock], cause)
        return True

    def _shut(self, sock: socket.socket, conn: _Connection, cause: str) -> None:
        """Shut a registered connection down; it stays registered until its thread releases it."""
        conn.closed_because = cause
        conn.deadline = None
        self._shut_down += 1
        _shutdown_socket(sock)

    def _note_refusal(self, now: float) -> None:
        self._refused += 1
        self._flush_refusals(now)

    def _flush_refusals(self, now: float) -> None:
        if self._refused and now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "kubelet API: refused %d connection(s): %d connections are open (--max-api-connections), "
                "all serving authorized requests",
                self._refused,
                self.limits.max_connections,
            )
            self._refused = 0
            self._refusal_logged = now
