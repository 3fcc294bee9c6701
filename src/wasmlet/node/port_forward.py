"""``kubectl port-forward`` on the kubelet API: ``/portForward/{namespace}/{pod}[/{uid}]``.

As the kubelet's streaming server does (k8s.io/cri-streaming's portforward package, behind
pkg/kubelet/server's getPortForward): the request is upgraded to SPDY/3.1 with the protocol
``portforward.k8s.io``; the client opens a pair of streams per forwarded connection, both with
the headers ``port``, ``requestID`` and ``streamType`` (``error`` and ``data``); the node connects
to the pod's IP on that port and copies bytes both ways on the data stream, and a failure is
written on the error stream ("error forwarding port P to pod ..., uid ...: ...") before both
streams are reset. kube-apiserver 1.36 reaches a kubelet this way for kubectl: kubectl's WebSocket
(``SPDY/3.1+portforward.k8s.io``) is turned into this SPDY upgrade by the apiserver's tunneling
handler (pkg/registry/core/pod/rest/subresources.go) unless the Node declares
``ExtendWebSocketsToKubelet`` in ``status.declaredFeatures``, which wasmlet's does not, and a
kubectl that falls back to SPDY is proxied as it is. Only other clients' WebSocket port-forward
(``v4.channel.k8s.io``, with ``?ports=``) is passed on to the node as WebSocket: it is refused.

Only a port a listener of this node process holds on exactly the pod's IP is reached: a pod IP is
an address of the machine, and a host service listening on every address would answer on it too.
(A pod without an IP of its own has the node's, as a host-network pod: then a listener of this
process on the node's IP, such as another such pod's, is reached too.)

One upgraded connection is served by one thread with non-blocking sockets (the TLS connection and
one socket per forwarded connection), and holds at most :class:`Limits` of everything the client
can make it hold: streams, bytes waiting for pods, frames waiting for the client. Past those the
node stops reading from the client (or from the pods) until they drain. spdystream does no flow
control, so this back-pressure is all there is, as in the kubelet.

One file (790 lines) for now: the upgrade, the stream pairs and the copy loop share one
connection's state and caps; splitting the stream multiplexer from the request handling is next.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import ipaddress
import logging
import os
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from wasmlet.node import spdy

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
HEADER_PROTOCOL = "X-Stream-Protocol-Version"
HEADER_ACCEPTED = "X-Accepted-Stream-Protocol-Versions"
# Stream headers, lowercased as on the wire (k8s.io/api's PortHeader, StreamType, PortForwardRequestIDHeader).
PORT = "port"
STREAM_TYPE = "streamtype"
REQUEST_ID = "requestid"
DATA = "data"
ERROR = "error"

READ_SIZE = 64 * 1024  # bytes read from a socket at a time
TLS_RECORD = 16 * 1024  # bytes written to the client at a time (one TLS record)
STOP_POLL = 0.5  # seconds between looks at the server's stop event
CLOSE_FLUSH = 2.0  # seconds given to a last GOAWAY on the way out
CLOSE_FLUSH_BYTES = 64 * 1024  # at most this much is still sent then


@dataclass(frozen=True)
class Limits:
    max_streams: int = 256  # open at once on one connection (two per forwarded connection)
    max_buffered: int = 1 << 20  # bytes from the client not yet written to pods
    max_outgoing: int = 512 << 10  # bytes of frames not yet sent to the client (pods wait past it)
    idle_timeout: float = 4 * 3600.0  # the kubelet's streamingConnectionIdleTimeout
    stream_creation_timeout: float = 30.0  # for a pair's second stream (DefaultStreamCreationTimeout)
    connect_timeout: float = 10.0
    framing: spdy.Limits = field(default_factory=spdy.Limits)

    def __post_init__(self) -> None:
        if min(self.max_streams, self.max_buffered, self.max_outgoing) < 1:
            raise ValueError("port-forward limits must be positive")
        if min(self.idle_timeout, self.stream_creation_timeout, self.connect_timeout) <= 0:
            raise ValueError("port-forward timeouts must be positive")


@runtime_checkable
class PodIPs(Protocol):
    """What the pod controller tells port-forward (:class:`wasmlet.pod.logsource.PodLogSource`)."""

    def pod_ip(self, namespace: str, pod: str) -> tuple[str, str] | None:
        """A pod's uid and IP ("" before it has one), or None when this node does not run it."""
        raise NotImplementedError


Reachable = Callable[[str, int], bool]
"""Whether port-forward may connect to ``ip:port``."""


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from /proc/net/tcp{,6}: 32-bit words, each in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def own_listener(ip: str, port: int, proc: Path = Path("/proc")) -> bool:
    """Whether this process holds a socket listening on exactly ``ip:port`` (a wildcard bind does
    not count): the WAGI listeners of a pod bind its IP, host services bind everything."""
    want = ipaddress.ip_address(ip)
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # TCP_LISTEN
                continue
            host_hex, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and _proc_address(host_hex) == want:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fds = proc / "self" / "fd"
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            if os.readlink(fds / fd) in inodes:
                return True
    return False


# --- the HTTP request ------------------------------------------------------------------------


def _error(
    handler: http.server.BaseHTTPRequestHandler, code: int, message: str, *extra: tuple[str, str]
) -> None:
    """An answer as Go's http.Error writes it."""
    body = (message + "\n").encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("X-Content-Type-Options", "nosniff")
    for name, value in extra:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def _comma_separated(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


class _Refused(Exception):
    """An answer other than 101, as the kubelet gives it."""

    def __init__(self, code: int, message: str, *headers: tuple[str, str]) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers


def _negotiate(
    handler: http.server.BaseHTTPRequestHandler, pods: PodIPs, namespace: str, pod: str, uid: str
) -> str:
    """Check the request as the kubelet does (getPortForward, then httpstream.Handshake and the SPDY
    response upgrader, in their order and words); the pod's uid, or _Refused."""
    if handler.command not in ("GET", "POST"):
        raise _Refused(405, "Method Not Allowed")
    found = pods.pod_ip(namespace, pod)
    if found is None:
        raise _Refused(404, "pod does not exist")
    if uid and found[0] != uid:
        raise _Refused(404, "pod not found")
    headers = handler.headers
    if "websocket" in headers.get("Upgrade", "").lower():
        raise _Refused(
            400,
            "unable to upgrade: wasmlet serves port-forward over SPDY/3.1 only, not WebSocket "
            "(v4.channel.k8s.io); kubectl's WebSocket reaches nodes as SPDY through kube-apiserver",
        )
    offered = headers.get_all(HEADER_PROTOCOL) or []
    if not offered:
        raise _Refused(
            400,
            f"unable to upgrade: header {HEADER_PROTOCOL} does not exist in request "
            f"with {len(headers)} headers",
        )
    protocols = _comma_separated(offered)
    if not protocols:
        raise _Refused(
            400, f"unable to upgrade: header {HEADER_PROTOCOL} contains {offered}, but no valid protocols"
        )
    if PROTOCOL not in protocols:
        raise _Refused(
            403,
            f"unable to upgrade: unable to negotiate protocol: client supports {protocols}, "
            f"server accepts [{PROTOCOL}]",
            (HEADER_ACCEPTED, PROTOCOL),
        )
    connection = headers.get("Connection", "").lower()
    upgrade = headers.get("Upgrade", "").lower()
    if "upgrade" not in connection or "spdy/3.1" not in upgrade:
        raise _Refused(
            400,
            "unable to upgrade: missing upgrade headers in request (wasmlet serves port-forward over "
            f"SPDY/3.1 only): Connection {connection!r}, Upgrade {upgrade!r}",
        )
    return found[0]


def serve(
    handler: http.server.BaseHTTPRequestHandler,
    pods: PodIPs,
    namespace: str,
    pod: str,
    uid: str,
    *,
    stopping: threading.Event,
    limits: Limits | None = None,
    reachable: Reachable = own_listener,
) -> bool:
    """Answer an authorized ``/portForward`` request: an error as the kubelet answers it, or 101
    and the forwarding until the connection ends. True when the connection was upgraded (it is
    not HTTP any more and must be closed)."""
    try:
        pod_uid = _negotiate(handler, pods, namespace, pod, uid)
    except _Refused as refused:
        _error(handler, refused.code, str(refused), *refused.headers)
        return False
    handler.send_response(101)
    handler.send_header(HEADER_PROTOCOL, PROTOCOL)
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Upgrade", "SPDY/3.1")
    handler.end_headers()
    handler.wfile.flush()
    conn = handler.connection
    conn.setblocking(False)  # also for the request's reader: it must not wait for more
    try:  # what the request's reader took in past the headers is the start of the SPDY stream
        early = handler.rfile.read1(READ_SIZE) or b""
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        early = b""
    except OSError:
        return True
    target = Target(pods, namespace, pod, pod_uid)
    Session(conn, target, stopping, limits or Limits(), reachable=reachable, early=early).run()
    return True


# --- the upgraded connection -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The pod forwarded to: looked up again for every forwarded connection."""

    pods: PodIPs
    namespace: str
    name: str
    uid: str

    def ip(self) -> str:
        """The pod's IP; LookupError with why there is none."""
        found = self.pods.pod_ip(self.namespace, self.name)
        if found is None or found[0] != self.uid:
            raise LookupError("pod not found")
        if not found[1]:
            raise LookupError("pod has no IP address yet")
        return found[1]


class _Stream:
    def __init__(self, stream_id: int, kind: str, port: int) -> None:
        self.id = stream_id
        self.kind = kind
        self.port = port
        self.remote_closed = False  # the client sent FIN or RST
        self.local_closed = False  # the node sent FIN or RST
        self.inbound = bytearray()  # the client's bytes for the pod (data streams)
        self.pair: _Pair | None = None


class _Pair:
    """The two streams of one forwarded connection, and the socket to the pod."""

    def __init__(self, request_id: str, deadline: float) -> None:
        self.request_id = request_id
        self.deadline = deadline  # for the second stream to arrive
        self.data: _Stream | None = None
        self.error: _Stream | None = None
        self.sock: socket.socket | None = None
        self.address = ""  # ip:port, for messages
        self.connect_deadline: float | None = None  # while connecting
        self.pod_eof = False
        self.shut_write = False
        self.over = False


def _errno_text(code: int) -> str:
    """An errno as Go's syscall.Errno prints it ("connection refused")."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


class Session:
    """One upgraded connection: SPDY frames from and to the client, sockets to the pod."""

    def __init__(
        self,
        conn: socket.socket,
        target: Target,
        stopping: threading.Event,
        limits: Limits,
        *,
        reachable: Reachable = own_listener,
        early: bytes = b"",
    ) -> None:
        self.conn = conn
        self.target = target
        self.stopping = stopping
        self.limits = limits
        self.reachable = reachable
        self.decoder = spdy.Decoder(limits.framing)
        self.encoder = spdy.Encoder()
        self.out = bytearray()  # encoded frames for the client
        self.sending = b""  # the chunk a non-blocking TLS write must be retried with
        self.streams: dict[int, _Stream] = {}
        self.pending: dict[str, _Pair] = {}  # pairs waiting for their second stream
        self.active: dict[socket.socket, _Pair] = {}
        self.buffered = 0  # bytes in the streams' inbound buffers
        self.last_stream_id = 0
        self.last_activity = time.monotonic()
        self.going_away = False
        self.ended = ""  # why the connection ends
        self.selector = selectors.DefaultSelector()
        self.interest: dict[socket.socket, int] = {}
        self.peer = self._peer()
        self.early = early

    def _peer(self) -> str:
        try:
            peer = self.conn.getpeername()
        except OSError:
            return "?"
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "?")

    # --- the loop

    def run(self) -> None:
        log.debug("port-forward to pod %s/%s from %s", self.target.namespace, self.target.name, self.peer)
        self.conn.setblocking(False)
        try:
            if self.early:
                self._received(self.early)
            while not self.ended:
                self._timers(time.monotonic())
                if self.ended:
                    break
                self._flush()
                self._watch()
                for key, events in self.selector.select(self._wait()):
                    pair: _Pair | None = key.data
                    if pair is None:  # the client's connection
                        if events & selectors.EVENT_READ:
                            self._read_client()
                        if events & selectors.EVENT_WRITE:
                            self._flush()
                    elif pair.sock is not None:  # not closed by an earlier event
                        self._pod_event(pair, pair.sock, events)
                if self._may_read() and self._tls_pending():
                    self._read_client()  # decrypted bytes the selector cannot see
                if self.going_away and not self.streams:
                    self.ended = "the client went away"
        finally:
            self._close()

    def _wait(self) -> float:
        if self._may_read() and self._tls_pending():
            return 0.0
        now = time.monotonic()
        deadlines = [self.last_activity + self.limits.idle_timeout, now + STOP_POLL]
        deadlines += [pair.deadline for pair in self.pending.values()]
        deadlines += [p.connect_deadline for p in self.active.values() if p.connect_deadline is not None]
        return max(0.0, min(deadlines) - now)

    def _timers(self, now: float) -> None:
        if self.stopping.is_set():
            self.ended = "the node is shutting down"
        elif now - self.last_activity >= self.limits.idle_timeout:
            self.ended = f"idle for {self.limits.idle_timeout:g}s"
        if self.ended:  # as spdystream's Close: GOAWAY naming the last stream received
            self._send(spdy.GoAway(self.last_stream_id))
            return
        for pair in [p for p in self.pending.values() if p.deadline <= now]:
            del self.pending[pair.request_id]
            self._abandon(
                pair, f"(conn={self.peer}, request={pair.request_id}) timed out waiting for streams"
            )
        for pair in [
            p for p in self.active.values() if p.connect_deadline is not None and p.connect_deadline <= now
        ]:
            self._fail(pair, f"dial tcp {pair.address}: i/o timeout")

    def _may_read(self) -> bool:
        """Whether to take more from the client: not while its bytes for the pods, or the node's
        frames for it, are over their limits (it is made to wait, as TCP makes it)."""
        return self.buffered < self.limits.max_buffered and len(self.out) < 2 * self.limits.max_outgoing

    def _tls_pending(self) -> int:
        return self.conn.pending() if isinstance(self.conn, ssl.SSLSocket) else 0

    def _want(self, sock: socket.socket, events: int, pair: _Pair | None = None) -> None:
        current = self.interest.get(sock, 0)
        if events == current:
            return
        if not events:
            self.selector.unregister(sock)
            del self.interest[sock]
        elif not current:
            self.selector.register(sock, events, pair)
            self.interest[sock] = events
        else:
            self.selector.modify(sock, events, pair)
            self.interest[sock] = events

    def _watch(self) -> None:
        """What to wait for: from the client while it may send, to it while frames wait; from each
        pod while frames for the client have room, to it while the client's bytes wait."""
        self._want(
            self.conn,
            (selectors.EVENT_READ if self._may_read() else 0)
            | (selectors.EVENT_WRITE if self.out or self.sending else 0),
        )
        room = len(self.out) < self.limits.max_outgoing
        for sock, pair in self.active.items():
            events = 0
            if pair.connect_deadline is not None:
                events = selectors.EVENT_WRITE
            else:
                if room and not pair.pod_eof:
                    events |= selectors.EVENT_READ
                if pair.data is not None and (
                    pair.data.inbound or (pair.data.remote_closed and not pair.shut_write)
                ):
                    events |= selectors.EVENT_WRITE
            self._want(sock, events, pair)

    def _close(self) -> None:
        for pair in list(self.active.values()):
            self._drop_socket(pair)
        self.selector.close()
        if self.ended:
            log.debug("port-forward from %s ended: %s", self.peer, self.ended)
        if len(self.sending) + len(self.out) > CLOSE_FLUSH_BYTES:
            return  # a client this far behind gets no goodbye
        try:  # a last GOAWAY or stream reset, as far as it goes in a moment
            self.conn.settimeout(CLOSE_FLUSH)
            if self.sending:
                self.conn.sendall(self.sending)
            if self.out:
                self.conn.sendall(bytes(self.out))
        except (OSError, ValueError):
            pass

    # --- the client

    def _send(self, frame: spdy.Frame) -> None:
        self.out += self.encoder.encode(frame)

    def _flush(self) -> None:
        while self.out or self.sending:
            if not self.sending:
                self.sending = bytes(self.out[:TLS_RECORD])
                del self.out[:TLS_RECORD]
            try:
                sent = self.conn.send(self.sending)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (OSError, ValueError) as exc:
                self.ended = f"cannot write to the client: {exc}"
                self.out.clear()
                self.sending = b""
                return
            self.sending = self.sending[sent:]
            self.last_activity = time.monotonic()

    def _read_client(self) -> None:
        for _turn in range(4):  # then the pods get a turn
            if not self._may_read() or self.ended:
                return
            try:
                data = self.conn.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (OSError, ValueError) as exc:
                self.ended = f"cannot read from the client: {exc}"
                return
            if not data:
                self.ended = "the client closed the connection"
                return
            self._received(data)

    def _received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.decoder.feed(data)
        try:
            while not self.ended and (frame := self.decoder.next_frame()) is not None:
                self._frame(frame)
        except spdy.ProtocolError as exc:
            log.info("port-forward from %s: SPDY protocol error, closing: %s", self.peer, exc)
            self._send(spdy.GoAway(self.last_stream_id, spdy.GoAwayStatus.PROTOCOL_ERROR))
            self.ended = f"protocol error: {exc}"

    def _frame(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.SynStream):
            self._syn_stream(frame)
        elif isinstance(frame, spdy.Data):
            self._data(frame)
        elif isinstance(frame, spdy.RstStream):
            self._reset_by_client(frame.stream_id)
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2:  # the client's (a reply to one of ours would be even; none are sent)
                self._send(spdy.Ping(frame.ping_id))
        elif isinstance(frame, spdy.GoAway):
            self.going_away = True
        # SYN_REPLY (the node opens no streams), HEADERS, SETTINGS, WINDOW_UPDATE (spdystream does no
        # flow control) and unknown control frames are ignored; their header blocks were inflated.

    def _syn_stream(self, frame: spdy.SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0 or sid <= self.last_stream_id:
            self._send(spdy.RstStream(sid, spdy.RstStatus.PROTOCOL_ERROR))
            return
        self.last_stream_id = sid
        if self.going_away or len(self.streams) >= self.limits.max_streams:
            self._send(spdy.RstStream(sid, spdy.RstStatus.REFUSED_STREAM))
            return
        problem, kind, port = _check_headers(frame.headers)
        if problem:  # spdystream resets a stream its handler refuses
            log.info("port-forward from %s: stream %d rejected: %s", self.peer, sid, problem)
            self._send(spdy.RstStream(sid, spdy.RstStatus.CANCEL))
            return
        stream = _Stream(sid, kind, port)
        stream.remote_closed = bool(frame.flags & spdy.FLAG_FIN)
        self.streams[sid] = stream
        self._send(spdy.SynReply(sid))
        if frame.flags & spdy.FLAG_UNIDIRECTIONAL:  # the node may send nothing on it (spdystream: finished)
            stream.local_closed = True
            self._forget_if_closed(stream)
        request_id = _first(frame.headers, REQUEST_ID)
        if not request_id:  # an old client's: the stream ids of a pair are consecutive
            request_id = str(sid if kind == ERROR else sid - 2)
        pair = self.pending.get(request_id)
        if pair is None:
            pair = _Pair(request_id, time.monotonic() + self.limits.stream_creation_timeout)
            self.pending[request_id] = pair
        if (pair.error if kind == ERROR else pair.data) is not None:
            message = f"error processing stream for request {request_id}: {kind} stream already assigned"
            log.info("port-forward from %s: %s", self.peer, message)
            if pair.error is not None:
                self._write(pair.error, message.encode())
            self._reset(stream)
            return
        stream.pair = pair
        if kind == ERROR:
            pair.error = stream
        else:
            pair.data = stream
        if pair.error is not None and pair.data is not None:
            del self.pending[request_id]
            self._start(pair)

    def _data(self, frame: spdy.Data) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None or stream.remote_closed:
            return  # as spdystream does: data for a stream gone (or never there) is dropped
        pair = stream.pair
        if frame.data and stream.kind == DATA and not stream.local_closed and not (pair and pair.over):
            stream.inbound += frame.data
            self.buffered += len(frame.data)
        # data on an error stream is never read, as the kubelet never reads it
        if frame.flags & spdy.FLAG_FIN:
            stream.remote_closed = True
            self._forget_if_closed(stream)
            if pair is not None and stream is pair.data and pair.sock is not None:
                self._pod_write(pair)  # shuts the pod's side once the bytes before the FIN are in

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_closed = stream.local_closed = True
        self._forget_if_closed(stream)
        pair = stream.pair
        if pair is not None and stream is pair.data:
            if pair.request_id in self.pending:
                del self.pending[pair.request_id]
                self._abandon(pair, "")
            elif not pair.over:
                self._finish(pair)  # the kubelet's copy ends at the reset, and closes both streams

    def _write(self, stream: _Stream, data: bytes) -> None:
        if not stream.local_closed:
            self._send(spdy.Data(stream.id, data))

    def _close_stream(self, stream: _Stream) -> None:
        """FIN: the node sends nothing more on it."""
        if not stream.local_closed:
            self._send(spdy.Data(stream.id, b"", spdy.FLAG_FIN))
            stream.local_closed = True
            self._forget_if_closed(stream)

    def _reset(self, stream: _Stream) -> None:
        if not (stream.local_closed and stream.remote_closed):
            self._send(spdy.RstStream(stream.id, spdy.RstStatus.CANCEL))
        stream.local_closed = stream.remote_closed = True
        self._forget_if_closed(stream)

    def _forget_if_closed(self, stream: _Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)
            self.buffered -= len(stream.inbound)
            stream.inbound.clear()

    # --- a forwarded connection

    def _start(self, pair: _Pair) -> None:
        if pair.data is None:
            return
        port = pair.data.port
        try:
            ip = self.target.ip()
        except LookupError as exc:
            self._fail(pair, str(exc))
            return
        pair.address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        if not self.reachable(ip, port):  # what the client would see in a pod's own network
            self._fail(pair, f"dial tcp {pair.address}: connect: connection refused")
            return
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((ip, port))
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self._fail(pair, f"dial tcp {pair.address}: connect: {_errno_text(code)}")
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.sock = sock
        self.active[sock] = pair
        if code:
            pair.connect_deadline = time.monotonic() + self.limits.connect_timeout
        log.debug("port-forward from %s: request %s to %s", self.peer, pair.request_id, pair.address)

    def _pod_event(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if pair.connect_deadline is not None:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(pair, f"dial tcp {pair.address}: connect: {_errno_text(code)}")
                return
            pair.connect_deadline = None
        if events & selectors.EVENT_WRITE:
            self._pod_write(pair)
        if events & selectors.EVENT_READ and not pair.over:
            self._pod_read(pair)

    def _pod_write(self, pair: _Pair) -> None:
        stream, sock = pair.data, pair.sock
        if stream is None or sock is None or pair.over or pair.connect_deadline is not None:
            return
        while stream.inbound:
            try:
                sent = sock.send(stream.inbound[:READ_SIZE])
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(pair, f"write tcp {pair.address}: {_errno_text(exc.errno or errno.EIO)}")
                return
            del stream.inbound[:sent]
            self.buffered -= sent
        if stream.remote_closed and not pair.shut_write:  # the client's FIN, after its bytes
            pair.shut_write = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    def _pod_read(self, pair: _Pair) -> None:
        sock, stream = pair.sock, pair.data
        if sock is None or stream is None:
            return
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(pair, f"read tcp {pair.address}: {_errno_text(exc.errno or errno.EIO)}")
            return
        if data:
            self._write(stream, data)
            return
        pair.pod_eof = True
        self._finish(pair)  # as the runtime's forwarder returns when the pod's side is done

    def _finish(self, pair: _Pair) -> None:
        """The forwarded connection ended well: both streams closed, as the kubelet's deferred Close."""
        pair.over = True
        self._drop_socket(pair)
        self._discard(pair)
        for stream in (pair.data, pair.error):
            if stream is not None:
                self._close_stream(stream)

    def _fail(self, pair: _Pair, cause: str) -> None:
        """The kubelet's way: the message on the error stream, then both streams reset."""
        pair.over = True
        self._drop_socket(pair)
        self._discard(pair)
        port = pair.data.port if pair.data is not None else 0
        message = (
            f"error forwarding port {port} to pod {self.target.namespace}/{self.target.name}, "
            f"uid {self.target.uid}: {cause}"
        )
        log.info("port-forward from %s: %s", self.peer, message)
        if pair.error is not None:
            self._write(pair.error, message.encode())
        for stream in (pair.data, pair.error):
            if stream is not None:
                self._reset(stream)

    def _abandon(self, pair: _Pair, message: str) -> None:
        """A pair that never got its second stream (or lost its data stream before it did)."""
        pair.over = True
        self._discard(pair)
        if pair.error is not None:
            if message:
                log.info("port-forward from %s: %s", self.peer, message)
                self._write(pair.error, message.encode())
            self._close_stream(pair.error)
        if pair.data is not None:
            self._reset(pair.data)

    def _discard(self, pair: _Pair) -> None:
        """Bytes for a pod that will not read them any more."""
        if pair.data is not None:
            self.buffered -= len(pair.data.inbound)
            pair.data.inbound.clear()

    def _drop_socket(self, pair: _Pair) -> None:
        sock = pair.sock
        if sock is None:
            return
        pair.sock = None
        pair.connect_deadline = None
        self.active.pop(sock, None)
        if sock in self.interest:
            self.selector.unregister(sock)
            del self.interest[sock]
        sock.close()


def _first(headers: spdy.Headers, name: str) -> str:
    values = headers.get(name) or [""]
    return values[0]


def _check_headers(headers: spdy.Headers) -> tuple[str, str, int]:
    """(why the stream is refused, or ""; its type; its port), as httpStreamReceived checks them."""
    port_text = _first(headers, PORT)
    if not port_text:
        return '"port" header is required', "", 0
    digits = port_text.lstrip("0")
    if not (port_text.isascii() and port_text.isdigit()) or len(digits) > 5 or int(digits or "0") > 65535:
        return f'unable to parse "{port_text}" as a port', "", 0
    port = int(digits or "0")
    if port < 1:
        return f'port "{port_text}" must be > 0', "", 0
    kind = _first(headers, STREAM_TYPE)
    if not kind:
        return '"streamType" header is required', "", 0
    if kind not in (DATA, ERROR):
        return f'invalid stream type "{kind}"', "", 0
    return "", kind, port
