"""``kubectl port-forward`` to pods on a real node, through the real kube-apiserver 1.36.

kubectl 1.36 speaks WebSocket (``SPDY/3.1+portforward.k8s.io``) to the apiserver, which tunnels it
as a SPDY/3.1 upgrade to the node's ``/portForward`` (the node declares no
``ExtendWebSocketsToKubelet``); the node forwards each local connection to the pod's IP.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, Pods, Registry, delete_quietly, pod_manifest, push_wat, unique, wait_for
from wasmlet_proc import WasmletNode

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration


@pytest.fixture
def wagi_image(registry: Registry, tmp_path: Path) -> str:
    return push_wat(registry, "wagi_env", tmp_path)


def handler_pod(pods: Pods, image: str) -> str:
    """A WAGI handler on containerPort 8080, Running, its listener open on its pod IP."""
    name = unique("forwarded")
    manifest = pod_manifest(name, pods.node.name, image, {"ports": [{"containerPort": 8080}]})
    container = name.rsplit("-", 1)[0]
    manifest["metadata"]["annotations"] = {"wasmlet.dev/wagi": json.dumps({container: {"route": "/..."}})}
    manifest["spec"]["terminationGracePeriodSeconds"] = 1
    pods.admin.post(f"{pods.path}/pods", manifest)
    pods.created.append(name)
    pods.wait_state(name, "running")
    wait_for("its pod IP", lambda: pods.get(name).get("status", {}).get("podIP"), timeout=30)
    return name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class PortForward:
    """``kubectl port-forward <what> <local>:<remote>`` running, its output collected."""

    def __init__(self, cluster: Cluster, what: str, remote: int) -> None:
        self.local = free_port()
        self.proc = subprocess.Popen(
            [
                str(cluster.kubectl),
                "--kubeconfig",
                str(cluster.admin_kubeconfig),
                "port-forward",
                "--address",
                "127.0.0.1",
                what,
                f"{self.local}:{remote}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True).start()
        try:
            wait_for(
                f"kubectl port-forward {what} to listen",
                lambda: (
                    any(line.startswith("Forwarding from 127.0.0.1:") for line in self.stdout)
                    or self.proc.poll() is not None
                ),
                timeout=30,
            )
        except AssertionError:
            self.stop()
            raise
        assert self.proc.poll() is None, self.output()

    @staticmethod
    def _collect(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(["stdout:", *self.stdout, "stderr:", *self.stderr])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def forwards(cluster: Cluster) -> Iterator[list[PortForward]]:
    started: list[PortForward] = []
    yield started
    for forward in started:
        forward.stop()


def forward(cluster: Cluster, forwards: list[PortForward], what: str, remote: int) -> PortForward:
    running = PortForward(cluster, what, remote)
    forwards.append(running)
    return running


def assert_handler_answers(port: int) -> None:
    status, body = get(port)
    assert status == 200, body
    assert "REQUEST_METHOD=GET" in body


def test_kubectl_port_forward_to_a_pod(
    cluster: Cluster, pods: Pods, wagi_image: str, forwards: list[PortForward], wasm_node: WasmletNode
) -> None:
    logged = len(wasm_node.log())
    name = handler_pod(pods, wagi_image)
    running = forward(cluster, forwards, f"pod/{name}", 8080)
    assert f"Forwarding from 127.0.0.1:{running.local} -> 8080" in running.stdout
    assert_handler_answers(running.local)
    assert_handler_answers(running.local)  # a second connection on the same upgraded stream
    status, body = get(running.local, "/some/path?x=1")
    assert status == 200 and "PATH_INFO=/some/path" in body and "QUERY_STRING=x=1" in body, body
    assert running.proc.poll() is None, running.output()
    assert sum("Handling connection for" in line for line in running.stdout) == 3
    assert "Traceback" not in wasm_node.log()[logged:]


def test_kubectl_port_forward_to_a_service(
    admin: Client, cluster: Cluster, pods: Pods, wagi_image: str, forwards: list[PortForward]
) -> None:
    name = handler_pod(pods, wagi_image)
    admin.post(
        f"{pods.path}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    try:
        running = forward(cluster, forwards, f"svc/{name}", 80)
        assert f"Forwarding from 127.0.0.1:{running.local} -> 8080" in running.stdout  # the targetPort
        assert_handler_answers(running.local)
        assert_handler_answers(running.local)
    finally:
        delete_quietly(admin, f"{pods.path}/services/{name}")


def test_a_port_the_pod_does_not_listen_on_is_an_error_for_the_client_only(
    cluster: Cluster, pods: Pods, wagi_image: str, forwards: list[PortForward], wasm_node: WasmletNode
) -> None:
    logged = len(wasm_node.log())
    name = handler_pod(pods, wagi_image)
    uid = pods.get(name)["metadata"]["uid"]
    ip = pods.get(name)["status"]["podIP"]
    wrong = forward(cluster, forwards, f"pod/{name}", 9999)
    with pytest.raises((ConnectionError, http.client.HTTPException, TimeoutError)):
        get(wrong.local)
    # kubectl reports the node's error and gives up on the connection, as with a kubelet.
    wait_for("kubectl to exit", lambda: wrong.proc.poll() is not None, timeout=30)
    time.sleep(0.2)  # the collector threads read the last lines
    errors = "\n".join(wrong.stderr)
    expected = (
        f"error forwarding port 9999 to pod default/{name}, uid {uid}: dial tcp {ip}:9999: "
        "connect: connection refused"
    )
    assert expected in errors, wrong.output()
    assert wrong.proc.returncode != 0

    # The node goes on: the pod's own port still forwards, on a new connection.
    right = forward(cluster, forwards, f"pod/{name}", 8080)
    assert_handler_answers(right.local)
    log = wasm_node.log()[logged:]
    assert expected in log  # one line, as the kubelet logs it
    assert "Traceback" not in log
