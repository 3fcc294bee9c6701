"""The kubelet API's connection limits, against a real KubeletServer on loopback.

Attackers are raw TCP/TLS sockets; the authenticator and authorizer are faked (a token table
instead of TokenReview/SubjectAccessReview), everything else is the server as the node runs it.
Timeouts are short here (fractions of a second) instead of the 30 s and 90 s defaults.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from wasmlet import pki
from wasmlet.node.connections import ConnectionLimits
from wasmlet.node.server import Authorizer, KubeletServer, NotFound, User

T = TypeVar("T")
GOOD_TOKEN = "good-token"
AUTHORIZED = {"Authorization": f"Bearer {GOOD_TOKEN}"}
WAIT = 5.0  # seconds a test waits for the server to do what it must (well above any timeout below)
CUT_OFF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the headers never end
LOG_LINE = "2024-05-01T12:00:00.000000001Z stdout F {}\n"
# How a client sees a hang-up: before an answer, in the middle of one, or when it writes.
CLOSED = (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionError, ssl.SSLError)


class TokenAuthorizer(Authorizer):
    """One good token, allowed everything; no apiserver."""

    def __init__(self) -> None:
        pass

    def authenticate_token(self, token: str) -> User | None:
        return User("admin", ("system:masters",)) if token == GOOD_TOKEN else None

    def authorize(self, user: User, verb: str, sub: str) -> tuple[bool, str]:
        return True, ""


class OneLog:
    """The log source: one running container whose log is a file the test appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> Path:
        if (namespace, pod, container) != ("ns", "pod", "c"):
            raise NotFound(f"no container {container} in pod {namespace}/{pod}")
        return self.path

    def container_finished(self, namespace: str, pod: str, container: str) -> bool:
        return False

    def pods(self) -> list[dict[str, Any]]:
        return []


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Node:
    """A running KubeletServer and the means to talk to it."""

    def __init__(self, tmp_path: Path, limits: ConnectionLimits) -> None:
        ca_key = pki.generate_key("ecdsa")
        ca = pki.build_certificate(pki.CertSpec("test-ca", is_ca=True), ca_key.public_key(), ca_key, None)
        key = pki.generate_key("ecdsa")
        spec = pki.CertSpec("system:node:n1", usages=("server",), ip_addresses=("127.0.0.1",))
        cert = pki.build_certificate(spec, key.public_key(), ca_key, ca)
        (tmp_path / "node.crt").write_bytes(pki.cert_pem(cert))
        (tmp_path / "node.key").write_bytes(pki.key_pem(key))
        self.log = tmp_path / "0.log"
        self.log.write_text(LOG_LINE.format("first"))
        self.server = KubeletServer(
            ("127.0.0.1", 0),
            cert_file=tmp_path / "node.crt",
            key_file=tmp_path / "node.key",
            client_ca_pem=pki.cert_pem(ca),
            authorizer=TokenAuthorizer(),
            source=OneLog(self.log),
            limits=limits,
        )
        self.port = self.server.server_address[1]
        self.tls = ssl.create_default_context(cadata=pki.cert_pem(ca).decode())
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="kubelet-api-test"
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)

    def tcp(self, first_bytes: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        if first_bytes:
            sock.sendall(first_bytes)
        return sock

    def tls_socket(self) -> ssl.SSLSocket:
        return self.tls.wrap_socket(self.tcp(), server_hostname="127.0.0.1")

    def https(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=WAIT)

    def get(self, path: str, token: str | None = GOOD_TOKEN) -> tuple[int, bytes]:
        conn = self.https()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def follow(self) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
        """An authorized ``kubectl logs -f``, once its first line arrived."""
        conn = self.https()
        conn.request("GET", "/containerLogs/ns/pod/c?follow=true", headers=AUTHORIZED)
        response = conn.getresponse()
        assert response.status == 200
        assert response.readline() == b"first\n"
        return conn, response

    def append(self, word: str) -> None:
        with self.log.open("a") as file:
            file.write(LOG_LINE.format(word))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def _start(**limits: Any) -> Node:
        node = Node(tmp_path, ConnectionLimits(**limits))
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        node.close()


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wasmlet")


def _closed_by_server(sock: socket.socket, within: float = WAIT) -> bytes:
    """Read until the server closes the connection; what it sent before (b"" for nothing)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, ssl.SSLEOFError):
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within}s") from None
    return received


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))  # data, so not closed; b"": closed
    except BlockingIOError:
        return True  # nothing to read, and not closed
    except OSError:
        return False
    finally:
        sock.settimeout(WAIT)


def _lines_about(caplog: pytest.LogCaptureFixture, sock: socket.socket) -> list[logging.LogRecord]:
    """The log records about this client connection (they name it by its host:port)."""
    peer = f"127.0.0.1:{sock.getsockname()[1]}"
    return [r for r in caplog.records if peer in r.getMessage()]


def _one_line_about(caplog: pytest.LogCaptureFixture, sock: socket.socket, says: str) -> None:
    """The server logs exactly one line about this connection, and it says why it was closed."""
    records = _wait_for("the server's log line", lambda: _lines_about(caplog, sock))
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and says in messages[0], messages
    assert records[0].exc_info is None


def _no_traceback(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]


def test_a_client_that_never_finishes_the_tls_handshake_is_closed_at_the_header_timeout(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    node = start(header_timeout=0.5)
    opened = time.monotonic()
    stalled = node.tcp(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello, then nothing

    assert node.get("/healthz") == (200, b"ok\n")  # while the stalled handshake holds its connection
    assert _closed_by_server(stalled) == b""
    assert time.monotonic() - opened >= 0.5
    _one_line_about(caplog, stalled, "no authorized request within 0.5s of connecting")
    _no_traceback(capfd, caplog)


def test_half_a_request_is_closed_at_the_header_timeout_and_not_answered(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    node = start(header_timeout=0.5)
    half = node.tls_socket()
    half.sendall(CUT_OFF_REQUEST)

    assert node.get("/healthz") == (200, b"ok\n")
    assert _closed_by_server(half) == b""  # no answer to headers that never ended
    _one_line_about(caplog, half, "no authorized request within 0.5s of connecting")
    _no_traceback(capfd, caplog)


def test_a_request_cut_off_by_its_client_is_logged_in_one_line_without_a_traceback(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    node = start()
    half = node.tls_socket()
    half.sendall(CUT_OFF_REQUEST)
    peer = f"127.0.0.1:{half.getsockname()[1]}"
    half.close()

    records = _wait_for(
        "the server's log line", lambda: [r for r in caplog.records if peer in r.getMessage()]
    )
    assert node.get("/healthz") == (200, b"ok\n")
    assert len([r for r in caplog.records if peer in r.getMessage()]) == 1, [r.getMessage() for r in records]
    _no_traceback(capfd, caplog)


def test_a_failed_tls_handshake_is_logged_in_one_line(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    node = start()
    plain = node.tcp(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # plain HTTP to the TLS port

    _closed_by_server(plain)
    _one_line_about(caplog, plain, "TLS handshake failed")
    _no_traceback(capfd, caplog)


def test_unauthenticated_requests_do_not_extend_the_header_timeout(start: Callable[..., Node]) -> None:
    node = start(header_timeout=0.5, idle_timeout=30)
    conn = node.https()
    deadline = time.monotonic() + WAIT
    answers = 0
    with pytest.raises(CLOSED):  # one request after another, each refused, until the server hangs up
        while time.monotonic() < deadline:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert (response.status, response.read()) == (401, b"Unauthorized\n")
            answers += 1
    assert answers >= 1


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wasmlet.node.connections")  # routine for an authorized client
    node = start(header_timeout=0.3, idle_timeout=1.0)
    conn = node.https()
    conn.connect()
    asked = time.monotonic()  # the server answers after this, and counts the idle time from its answer
    conn.request("GET", "/healthz", headers=AUTHORIZED)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"ok\n")
    assert conn.sock is not None
    keep_alive: socket.socket = conn.sock

    assert _closed_by_server(keep_alive) == b""
    assert time.monotonic() - asked >= 1.0  # the idle timeout, not the header timeout
    _one_line_about(caplog, keep_alive, "idle for 1s after its last request")


def test_an_authorized_follow_stream_outlives_the_timeouts(start: Callable[..., Node]) -> None:
    node = start(header_timeout=0.3, idle_timeout=0.3)
    conn, stream = node.follow()
    idle = node.tcp()  # opened after the stream: its deadline passes after the stream's would have

    _closed_by_server(idle)
    node.append("second")
    assert stream.readline() == b"second\n"
    conn.close()


def test_connections_beyond_the_cap_close_the_oldest_that_made_no_authorized_request(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start(max_connections=3, header_timeout=30)
    idle = []
    for _client in range(6):  # one after another, so the server accepts them in this order
        idle.append(node.tcp())
        _wait_for(
            "the server to count the connection", lambda: len(node.server.connections) == min(len(idle), 3)
        )

    for sock in idle[:3]:
        assert _closed_by_server(sock) == b""
    assert node.get("/healthz") == (200, b"ok\n")  # the cap is full of idle anonymous connections
    assert _closed_by_server(idle[3]) == b""  # the oldest made room for it
    assert all(_still_open(sock) for sock in idle[4:])
    for sock in idle[:4]:
        _one_line_about(caplog, sock, "--max-api-connections")


def test_a_connection_beyond_a_cap_of_authorized_streams_is_refused(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start(max_connections=2, header_timeout=30)
    first, _stream = node.follow()
    _second, _other = node.follow()

    refused = node.tcp()
    assert _closed_by_server(refused) == b""
    assert any("refused 1 connection" in r.getMessage() for r in caplog.records)

    first.close()  # a follow whose client hung up frees its connection without waiting for a new line
    _wait_for("a free connection", lambda: _healthz_ok(node))


def _healthz_ok(node: Node) -> bool:
    try:
        return node.get("/healthz") == (200, b"ok\n")
    except CLOSED:
        return False
