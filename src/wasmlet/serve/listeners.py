"""The node's HTTP listeners on its pods' addresses: one event loop thread serves them all (an
idle listener is a socket and a few objects, no thread), and handlers run on a small pool.

What one pod can take is capped per listener: connections open at once, requests handled at once
(the rest wait their turn on the loop), header and body sizes, and how long a connection may sit
idle or take to send a request. HTTP/1.1 is parsed by h11.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import h11

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: path and query
    headers: list[tuple[str, str]]  # names lowercased, in order
    body: bytes
    client: tuple[str, int]
    server: tuple[str, int]


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class ListenerLimits:
    max_connections: int = 256  # open at once; more are closed as soon as accepted
    max_in_flight: int = 8  # requests handled at once
    max_body_bytes: int = 8 * 2**20  # a larger request body is answered 413
    idle_timeout: float = 30.0  # seconds a kept-alive connection may wait for its next request
    request_timeout: float = 30.0  # seconds to receive one whole request


class Listener:
    """One listening socket of a pod; :meth:`close` stops it and closes its connections."""

    def __init__(
        self, servers: HttpServers, sock: socket.socket, handler: Handler, limits: ListenerLimits
    ) -> None:
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._servers = servers
        self._sock = sock
        self._handler = handler
        self._limits = limits
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._busy: set[asyncio.StreamWriter] = set()  # handling a request: closed once answered
        self._closing = False
        self._in_flight = asyncio.Semaphore(limits.max_in_flight)  # bound to the loop at first use

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, sock=self._sock)

    def close(self) -> None:
        """Stop listening and close every connection (requests being handled finish first)."""
        self._servers.run(self._close())

    async def _close(self) -> None:
        self._closing = True
        if self._server is not None and self._server.is_serving():
            # Accept no more, then let connections already accepted get their transports: one
            # accepted but not yet attached when the server closes is dropped by asyncio unclosed
            # (it hangs its client until the garbage collector gets to it).
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            await asyncio.sleep(0)
            self._server.close()
        for writer in list(self._writers - self._busy):
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing or len(self._writers) >= self._limits.max_connections:
            writer.close()
            return
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("listener %s:%d: connection failed", *self.address)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        client = writer.get_extra_info("peername")[:2]
        while True:
            try:
                deadline = await self._request_begun(conn, reader)
                head = await self._next(conn, reader, deadline)
                if not isinstance(head, h11.Request):
                    return  # closed, or a connection that never sent a request
                body = await self._body(conn, reader, deadline)
            except h11.RemoteProtocolError as exc:
                await self._send(conn, writer, Response(exc.error_status_hint, body=b"bad request\n"))
                return
            if body is None:
                await self._send(conn, writer, Response(413, body=b"request body too large\n"))
                return
            request = Request(
                head.method.decode("ascii"),
                head.target.decode("latin-1"),
                [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers],
                body,
                client,
                self.address,
            )
            self._busy.add(writer)
            try:
                async with self._in_flight:
                    response = await asyncio.get_running_loop().run_in_executor(
                        self._servers.pool, self._handle, request
                    )
                await self._send(conn, writer, response, head_only=request.method == "HEAD")
            finally:
                self._busy.discard(writer)
            if self._closing or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    def _handle(self, request: Request) -> Response:
        try:
            return self._handler(request)
        except Exception:
            log.exception("listener %s:%d: handler failed", *self.address)
            return Response(500, body=b"internal error\n")

    async def _request_begun(self, conn: h11.Connection, reader: asyncio.StreamReader) -> float:
        """Wait up to ``idle_timeout`` for the next request's first bytes; then the whole request
        must arrive by the deadline returned (``request_timeout``), however slowly it trickles."""
        received, closed = conn.trailing_data  # pipelined behind the last request
        if not received and not closed:
            conn.receive_data(await asyncio.wait_for(reader.read(65536), self._limits.idle_timeout))
        return asyncio.get_running_loop().time() + self._limits.request_timeout

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader, deadline: float) -> object:
        # One wait_for per read, never one around this loop: on Python 3.11 an outer wait_for's
        # cancellation is lost when it lands as an inner read completes, and the loop goes on.
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError
            conn.receive_data(await asyncio.wait_for(reader.read(65536), left))

    async def _body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, deadline: float
    ) -> bytes | None:
        body = bytearray()
        while True:
            event = await self._next(conn, reader, deadline)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._limits.max_body_bytes:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise h11.RemoteProtocolError("connection closed mid-request")

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, head_only: bool = False
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # IDLE: a request too bad to parse
            return
        headers = [
            (k, v) for k, v in response.headers if k.lower() not in {"content-length", "transfer-encoding"}
        ]
        headers.append(("content-length", str(len(response.body))))
        out = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.body and not head_only:  # a HEAD response says the length, sends no body
            out += conn.send(h11.Data(data=response.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()


class HttpServers:
    """The node's listeners and the thread of their event loop; handlers run on ``workers`` threads."""

    def __init__(self, workers: int = 8) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="http-handler")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-listeners", daemon=True)
        self._thread.start()

    def listen(self, address: str, port: int, handler: Handler, limits: ListenerLimits) -> Listener:
        """A listener on ``address:port``; OSError (the port is taken, say) before anything listens."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = Listener(self, sock, handler, limits)
        self.run(listener._start())
        return listener

    def run(self, coroutine: object) -> None:
        """Run ``coroutine`` on the loop and wait for it (not from the loop's own thread)."""
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)
