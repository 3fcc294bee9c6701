"""Port-forward (wasmlet.node.port_forward): stream pairs forwarded to real loopback TCP servers.

The client here speaks SPDY as kubectl's client-go does (tools/portforward: the error stream,
closed at once, then the data stream, both with ``port`` and ``requestID``; a reset of the data
stream once the pod's side is done). Sessions run on socket pairs, and the whole request on a real
KubeletServer over TLS, with the authorizer faked as in test_server_connections.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from wasmlet import pki
from wasmlet.node import port_forward, spdy
from wasmlet.node.server import Authorizer, KubeletServer, NotFound, User

T = TypeVar("T")
WAIT = 5.0
UID = "0b4e8f6a-uid"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nConnection: close\r\n\r\nREQUEST_METHOD=GET\n"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class PodServer:
    """A pod's listener on loopback: answers one HTTP request per connection and closes it."""

    def __init__(self, answer: bool = True, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.requests: list[bytes] = []
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            if not self.answer:  # a pod that never reads
                self.held.append(conn)
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(WAIT)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            conn.sendall(RESPONSE)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Pods:
    """The pod controller's view: one pod, whose IP the test may take away."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.found: tuple[str, str] | None = (UID, ip)

    def pod_ip(self, namespace: str, pod: str) -> tuple[str, str] | None:
        return self.found if (namespace, pod) == ("ns", "web") else None


class Client:
    """A SPDY client on a socket, as kubectl's."""

    def __init__(self, sock: socket.socket, early: bytes = b"") -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.encoder = spdy.Encoder()
        self.decoder = spdy.Decoder()
        self.decoder.feed(early)
        self.next_id = 1

    def send(self, *frames: spdy.Frame) -> None:
        self.sock.sendall(b"".join(self.encoder.encode(frame) for frame in frames))

    def frame(self) -> spdy.Frame:
        while (frame := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the node closed the connection")
            self.decoder.feed(data)
        return frame

    def open(self, headers: spdy.Headers) -> int:
        stream_id = self.next_id
        self.next_id += 2
        self.send(spdy.SynStream(stream_id, headers))
        return stream_id

    def pair(self, port: int, request_id: str) -> tuple[int, int]:
        """kubectl's handleConnection: error stream (replied, then closed), data stream (replied)."""
        headers = {"streamtype": ["error"], "port": [str(port)], "requestid": [request_id]}
        error = self.open(headers)
        assert self.frame() == spdy.SynReply(error)
        self.send(spdy.Data(error, b"", spdy.FLAG_FIN))
        data = self.open({**headers, "streamtype": ["data"]})
        assert self.frame() == spdy.SynReply(data)
        return error, data

    def until_closed(self, *stream_ids: int) -> dict[int, tuple[bytes, str]]:
        """Read each stream until its FIN or RST: what came on it, and how it ended."""
        data = dict.fromkeys(stream_ids, b"")
        endings = dict.fromkeys(stream_ids, "")
        while not all(endings.values()):
            frame = self.frame()
            if isinstance(frame, spdy.Data) and frame.stream_id in data:
                data[frame.stream_id] += frame.data
                if frame.flags & spdy.FLAG_FIN:
                    endings[frame.stream_id] = "FIN"
            elif isinstance(frame, spdy.RstStream) and frame.stream_id in data:
                endings[frame.stream_id] = f"RST {spdy.RstStatus(frame.status).name}"
            else:
                raise AssertionError(f"unexpected {frame}")
        return {sid: (data[sid], endings[sid]) for sid in stream_ids}

    def get(self, port: int, request_id: str) -> tuple[bytes, bytes]:
        """One forwarded HTTP request, as ``curl`` through ``kubectl port-forward``: the response
        and what came on the error stream."""
        error, data = self.pair(port, request_id)
        self.send(spdy.Data(data, b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n"))
        ended = self.until_closed(error, data)
        assert ended[data][1] == "FIN" and ended[error][1] == "FIN", ended
        self.send(spdy.RstStream(data, spdy.RstStatus.CANCEL))  # kubectl resets it when its copy is done
        return ended[data][0], ended[error][0]


class Running:
    """A Session on one end of a socket pair, in a thread; the test's Client on the other."""

    def __init__(self, pods: Pods, limits: port_forward.Limits, reachable: port_forward.Reachable) -> None:
        node_end, client_end = socket.socketpair()
        self.stopping = threading.Event()
        target = port_forward.Target(pods, "ns", "web", UID)
        self.session = port_forward.Session(node_end, target, self.stopping, limits, reachable=reachable)
        self.node_end = node_end
        self.client = Client(client_end)
        self.thread = threading.Thread(target=self.session.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.client.sock.close()  # the session ends at once (a stop is seen within half a second)
        self.stopping.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.node_end.close()


@pytest.fixture
def pod() -> Iterator[PodServer]:
    server = PodServer()
    yield server
    server.close()


@pytest.fixture
def session_for() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(
        pods: Pods | None = None,
        limits: port_forward.Limits | None = None,
        reachable: port_forward.Reachable = port_forward.own_listener,
    ) -> Running:
        running = Running(pods or Pods(), limits or port_forward.Limits(), reachable)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def refused(port: int) -> str:
    return (
        f"error forwarding port {port} to pod ns/web, uid {UID}: dial tcp 127.0.0.1:{port}: "
        "connect: connection refused"
    )


def test_a_stream_pair_forwards_to_the_pod_and_both_streams_close(
    pod: PodServer, session_for: Callable[..., Running]
) -> None:
    running = session_for()
    response, error = running.client.get(pod.port, "0")
    assert response == RESPONSE
    assert error == b""
    assert pod.requests == [b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n"]
    wait_for("the streams forgotten", lambda: not running.session.streams and not running.session.active)
    assert running.session.buffered == 0


def test_two_requests_in_a_row_and_two_at_once(pod: PodServer, session_for: Callable[..., Running]) -> None:
    client = session_for().client
    assert client.get(pod.port, "0") == (RESPONSE, b"")
    assert client.get(pod.port, "1") == (RESPONSE, b"")
    first = client.pair(pod.port, "2")
    second = client.pair(pod.port, "3")
    client.send(
        spdy.Data(second[1], b"GET /b HTTP/1.1\r\n\r\n"), spdy.Data(first[1], b"GET /a HTTP/1.1\r\n\r\n")
    )
    ended = client.until_closed(*first, *second)
    assert ended[first[1]] == ended[second[1]] == (RESPONSE, "FIN")
    assert sorted(pod.requests[2:]) == [b"GET /a HTTP/1.1\r\n\r\n", b"GET /b HTTP/1.1\r\n\r\n"]


def test_a_client_half_close_reaches_the_pod_and_its_answer_comes_back(
    pod: PodServer, session_for: Callable[..., Running]
) -> None:
    client = session_for().client
    error, data = client.pair(pod.port, "0")
    client.send(spdy.Data(data, b"GET / HTTP/1.1\r\n\r\n", spdy.FLAG_FIN))
    assert client.until_closed(error, data) == {error: (b"", "FIN"), data: (RESPONSE, "FIN")}


def test_a_port_nothing_listens_on_gives_the_kubelets_error_and_resets(
    pod: PodServer, session_for: Callable[..., Running]
) -> None:
    running = session_for(reachable=lambda ip, port: True)  # the connect itself is refused
    client = running.client
    port = closed_port()
    error, data = client.pair(port, "0")
    ended = client.until_closed(error, data)
    assert ended == {error: (refused(port).encode(), "RST CANCEL"), data: (b"", "RST CANCEL")}
    assert client.get(pod.port, "1") == (RESPONSE, b"")  # the connection goes on
    wait_for("the streams forgotten", lambda: not running.session.streams)


def test_a_host_listener_on_every_address_is_not_the_pods(session_for: Callable[..., Running]) -> None:
    host = PodServer(host="0.0.0.0")  # noqa: S104 - a host service, as sshd's
    try:
        assert not port_forward.own_listener("127.0.0.1", host.port)
        client = session_for().client
        error, data = client.pair(host.port, "0")
        assert client.until_closed(error, data)[error] == (refused(host.port).encode(), "RST CANCEL")
        assert not host.requests
    finally:
        host.close()


def test_own_listener_knows_this_process_listeners(pod: PodServer) -> None:
    assert port_forward.own_listener("127.0.0.1", pod.port)
    assert not port_forward.own_listener("127.0.0.2", pod.port)
    assert not port_forward.own_listener("127.0.0.1", closed_port())


def test_own_listener_reads_ipv6_addresses_too() -> None:
    try:
        six = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with six:
        assert port_forward.own_listener("::1", six.getsockname()[1])
        assert not port_forward.own_listener("::2", six.getsockname()[1])


def test_a_pod_gone_or_without_an_ip(pod: PodServer, session_for: Callable[..., Running]) -> None:
    pods = Pods()
    client = session_for(pods).client
    pods.found = None
    error, data = client.pair(pod.port, "0")
    message = f"error forwarding port {pod.port} to pod ns/web, uid {UID}: pod not found"
    assert client.until_closed(error, data)[error] == (message.encode(), "RST CANCEL")
    pods.found = ("another-uid", "127.0.0.1")  # recreated under the same name
    error, data = client.pair(pod.port, "1")
    assert client.until_closed(error, data)[error] == (message.encode(), "RST CANCEL")
    pods.found = (UID, "")
    error, data = client.pair(pod.port, "2")
    assert client.until_closed(error, data)[error][0].endswith(b": pod has no IP address yet")


def test_streams_over_the_cap_are_refused(pod: PodServer, session_for: Callable[..., Running]) -> None:
    client = session_for(limits=port_forward.Limits(max_streams=3)).client
    headers = {"streamtype": ["error"], "port": [str(pod.port)]}
    ids = [client.open({**headers, "requestid": [str(n)]}) for n in range(4)]
    assert [client.frame() for _n in range(4)] == [
        spdy.SynReply(ids[0]),
        spdy.SynReply(ids[1]),
        spdy.SynReply(ids[2]),
        spdy.RstStream(ids[3], spdy.RstStatus.REFUSED_STREAM),
    ]


def test_a_lone_stream_times_out(pod: PodServer, session_for: Callable[..., Running]) -> None:
    running = session_for(limits=port_forward.Limits(stream_creation_timeout=0.2))
    client = running.client
    error = client.open({"streamtype": ["error"], "port": [str(pod.port)], "requestid": ["7"]})
    assert client.frame() == spdy.SynReply(error)
    data, ending = client.until_closed(error)[error]
    assert data.endswith(b"request=7) timed out waiting for streams") and ending == "FIN"
    client.send(spdy.Data(error, b"", spdy.FLAG_FIN))
    lone = client.open({"streamtype": ["data"], "port": [str(pod.port)], "requestid": ["8"]})
    assert client.frame() == spdy.SynReply(lone)
    client.send(spdy.Data(lone, b"x" * 1000))
    assert client.until_closed(lone)[lone] == (b"", "RST CANCEL")
    wait_for("nothing held", lambda: not running.session.streams and running.session.buffered == 0)


@pytest.mark.parametrize(
    "headers",
    [
        {"streamtype": ["data"]},
        {"port": ["http"], "streamtype": ["data"]},
        {"port": ["0"], "streamtype": ["data"]},
        {"port": ["65536"], "streamtype": ["data"]},
        {"port": ["8" * 5000], "streamtype": ["data"]},
        {"port": ["²"], "streamtype": ["data"]},
        {"port": ["80"]},
        {"port": ["80"], "streamtype": ["stdin"]},
    ],
)
def test_streams_with_bad_headers_are_reset(
    session_for: Callable[..., Running], headers: spdy.Headers
) -> None:
    client = session_for().client
    stream = client.open(headers)
    assert client.frame() == spdy.RstStream(stream, spdy.RstStatus.CANCEL)


def test_a_second_stream_of_one_type_is_reported_on_the_error_stream(
    pod: PodServer, session_for: Callable[..., Running]
) -> None:
    client = session_for().client
    headers = {"streamtype": ["error"], "port": [str(pod.port)], "requestid": ["5"]}
    first = client.open(headers)
    assert client.frame() == spdy.SynReply(first)
    second = client.open(headers)
    assert client.frame() == spdy.SynReply(second)
    assert client.frame() == spdy.Data(
        first, b"error processing stream for request 5: error stream already assigned"
    )
    assert client.frame() == spdy.RstStream(second, spdy.RstStatus.CANCEL)


def test_stream_ids_must_be_odd_and_rise(session_for: Callable[..., Running]) -> None:
    client = session_for().client
    headers = {"streamtype": ["error"], "port": ["80"], "requestid": ["1"]}
    client.send(spdy.SynStream(5, headers), spdy.SynStream(3, headers), spdy.SynStream(8, headers))
    assert [client.frame() for _n in range(3)] == [
        spdy.SynReply(5),
        spdy.RstStream(3, spdy.RstStatus.PROTOCOL_ERROR),
        spdy.RstStream(8, spdy.RstStatus.PROTOCOL_ERROR),
    ]


def test_pings_are_answered_and_other_frames_ignored(session_for: Callable[..., Running]) -> None:
    client = session_for().client
    client.send(
        spdy.Settings(((0, 7, 1 << 20),)),
        spdy.WindowUpdate(0, 1 << 20),
        spdy.HeadersFrame(99, {"a": ["b"]}),
        spdy.Data(41, b"for a stream never opened"),
        spdy.UnknownControl(0x77, 0, b""),
        spdy.Ping(7),
        spdy.Ping(8),  # an answer to a ping the node never sent
        spdy.Ping(9),
    )
    assert [client.frame(), client.frame()] == [spdy.Ping(7), spdy.Ping(9)]


def test_a_protocol_error_ends_the_connection_with_goaway(session_for: Callable[..., Running]) -> None:
    running = session_for(limits=port_forward.Limits(framing=spdy.Limits(max_frame_payload=1024)))
    running.client.send(spdy.SynStream(1, {"streamtype": ["error"], "port": ["80"]}))
    running.client.sock.sendall((1).to_bytes(4, "big") + (4096).to_bytes(4, "big"))  # too long a frame
    assert running.client.frame() == spdy.SynReply(1)
    assert running.client.frame() == spdy.GoAway(1, spdy.GoAwayStatus.PROTOCOL_ERROR)
    running.thread.join(WAIT)
    assert not running.thread.is_alive()
    assert running.session.ended.startswith("protocol error: a frame of 4096 bytes")


def test_the_client_hanging_up_ends_it_and_closes_the_pods_sockets(
    session_for: Callable[..., Running],
) -> None:
    sink = PodServer(answer=False)
    try:
        running = session_for()
        error, data = running.client.pair(sink.port, "0")
        wait_for("the pod's connection", lambda: sink.held)
        running.client.sock.close()
        running.thread.join(WAIT)
        assert not running.thread.is_alive()
        sink.held[0].settimeout(WAIT)
        assert sink.held[0].recv(10) == b""  # closed by the node
        assert error and data
    finally:
        sink.close()


def test_idle_connections_end_with_goaway(session_for: Callable[..., Running]) -> None:
    running = session_for(limits=port_forward.Limits(idle_timeout=0.3))
    assert running.client.frame() == spdy.GoAway(0)
    running.thread.join(WAIT)
    assert running.session.ended == "idle for 0.3s"


def test_a_client_that_floods_a_pod_that_does_not_read_is_made_to_wait(
    session_for: Callable[..., Running],
) -> None:
    sink = PodServer(answer=False)
    limit = 256 * 1024
    try:
        running = session_for(limits=port_forward.Limits(max_buffered=limit))
        client = running.client
        error, data = client.pair(sink.port, "0")
        wait_for("the pod's connection", lambda: sink.held)
        sink.held[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        chunk = spdy.Encoder().encode(spdy.Data(data, b"x" * 32768))
        sent = 0
        peak = 0
        client.sock.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            while sent < 256 << 20:  # far more than the kernel's buffers hold
                client.sock.sendall(chunk)
                sent += len(chunk)
                peak = max(peak, running.session.buffered)
        peak = max(peak, running.session.buffered)
        assert sent < 64 << 20  # the node stopped reading well before
        assert 0 < peak <= limit + port_forward.READ_SIZE * 4
        assert error
    finally:
        sink.close()


# --- the whole request, on a KubeletServer over TLS ---------------------------------------------------


class TokenAuthorizer(Authorizer):
    def __init__(self) -> None:  # no apiserver
        self.seen: tuple[str, str] = ("", "")

    def authenticate_token(self, token: str) -> User | None:
        return User("admin", ("system:masters",)) if token == "good" else None

    def authorize(self, user: User, verb: str, sub: str) -> tuple[bool, str]:
        self.seen = (verb, sub)
        return True, ""


class Source(Pods):
    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> Path:
        raise NotFound("no logs here")

    def container_finished(self, namespace: str, pod: str, container: str) -> bool:
        return True

    def pods(self) -> list[dict[str, object]]:
        return []


class Node:
    def __init__(self, tmp_path: Path) -> None:
        ca_key = pki.generate_key("ecdsa")
        ca = pki.build_certificate(pki.CertSpec("test-ca", is_ca=True), ca_key.public_key(), ca_key, None)
        key = pki.generate_key("ecdsa")
        spec = pki.CertSpec("system:node:n1", usages=("server",), ip_addresses=("127.0.0.1",))
        cert = pki.build_certificate(spec, key.public_key(), ca_key, ca)
        (tmp_path / "node.crt").write_bytes(pki.cert_pem(cert))
        (tmp_path / "node.key").write_bytes(pki.key_pem(key))
        self.authorizer = TokenAuthorizer()
        self.server = KubeletServer(
            ("127.0.0.1", 0),
            cert_file=tmp_path / "node.crt",
            key_file=tmp_path / "node.key",
            client_ca_pem=pki.cert_pem(ca),
            authorizer=self.authorizer,
            source=Source(),
        )
        self.tls = ssl.create_default_context(cadata=pki.cert_pem(ca).decode())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def request(
        self, path: str, method: str = "POST", headers: dict[str, str] | None = None, after: bytes = b""
    ) -> tuple[ssl.SSLSocket, bytes, bytes]:
        """Send a request (and ``after`` it, at once); the socket, the response's head and whatever
        came after it."""
        sock = self.tls.wrap_socket(
            socket.create_connection(("127.0.0.1", self.server.server_address[1]), timeout=WAIT),
            server_hostname="127.0.0.1",
        )
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Authorization: Bearer good",
            "Content-Length: 0",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + after)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1) if b"\r\n\r\n" in data else (data, b"")
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        while length and len(body) < int(length[1]):
            body += sock.recv(65536)
        return sock, head, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


UPGRADE = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "portforward.k8s.io"}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = Node(tmp_path)
    yield running
    running.close()


def test_kubectl_through_the_kubelet_api(node: Node, pod: PodServer) -> None:
    sock, head, early = node.request(f"/portForward/ns/web/{UID}", headers=UPGRADE)
    with sock:
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        assert {
            "X-Stream-Protocol-Version: portforward.k8s.io",
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
        } <= set(lines)
        assert node.authorizer.seen == ("create", "proxy")  # nodes/proxy, as the kubelet authorizes it
        client = Client(sock, early)
        assert client.get(pod.port, "0") == (RESPONSE, b"")
        assert client.get(pod.port, "1") == (RESPONSE, b"")
        port = closed_port()
        error, data = client.pair(port, "2")
        assert client.until_closed(error, data)[error] == (refused(port).encode(), "RST CANCEL")
        assert client.get(pod.port, "3") == (RESPONSE, b"")
        client.send(spdy.GoAway(7))
        sock.settimeout(WAIT)
        assert sock.recv(1) == b""  # the node closes once no streams are left


def test_frames_sent_right_behind_the_request_are_not_lost(node: Node, pod: PodServer) -> None:
    encoder = spdy.Encoder()
    headers = {"streamtype": ["error"], "port": [str(pod.port)], "requestid": ["0"]}
    pipelined = encoder.encode(spdy.SynStream(1, headers)) + encoder.encode(spdy.Ping(1))
    sock, head, early = node.request("/portForward/ns/web", headers=UPGRADE, after=pipelined)
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        client = Client(sock, early)
        client.encoder = encoder
        client.next_id = 3
        assert [client.frame(), client.frame()] == [spdy.SynReply(1), spdy.Ping(1)]
        client.send(spdy.Data(1, b"", spdy.FLAG_FIN))
        data = client.open({**headers, "streamtype": ["data"]})
        assert client.frame() == spdy.SynReply(data)
        client.send(spdy.Data(data, b"GET / HTTP/1.1\r\n\r\n"))
        assert client.until_closed(1, data) == {1: (b"", "FIN"), data: (RESPONSE, "FIN")}


def test_a_unidirectional_stream_gets_nothing_but_its_reply(session_for: Callable[..., Running]) -> None:
    running = session_for()
    headers = {"streamtype": ["error"], "port": ["80"], "requestid": ["0"]}
    running.client.send(spdy.SynStream(1, headers, spdy.FLAG_UNIDIRECTIONAL), spdy.Ping(3))
    assert [running.client.frame(), running.client.frame()] == [spdy.SynReply(1), spdy.Ping(3)]
    running.client.send(spdy.Data(1, b"", spdy.FLAG_FIN))
    wait_for("the stream forgotten", lambda: not running.session.streams)


def test_the_node_shutting_down_ends_the_session(node: Node, pod: PodServer) -> None:
    sock, head, early = node.request("/portForward/ns/web", "GET", UPGRADE)
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        client = Client(sock, early)
        assert client.get(pod.port, "0") == (RESPONSE, b"")
        node.server.shutdown()
        assert client.frame() == spdy.GoAway(3)


@pytest.mark.parametrize(
    "case",
    [
        ("/portForward/ns/nope", "POST", UPGRADE, 404, "pod does not exist"),
        ("/portForward/ns/web/other-uid", "POST", UPGRADE, 404, "pod not found"),
        ("/portForward/ns/web", "PUT", UPGRADE, 405, "Method Not Allowed"),
        (
            "/portForward/ns/web",
            "POST",
            {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"},
            400,
            "unable to upgrade: header X-Stream-Protocol-Version does not exist in request",
        ),
        (
            "/portForward/ns/web",
            "POST",
            {**UPGRADE, "X-Stream-Protocol-Version": "v4.channel.k8s.io"},
            403,
            "unable to upgrade: unable to negotiate protocol: client supports ['v4.channel.k8s.io']",
        ),
        (
            "/portForward/ns/web",
            "GET",
            {**UPGRADE, "Upgrade": "SPDY/3.0"},
            400,
            "unable to upgrade: missing upgrade headers in request",
        ),
        (
            "/portForward/ns/web?ports=8080",
            "GET",
            {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Protocol": "v4.channel.k8s.io"},
            400,
            "unable to upgrade: wasmlet serves port-forward over SPDY/3.1 only, not WebSocket",
        ),
    ],
)
def test_requests_refused_as_the_kubelet_refuses_them(
    node: Node, case: tuple[str, str, dict[str, str], int, str]
) -> None:
    path, method, headers, status, message = case
    sock, head, body = node.request(path, method, headers)
    with sock:
        assert head.split(b"\r\n")[0].decode().startswith(f"HTTP/1.1 {status} ")
        assert message in body.decode()
        if status == 403:
            assert b"X-Accepted-Stream-Protocol-Versions: portforward.k8s.io" in head
