"""A registry that lies: a small HTTP/1.1 server on loopback for the pull-limit tests.

Each path answers with an :class:`Answer` -- any status, headers and body, which may be endless,
shorter or longer than it claims, and may be dripped a byte at a time (the status line and
headers too). It speaks just enough of the distribution API for a pull: ``/v2/`` and GET/HEAD of
manifests and blobs; and, with ``pushes=True``, for a push (monolithic blob uploads, manifest
PUTs). It listens on 127.0.0.1 unless told another address, over plain HTTP unless given a TLS
context; a connection that opens with something other than an HTTP request line (a TLS
ClientHello) is answered ``400 Bad Request`` and closed, as CNCF Distribution (Go) does, and
counted in ``not_http``. Run as a script it serves a dripping registry in its own process (for the
integration test): ``python hostile_registry.py drip INTERVAL`` prints its host:port.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

WASM = b"\0asm\x01\0\0\0"
LAYER_TYPE = "application/vnd.wasm.content.layer.v1+wasm"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_REQUEST_LINE_RE = re.compile(r"([A-Z]+) (\S+) HTTP/1\.[01]\r?\n")


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def endless(chunk: bytes = b"\0" * 65536) -> Iterator[bytes]:
    return itertools.repeat(chunk)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Iterable[bytes] | bytes = b""
    drip: float = 0.0  # seconds between single bytes; 0: sent at once
    drip_head: bool = False  # drip the status line and headers as well


def manifest_for(
    layer: bytes | None = None, *, layer_size: int | None = None, layer_digest: str = ""
) -> bytes:
    """An image manifest with one wasm layer; its descriptor may lie about the size and digest."""
    layer = WASM if layer is None else layer
    config = b"{}"
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.wasm.config.v1+json", "digest": digest(config), "size": 2},
        "layers": [
            {
                "mediaType": LAYER_TYPE,
                "digest": layer_digest or digest(layer),
                "size": len(layer) if layer_size is None else layer_size,
            }
        ],
    }
    return json.dumps(document).encode()


class HostileRegistry:
    """Serve ``answers`` (path -> Answer, or a callable making one) on ``address``:<port>.

    ``tls``: a server-side context to speak TLS with (handshake failures are kept in
    ``tls_errors``, the OpenSSL reason of each); ``pushes``: accept blob uploads and manifest PUTs.
    """

    def __init__(
        self, address: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None, pushes: bool = False
    ) -> None:
        self.answers: dict[str, Answer | Callable[[], Answer]] = {}
        self.fallback: Callable[[str], Answer] | None = None  # for paths without an answer
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []  # the Authorization headers received
        self.sent: dict[str, int] = {}  # body bytes written per path
        self.connections = 0
        self.not_http = 0  # connections that opened with something else than an HTTP request
        self.tls_errors: list[str] = []
        self.pushes = pushes
        registry = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                registry.connections += 1
                rfile, connection = self.rfile, self.connection
                if tls is not None:
                    try:
                        connection = tls.wrap_socket(connection, server_side=True)
                    except ssl.SSLError as exc:
                        registry.tls_errors.append(str(exc.reason))
                        return
                    except OSError:
                        return
                    rfile = connection.makefile("rb")
                with contextlib.suppress(OSError):
                    while registry._serve_one(rfile, connection):
                        pass

        self._server = socketserver.ThreadingTCPServer((address, 0), Handler)
        self._server.daemon_threads = True
        self.host = f"{address}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hostile-registry", daemon=True
        )

    def __enter__(self) -> HostileRegistry:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def module(self, repository: str, tag: str, layer: bytes = WASM, **lies: Any) -> None:
        """A well-formed module under ``repository:tag`` (``lies`` go to :func:`manifest_for`)."""
        raw = manifest_for(layer, **lies)
        self.manifest(repository, tag, raw)
        self.answers[f"/v2/{repository}/blobs/{digest(layer)}"] = Answer(
            headers={"Content-Length": str(len(layer))}, body=layer
        )

    def manifest(self, repository: str, tag: str, raw: bytes, media_type: str = MANIFEST_TYPE) -> None:
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest(raw)}
        answer = Answer(headers={**headers, "Content-Length": str(len(raw))}, body=raw)
        self.answers[f"/v2/{repository}/manifests/{tag}"] = answer
        self.answers[f"/v2/{repository}/manifests/{digest(raw)}"] = answer

    def _serve_one(self, rfile: Any, connection: socket.socket) -> bool:
        line = rfile.readline(65537).decode("latin-1")
        if not line.strip():
            return False
        request_line = _REQUEST_LINE_RE.fullmatch(line)
        if request_line is None:  # a TLS ClientHello, say: answered as Go's net/http does
            self.not_http += 1
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request")
            return False
        method, path = request_line.groups()
        headers: dict[str, str] = {}
        while (header := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _sep, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = rfile.read(int(headers.get("content-length", "0")))
        self.requests.append((method, path))
        if "authorization" in headers:
            self.authorizations.append(headers["authorization"])
        found = self.answers.get(path.split("?", 1)[0])
        if self.pushes and method in {"POST", "PUT"}:
            answer = self._accept(method, path, headers, body)
        elif path == "/v2/":
            answer = Answer(headers={"Content-Length": "2"}, body=b"{}")
        elif found is None and self.fallback is not None:
            answer = self.fallback(path)
        elif found is None:
            error = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": "unknown"}]}).encode()
            answer = Answer(404, {"Content-Length": str(len(error))}, error)
        else:
            answer = found() if callable(found) else found
        self._write(answer, method, path, connection)
        return "Content-Length" in answer.headers

    def _accept(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """A push: start an upload, finish it with the whole blob, or put a manifest."""
        repository, _sep, rest = path.removeprefix("/v2/").partition("/blobs/uploads/")
        if method == "POST" and _sep and not rest:
            location = f"/v2/{repository}/blobs/uploads/{uuid.uuid4().hex}"
            return Answer(202, {"Location": location, "Content-Length": "0"})
        if method == "PUT" and _sep and "digest=" in rest:
            expected = rest.partition("digest=")[2].partition("&")[0].replace("%3A", ":")
            if digest(body) != expected:
                return Answer(400, {"Content-Length": "0"})
            blob = f"/v2/{repository}/blobs/{expected}"
            self.answers[blob] = Answer(headers={"Content-Length": str(len(body))}, body=body)
            return Answer(201, {"Location": blob, "Docker-Content-Digest": expected, "Content-Length": "0"})
        repository, _sep, tag = path.removeprefix("/v2/").rpartition("/manifests/")
        if method == "PUT" and _sep:
            self.manifest(repository, tag, body, headers.get("content-type", MANIFEST_TYPE))
            return Answer(201, {"Docker-Content-Digest": digest(body), "Content-Length": "0"})
        return Answer(405, {"Content-Length": "0"})

    def _write(self, answer: Answer, method: str, path: str, connection: socket.socket) -> None:
        head = [f"HTTP/1.1 {answer.status} X"]
        head += [f"{name}: {value}" for name, value in answer.headers.items()]
        if "Content-Length" not in answer.headers:
            head.append("Connection: close")
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
        self._send(connection, head_bytes, answer.drip if answer.drip_head else 0.0)
        if method == "HEAD":
            return
        body = [answer.body] if isinstance(answer.body, bytes) else answer.body
        for chunk in body:
            self._send(connection, chunk, answer.drip)
            self.sent[path] = self.sent.get(path, 0) + len(chunk)
        if "Content-Length" not in answer.headers:
            connection.shutdown(socket.SHUT_WR)

    @staticmethod
    def _send(connection: socket.socket, data: bytes, drip: float) -> None:
        if not drip:
            connection.sendall(data)
            return
        for position in range(len(data)):
            connection.sendall(data[position : position + 1])
            time.sleep(drip)


def _serve_drip(interval: float) -> None:
    """A registry that drips every answer, a byte per ``interval`` seconds, until stdin closes."""
    with HostileRegistry() as registry:
        raw = manifest_for()

        def dripped(_path: str) -> Answer:
            headers = {"Content-Type": MANIFEST_TYPE, "Content-Length": str(len(raw))}
            return Answer(headers=headers, body=raw, drip=interval)

        registry.fallback = dripped
        print(registry.host, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve_drip(float(sys.argv[2]))
