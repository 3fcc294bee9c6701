"""The node's HTTP listeners (wasmlet.serve.listeners) on real loopback sockets.

Limits are small here (bytes, connections, fractions of a second) instead of the defaults.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wasmlet.serve.listeners import MAX_HEADER_BYTES, HttpServers, Listener, ListenerLimits, Request, Response

WAIT = 5.0  # seconds a test waits for the server to do what it must


class Recorder:
    """A handler that records each request and answers with ``answer``."""

    def __init__(self, answer: Response | None = None) -> None:
        self.requests: list[Request] = []
        self.answer = answer or Response(200, [("content-type", "text/plain")], b"ok\n")

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return self.answer


Listen = Callable[..., Listener]


@pytest.fixture
def servers() -> Iterator[HttpServers]:
    made = HttpServers(workers=4)
    yield made
    made.close()


@pytest.fixture
def listen(servers: HttpServers) -> Iterator[Listen]:
    """Listen on 127.0.0.1 (a free port unless one is given); every listener is closed after the test."""
    opened: list[Listener] = []

    def open_one(handler: Callable[[Request], Response], port: int = 0, **limits: Any) -> Listener:
        listener = servers.listen("127.0.0.1", port, handler, ListenerLimits(**limits))
        opened.append(listener)
        return listener

    yield open_one
    for listener in opened:
        listener.close()


def client(listener: Listener) -> http.client.HTTPConnection:
    host, port = listener.address
    return http.client.HTTPConnection(host, port, timeout=WAIT)


def raw(listener: Listener) -> socket.socket:
    return socket.create_connection(listener.address, timeout=WAIT)


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_the_listener_is_on_the_address_asked_for(listen: Listen) -> None:
    listener = listen(Recorder())
    host, port = listener.address
    assert host == "127.0.0.1"
    assert port > 0


def test_a_handler_gets_the_whole_request_and_its_response_is_sent(listen: Listen) -> None:
    handler = Recorder(Response(201, [("content-type", "text/plain"), ("x-reply", "yes")], b"made\n"))
    listener = listen(handler)
    conn = client(listener)
    conn.request("POST", "/things/a%20b?x=1&y", body=b"hello", headers={"X-Custom": "Value"})
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (201, b"made\n")
    assert reply.getheader("x-reply") == "yes"
    assert reply.getheader("content-type") == "text/plain"
    assert reply.getheader("content-length") == "5"
    local_port = conn.sock.getsockname()[1]
    conn.close()

    [request] = handler.requests
    assert request.method == "POST"
    assert request.target == "/things/a%20b?x=1&y"
    assert request.body == b"hello"
    assert request.client == ("127.0.0.1", local_port)
    assert request.server == listener.address
    assert ("x-custom", "Value") in request.headers  # names lowercased, values as sent
    assert ("content-length", "5") in request.headers
    assert ("host", f"127.0.0.1:{listener.address[1]}") in request.headers
    assert all(name == name.lower() for name, _value in request.headers)


def test_the_length_of_the_body_is_the_servers_whatever_the_handler_says(listen: Listen) -> None:
    answer = Response(200, [("Content-Length", "999"), ("Transfer-Encoding", "chunked")], b"four")
    conn = client(listen(Recorder(answer)))
    conn.request("GET", "/")
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (200, b"four")
    assert reply.getheader("content-length") == "4"
    assert reply.getheader("transfer-encoding") is None


def test_a_chunked_request_body_is_given_whole(listen: Listen) -> None:
    handler = Recorder()
    conn = client(listen(handler))
    conn.request("PUT", "/", body=iter([b"abc", b"defg"]), encode_chunked=True)
    assert conn.getresponse().status == 200
    assert handler.requests[0].body == b"abcdefg"


def test_keep_alive_serves_two_requests_on_one_connection(listen: Listen) -> None:
    handler = Recorder()
    conn = client(listen(handler))
    conn.request("GET", "/one")
    first = conn.getresponse()
    assert (first.status, first.read()) == (200, b"ok\n")
    sock = conn.sock
    conn.request("POST", "/two", body=b"second")
    second = conn.getresponse()
    assert (second.status, second.read()) == (200, b"ok\n")
    assert conn.sock is sock  # http.client did not reconnect
    conn.close()
    assert [(r.method, r.target, r.body) for r in handler.requests] == [
        ("GET", "/one", b""),
        ("POST", "/two", b"second"),
    ]
    assert handler.requests[0].client == handler.requests[1].client


def test_a_body_over_the_limit_gets_413_and_the_handler_is_not_called(listen: Listen) -> None:
    handler = Recorder()
    listener = listen(handler, max_body_bytes=10)
    conn = client(listener)
    conn.request("POST", "/", body=b"x" * 10)  # at the limit: taken
    assert conn.getresponse().read() == b"ok\n"
    conn.close()
    sock = raw(listener)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"y" * 11)
    answer = read_all(sock)  # and the connection is closed
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"\r\n\r\nrequest body too large\n")
    assert [r.body for r in handler.requests] == [b"x" * 10]


def test_head_gets_the_headers_and_length_but_no_body(listen: Listen) -> None:
    handler = Recorder(Response(200, [("content-type", "text/plain")], b"hello world"))
    listener = listen(handler)
    sock = raw(listener)
    sock.sendall(
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = read_all(sock)
    sock.close()
    head_reply, sep, rest = answer.partition(b"\r\n\r\n")
    assert sep
    assert head_reply.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 11" in head_reply.lower()
    # no body after the HEAD response: the next bytes are the GET's answer
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b"\r\n\r\nhello world")
    assert [(r.method, r.target) for r in handler.requests] == [("HEAD", "/h"), ("GET", "/g")]


def test_head_with_http_client(listen: Listen) -> None:
    conn = client(listen(Recorder(Response(200, [("content-type", "text/plain")], b"hello world"))))
    conn.request("HEAD", "/")
    reply = conn.getresponse()
    assert reply.getheader("content-length") == "11"
    assert reply.read() == b""


def test_a_handler_that_raises_gives_500_and_the_connection_goes_on(
    listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def handler(request: Request) -> Response:
        calls.append(request.target)
        if request.target == "/boom":
            raise RuntimeError("kaboom")
        return Response(200, body=b"fine")

    conn = client(listen(handler))
    with caplog.at_level(logging.ERROR, logger="wasmlet.serve.listeners"):
        conn.request("GET", "/boom")
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (500, b"internal error\n")
    conn.request("GET", "/ok")
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (200, b"fine")
    assert calls == ["/boom", "/ok"]
    assert any("handler failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_malformed_request_gets_400_and_the_handler_is_not_called(listen: Listen) -> None:
    handler = Recorder()
    sock = raw(listen(handler))
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b"bad request\n")
    assert handler.requests == []


def test_connections_past_the_limit_are_closed_at_once(listen: Listen) -> None:
    handler = Recorder()
    listener = listen(handler, max_connections=1)
    first = client(listener)
    first.request("GET", "/first")
    assert first.getresponse().read() == b"ok\n"  # the first connection stays open (keep-alive)

    extra = raw(listener)
    extra.sendall(b"GET /extra HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_all(extra) == b""  # closed with no answer
    extra.close()
    assert [r.target for r in handler.requests] == ["/first"]

    first.request("GET", "/again")  # the one held is still served
    assert first.getresponse().read() == b"ok\n"
    first.close()

    def served() -> bool:  # its place is free once the server has seen it close
        sock = raw(listener)
        try:
            sock.sendall(b"GET /later HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return read_all(sock).startswith(b"HTTP/1.1 200 ")
        finally:
            sock.close()

    assert until(served)


def test_requests_beyond_max_in_flight_wait_their_turn(listen: Listen) -> None:
    active = 0
    most = 0
    lock = threading.Lock()

    def slow(request: Request) -> Response:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.2)
        with lock:
            active -= 1
        return Response(200, body=b"done")

    listener = listen(slow, max_in_flight=1)
    results: list[int] = []

    def call() -> None:
        conn = client(listener)
        conn.request("GET", "/")
        results.append(conn.getresponse().status)
        conn.close()

    threads = [threading.Thread(target=call) for _n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [200, 200, 200]
    assert most == 1


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(listen: Listen) -> None:
    sock = raw(listen(Recorder(), idle_timeout=0.3))
    started = time.monotonic()
    assert read_all(sock) == b""
    sock.close()
    assert 0.2 < time.monotonic() - started < WAIT


def test_a_body_that_never_arrives_is_cut_off_at_the_request_timeout(listen: Listen) -> None:
    handler = Recorder()
    sock = raw(listen(handler, request_timeout=0.3))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    started = time.monotonic()
    assert read_all(sock) == b""
    sock.close()
    assert 0.2 < time.monotonic() - started < WAIT
    assert handler.requests == []


def test_close_refuses_new_connections_and_closes_open_ones(listen: Listen) -> None:
    listener = listen(Recorder())
    idle = raw(listener)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(listener.address, timeout=WAIT)
    assert read_all(idle) == b""  # the kept-alive connection was closed
    idle.close()
    listener.close()  # closing again is harmless


def test_binding_a_taken_port_raises_oserror(servers: HttpServers, listen: Listen) -> None:
    taken = listen(Recorder())
    with pytest.raises(OSError, match="in use"):
        servers.listen("127.0.0.1", taken.address[1], Recorder(), ListenerLimits())
    # the first listener is untouched
    conn = client(taken)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200


def test_binding_an_address_that_is_not_the_machines_raises_oserror(servers: HttpServers) -> None:
    with pytest.raises(OSError):
        servers.listen("192.0.2.123", 0, Recorder(), ListenerLimits())  # TEST-NET-1, never local


def test_many_listeners_share_the_servers(listen: Listen) -> None:
    first, second = Recorder(Response(200, body=b"1")), Recorder(Response(200, body=b"2"))
    one, two = listen(first), listen(second)
    for listener, body in ((one, b"1"), (two, b"2"), (one, b"1")):
        conn = client(listener)
        conn.request("GET", "/")
        assert conn.getresponse().read() == body
        conn.close()
    assert (len(first.requests), len(second.requests)) == (2, 1)


def test_headers_that_do_not_end_within_the_limit_get_431(listen: Listen) -> None:
    handler = Recorder()
    sock = raw(listen(handler))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100))  # no end yet
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert handler.requests == []


def closed_by_server(sock: socket.socket) -> bool:
    readable, _writable, _failed = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_request_timeout(listen: Listen) -> None:
    handler = Recorder()
    sock = raw(listen(handler, idle_timeout=2.0, request_timeout=0.5))
    started = time.monotonic()
    closed_after = None
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:  # 6 s at this pace, never ends
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.1)  # each byte well inside the idle timeout
        if closed_by_server(sock):
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None, "the server kept a request that took 6 s to send"
    assert closed_after < 2.0
    assert handler.requests == []


def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_request_timeout(listen: Listen) -> None:
    handler = Recorder()
    sock = raw(listen(handler, idle_timeout=2.0, request_timeout=0.5))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n")
    started = time.monotonic()
    closed_after = None
    for _byte in range(60):  # 6 s at this pace
        try:
            sock.sendall(b"b")
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.1)
        if closed_by_server(sock):
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None, "the server kept a request body that took 6 s to send"
    assert closed_after < 2.0
    assert handler.requests == []


def test_a_request_being_handled_when_the_listener_closes_still_gets_its_response(listen: Listen) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(request: Request) -> Response:
        entered.set()
        release.wait(WAIT)
        return Response(200, body=b"finished")

    listener = listen(slow)
    busy = raw(listener)
    busy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = raw(listener)
    assert entered.wait(WAIT)
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(listener.address, timeout=WAIT)
    assert read_all(idle) == b""  # a connection with nothing in flight is closed at once
    idle.close()
    release.set()
    answer = read_all(busy)  # the answer, then the connection is closed
    busy.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nfinished")


def test_connections_arriving_as_the_listener_closes_are_never_left_hanging(servers: HttpServers) -> None:
    for _attempt in range(100):
        listener = servers.listen("127.0.0.1", 0, Recorder(), ListenerLimits())
        late = socket.create_connection(listener.address, timeout=1.0)
        listener.close()
        try:
            assert read_all(late) == b""  # closed (or reset), not left open
        finally:
            late.close()
