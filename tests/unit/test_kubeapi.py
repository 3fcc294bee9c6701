"""The REST client against a small local HTTP server (the real apiserver is in tests/integration)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from wasmlet.kube.client import ApiError, Client, TransportError
from wasmlet.kube.kubeconfig import Credentials


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []  # noqa: RUF012 (shared by the test server)

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/api/v1/namespaces/default/pods/web/log"):
            self._answer(200, b"42\n", "text/plain")
        elif self.path.startswith("/api/v1/pods?") and "watch=true" in self.path:
            self._watch()
        elif self.path.startswith("/api/v1/namespaces/missing"):
            self._answer(
                404, json.dumps({"kind": "Status", "message": 'namespaces "missing" not found'}).encode()
            )
        else:
            self._answer(200, json.dumps({"kind": "Namespace", "path": self.path}).encode())

    def do_PATCH(self) -> None:
        body = self._record()
        self._answer(200, body)

    def _watch(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk(json.dumps({"type": "ADDED", "object": {"metadata": {"name": "a"}}}).encode() + b"\n")
        time.sleep(0.3)  # the first event must arrive before this pause ends
        if "resourceVersion=old" in self.path:
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
            chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
        else:
            chunk(json.dumps({"type": "MODIFIED", "object": {"metadata": {"name": "a"}}}).encode() + b"\n")
        chunk(b"")


@pytest.fixture
def server() -> Iterator[str]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


TOKEN = "s3cret"


def client(server: str) -> Client:
    return Client(Credentials(server, None, None, None, TOKEN), timeout=5)


def test_json_requests_carry_the_token_and_the_query(server: str) -> None:
    with client(server) as api:
        answer = api.get("/api/v1/namespaces/default", {"labelSelector": "a=b c"})
        patched = api.patch("/api/v1/namespaces/default/pods/web/status", {"status": {"phase": "Running"}})
    assert answer["path"] == "/api/v1/namespaces/default?labelSelector=a%3Db+c"
    assert patched == {"status": {"phase": "Running"}}
    method, _path, headers, body = Handler.seen[1]
    assert (method, headers["Authorization"]) == ("PATCH", "Bearer s3cret")
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(body) == {"status": {"phase": "Running"}}


def test_an_error_status_names_the_request_and_the_apiserver_message(server: str) -> None:
    with client(server) as api, pytest.raises(ApiError) as caught:
        api.get("/api/v1/namespaces/missing")
    assert caught.value.status == 404
    assert str(caught.value) == 'GET /api/v1/namespaces/missing: 404 namespaces "missing" not found'


def test_raw_gives_the_body_as_it_came(server: str) -> None:
    with client(server) as api:
        assert api.raw("GET", "/api/v1/namespaces/default/pods/web/log") == (200, b"42\n")


def test_watch_events_arrive_as_they_are_sent(server: str) -> None:
    with client(server) as api:
        started = time.monotonic()
        events = api.watch("/api/v1/pods", {"fieldSelector": "spec.nodeName=n"}, "7")
        first = next(events)
        assert time.monotonic() - started < 0.25  # not held back until the stream ends
        assert first["type"] == "ADDED"
        assert [e["type"] for e in events] == ["MODIFIED"]
        assert api.get("/api/v1/namespaces/default")["kind"] == "Namespace"  # the pool still works


def test_a_watch_left_early_does_not_spoil_the_next_request(server: str) -> None:
    with client(server) as api:
        events = api.watch("/api/v1/pods", {}, "7")
        next(events)
        events.close()
        assert api.get("/api/v1/namespaces/default")["kind"] == "Namespace"


def test_a_watch_error_event_is_an_api_error_with_its_code(server: str) -> None:
    with client(server) as api, pytest.raises(ApiError) as caught:
        list(api.watch("/api/v1/pods", {}, "old"))
    assert caught.value.status == 410


def test_an_unreachable_apiserver_is_a_transport_error() -> None:
    with client("http://127.0.0.1:9") as api, pytest.raises(TransportError, match="GET /version"):
        api.get("/version")
