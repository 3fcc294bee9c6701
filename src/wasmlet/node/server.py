"""The kubelet HTTPS API: what ``kubectl logs`` reaches through the apiserver.

Clients authenticate with a certificate from the cluster CA or a bearer token (checked
with a TokenReview), and are authorized with a SubjectAccessReview on ``nodes/<sub>``,
as the kubelet does (pkg/kubelet/server/auth.go): anonymous → 401, not allowed → 403.
Decisions are cached (authn 2 min, allow 5 min, deny 30 s), like virtual-kubelet's.
Connections are capped and timed out until a request is authorized (:mod:`wasmlet.node.connections`);
a connection that fails or times out is closed with one log line. ``/portForward`` is upgraded to
SPDY and served by :mod:`wasmlet.node.port_forward`.

One file (400 lines): the handler, the authn/authz caches and the server share the request's
identity and the connection limits.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wasmlet.kube.client import ApiError, Client
from wasmlet.logs.options import LogOptions
from wasmlet.logs.reader import read_logs
from wasmlet.node import port_forward
from wasmlet.node.connections import ConnectionLimits, Connections

log = logging.getLogger(__name__)

AUTHN_TTL = 120.0
ALLOW_TTL = 300.0
DENY_TTL = 30.0
UNSUPPORTED = ("exec", "attach", "run", "cri")
TLS_ALERT = b"\x15"  # the content type of a TLS record that ends a connection (close_notify, errors)
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class NotFound(Exception):
    """The pod or container asked for is not on this node."""


class LogSource(Protocol):
    """What the pod controller offers the API: where a container's log is, and whether it ended."""

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> Path: ...

    def container_finished(self, namespace: str, pod: str, container: str) -> bool: ...

    def pods(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


def subresource(path: str) -> str:
    """The nodes/<subresource> a kubelet path is authorized as."""
    first = path.lstrip("/").split("/", 1)[0]
    return {"stats": "stats", "metrics": "metrics", "logs": "log", "checkpoint": "checkpoint"}.get(
        first, "proxy"
    )


class Authorizer:
    """TokenReview and SubjectAccessReview through the node's own identity, with TTL caches."""

    def __init__(self, client: Client, node_name: str) -> None:
        self.client = client
        self.node_name = node_name
        self._tokens: dict[str, tuple[float, User | None]] = {}
        self._decisions: dict[tuple[object, ...], tuple[float, bool, str]] = {}
        self._lock = threading.Lock()

    def authenticate_token(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached[0] > now:
            return cached[1]
        review = self.client.post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = review.get("status") or {}
        user = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            user = User(
                info.get("username", ""),
                tuple(info.get("groups") or ()),
                info.get("uid", ""),
                info.get("extra") or {},
            )
        with self._lock:
            self._tokens[key] = (now + AUTHN_TTL, user)
        return user

    def authorize(self, user: User, verb: str, sub: str) -> tuple[bool, str]:
        key = (user.name, user.groups, verb, sub)
        now = time.monotonic()
        with self._lock:
            cached = self._decisions.get(key)
        if cached and cached[0] > now:
            return cached[1], cached[2]
        review = self.client.post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user.name,
                    "groups": list(user.groups),
                    "uid": user.uid,
                    "extra": user.extra,
                    "resourceAttributes": {
                        "verb": verb,
                        "resource": "nodes",
                        "subresource": sub,
                        "name": self.node_name,
                    },
                },
            },
        )
        status = review.get("status") or {}
        allowed = bool(status.get("allowed"))
        reason = str(status.get("reason", ""))
        with self._lock:
            self._decisions[key] = (now + (ALLOW_TTL if allowed else DENY_TTL), allowed, reason)
        return allowed, reason


def user_from_cert(cert: dict[str, Any]) -> User | None:
    cn = ""
    groups: list[str] = []
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                cn = value
            elif attr == "organizationName":
                groups.append(value)
    return User(cn, tuple(groups)) if cn else None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: KubeletServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubelet API %s: " + format, self.client_address[0], *args)

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if not self.close_connection:
            self.server.connections.answered(self.connection)

    def _reply(self, code: int, message: str, content_type: str = "text/plain; charset=utf-8") -> None:
        body = (message + ("\n" if not message.endswith("\n") else "")).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _user(self) -> User | None:
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            peer = conn.getpeercert()
            if peer:
                return user_from_cert(dict(peer))
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.server.authorizer.authenticate_token(auth[len("Bearer ") :].strip())
        return None

    def _handle(self) -> None:
        if self.server.connections.closed_because(self.connection):
            self.close_connection = True  # headers cut short by the deadline: not a request to answer
            return
        url = urllib.parse.urlsplit(self.path)
        try:
            user = self._user()
        except (ApiError, OSError) as exc:
            self._reply(500, f"cannot authenticate the request: {exc}")
            return
        if user is None:
            self._reply(401, "Unauthorized")
            return
        verb = VERBS.get(self.command, "get")
        sub = subresource(url.path)
        try:
            allowed, reason = self.server.authorizer.authorize(user, verb, sub)
        except (ApiError, OSError) as exc:
            self._reply(500, f"cannot authorize the request: {exc}")
            return
        if not allowed:
            self._reply(
                403,
                f"Forbidden (user={user.name}, verb={verb}, resource=nodes, subresource={sub})"
                + (f": {reason}" if reason else ""),
            )
            return
        self.server.connections.authorized(self.connection)
        self._route(url)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _handle

    def _route(self, url: urllib.parse.SplitResult) -> None:
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        head = parts[0] if parts else ""
        if head == "healthz":
            self._reply(200, "ok")
        elif head == "containerLogs" and len(parts) == 4:
            self._container_logs(parts[1], parts[2], parts[3], url.query)
        elif head == "portForward" and len(parts) in (3, 4):
            self._port_forward(parts[1], parts[2], parts[3] if len(parts) == 4 else "")
        elif head == "pods" and len(parts) == 1:
            body = json.dumps({"kind": "PodList", "apiVersion": "v1", "items": self.server.source.pods()})
            self._reply(200, body, "application/json")
        elif head in UNSUPPORTED:
            self._reply(501, f"{head} is not supported by wasmlet: wasm modules run in-process on wasmtime")
        else:
            self._reply(404, f"404 page not found: {url.path}")

    def _port_forward(self, namespace: str, pod: str, uid: str) -> None:
        source = self.server.source
        if not isinstance(source, port_forward.PodIPs):
            self._reply(501, "portForward is not supported by this node's pod source")
            return
        if port_forward.serve(self, source, namespace, pod, uid, stopping=self.server.stopping):
            self.close_connection = True  # upgraded: not HTTP any more

    def _client_gone(self) -> bool:
        """Whether the client of a streamed answer hung up (TCP FIN, or a TLS alert such as close_notify):
        it sends nothing else while it reads, so a follow that waits for new lines learns at once
        that nobody reads it and frees its connection, as Go's server cancels a request's context."""
        try:  # a peek under the TLS layer, without waiting
            head = socket.socket.recv(self.connection, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return head in (b"", TLS_ALERT)

    def _container_logs(self, namespace: str, pod: str, container: str, query: str) -> None:
        params: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            params.setdefault(name, value)  # the first value wins, as with Go's url.Values.Get
        try:
            options = LogOptions.from_query(params)
        except ValueError as exc:
            self._reply(400, str(exc))
            return
        try:
            path = self.server.source.container_log(namespace, pod, container, options.previous)
        except NotFound as exc:
            self._reply(404, str(exc))
            return
        except ValueError as exc:  # e.g. previous=true for a container that never restarted
            self._reply(400, str(exc))
            return

        def finished() -> bool:  # asked at every poll of a follow (50 ms)
            return self.server.source.container_finished(namespace, pod, container) or self._client_gone()

        try:
            chunks = read_logs(path, options, stop=self.server.stopping, is_finished=finished)
        except FileNotFoundError:
            self._reply(404, f'no log for container "{container}" in pod "{pod}"')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def _is_connection_error(exc: BaseException) -> bool:
    """A failure of the peer or the transport (reset, TLS alert, EOF, a socket the watchdog shut),
    as opposed to a bug in serving the request."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, ValueError):  # e.g. ssl's "handshake not done yet" on a connection torn down
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        return frame is not None and Path(frame.tb_frame.f_code.co_filename).name in {"ssl.py", "socket.py"}
    return False


class KubeletServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = socket.SOMAXCONN  # a burst of connections waits in the backlog, not in SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        *,
        cert_file: Path,
        key_file: Path,
        client_ca_pem: bytes,
        authorizer: Authorizer,
        source: LogSource,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_pem = client_ca_pem
        self.authorizer = authorizer
        self.source = source
        self.stopping = threading.Event()
        self.connections = Connections(limits if limits is not None else ConnectionLimits())
        self.ssl_context = self._context()
        super().__init__(address, _Handler)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=self.client_ca_pem.decode())
        return ctx

    def reload_certificate(self) -> None:
        """Serve a renewed certificate to new connections."""
        self.ssl_context = self._context()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # As Go's servers do: headers and body (or log chunks) go out at once, not 40 ms apart
        # while Nagle's algorithm waits for the delayed ACK of the previous write.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept loop: count the connection in (or refuse it) before it gets a thread."""
        if not self.connections.admit(request, _peer(client_address)):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.do_handshake()
        except (OSError, ValueError) as exc:  # the watchdog's deadline shows up here as an EOF
            self.connections.failed(request, f"TLS handshake failed: {exc}")
            return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line for a connection that broke (logged when it is released); a traceback for a bug."""
        exc = sys.exc_info()[1]
        if exc is not None and _is_connection_error(exc):
            self.connections.failed(request, f"{type(exc).__name__}: {exc}")
        else:
            log.exception("kubelet API: serving %s failed", _peer(client_address))

    def shutdown_request(self, request: Any) -> None:
        self.connections.release(request)  # before the descriptor is closed and can be reused
        super().shutdown_request(request)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        watchdog = threading.Thread(
            target=self.connections.watch, name=f"kubelet-api-deadlines:{self.server_address[1]}", daemon=True
        )
        watchdog.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self.connections.stop()

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def _peer(client_address: Any) -> str:
    """host:port of a client, so that log lines of connections from one host tell them apart."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]}:{client_address[1]}"
    return str(client_address)
