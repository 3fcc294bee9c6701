"""A real wasmlet node's kubelet API under connection attacks, used by the real apiserver meanwhile.

The node runs with ``--max-api-connections`` small, so that a handful of anonymous sockets fill
it; ``kubectl logs -f`` (the apiserver's own connection to the node) must still get through.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    Cluster,
    Pods,
    Registry,
    joined_node,
    push_wat,
    tracked_pods,
    unique,
    wait_for,
)
from wasmlet_proc import WasmletNode

from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration

NODE_IP = "127.0.0.51"
CAP = 6


@pytest.fixture(scope="module")
def node(
    cluster: Cluster, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WasmletNode]:
    admin = cluster.admin()
    tmp = tmp_path_factory.mktemp("api-connections")
    flags = ("--insecure-registries", registry.host, "--max-api-connections", str(CAP))
    with joined_node(admin, tmp, unique("api-conns"), NODE_IP, *flags) as node:
        yield node
    admin.close()


@pytest.fixture
def node_pods(admin: Client, node: WasmletNode) -> Iterator[Pods]:
    yield from tracked_pods(admin, node)


def _peer(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _closed_by_node(sock: socket.socket, within: float = 15.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _log_lines_about(node: WasmletNode, peer: str) -> list[str]:
    return [line for line in node.log().splitlines() if f"from {peer}:" in line]


def _kubelet_api_tracebacks(node: WasmletNode) -> list[str]:
    """Traceback lines from the kubelet API's code (other parts of the node are not under test here)."""
    api_files = ("socketserver.py", "http/server.py", "wasmlet/server.py", "wasmlet/connections.py", "ssl.py")
    return [
        line
        for line in node.log().splitlines()
        if line.lstrip().startswith("File ") and any(f in line for f in api_files)
    ]


def test_kubectl_logs_follows_through_the_apiserver_while_anonymous_connections_fill_the_cap(
    cluster: Cluster, node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    name = node_pods.create(unique("hello"), push_wat(registry, "hello_loop", tmp_path))
    node_pods.wait_state(name, "running")
    squatters = [socket.create_connection((NODE_IP, node.port), timeout=15) for _squatter in range(CAP)]
    try:
        creds = kubeconfig.load(cluster.admin_kubeconfig)
        with (
            httpx.Client(base_url=creds.server, verify=creds.ssl_context(), timeout=15) as http,
            http.stream(
                "GET",
                f"/api/v1/namespaces/default/pods/{name}/log",
                params={"follow": "true", "tailLines": "0"},
            ) as resp,
        ):
            assert resp.status_code == 200, resp.read()
            start = time.monotonic()
            for line in resp.iter_lines():
                assert line == "Hello, World!"
                break
            assert time.monotonic() - start < 5
        # The apiserver's connection took the place of the oldest anonymous one.
        assert _closed_by_node(squatters[0])
        lines = wait_for("the node's line", lambda: _log_lines_about(node, _peer(squatters[0])), timeout=10)
        assert len(lines) == 1 and "--max-api-connections" in lines[0], lines
    finally:
        for sock in squatters:
            sock.close()
    assert not _kubelet_api_tracebacks(node)


def test_a_half_sent_request_is_one_line_in_the_node_log(cluster: Cluster, node: WasmletNode) -> None:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    with ctx.wrap_socket(
        socket.create_connection((NODE_IP, node.port), timeout=15), server_hostname=NODE_IP
    ) as half:
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        peer = _peer(half)
    lines = wait_for("the node's line", lambda: _log_lines_about(node, peer), timeout=10)
    assert len(lines) == 1, lines
    assert not _kubelet_api_tracebacks(node)
