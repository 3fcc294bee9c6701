"""Pods that serve, against a real node: pod IPs from the node's podCIDR, WAGI handlers on them,
a Deployment behind a Service whose EndpointSlice fills in, listeners gone with their pods, the
routes that keep the cluster's ranges on the machine, and host ports refused as kubelet does."""

from __future__ import annotations

import functools
import http.client
import http.server
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CLUSTER_CIDR,
    SERVICE_CIDR,
    Pods,
    Registry,
    delete_quietly,
    pod_manifest,
    push_wat,
    unique,
    wait_for,
)
from http_pods import APPS, cgi_variables, ready_endpoints, request, running_pod_ips, served_deployment
from wasmlet_proc import WasmletNode

from wasmlet.kube.client import Client
from wasmlet.network import interface

pytestmark = pytest.mark.integration


def pod_cidr(admin: Client, node: WasmletNode) -> ipaddress.IPv4Network:
    cidr = admin.get(f"/api/v1/nodes/{node.name}")["spec"]["podCIDR"]
    return ipaddress.IPv4Network(cidr)


def wagi_annotation(container: str, route: str = "/...") -> dict[str, str]:
    return {"wasmlet.dev/wagi": json.dumps({container: {"route": route}})}


@pytest.fixture
def wagi_image(registry: Registry, tmp_path: Path) -> str:
    return push_wat(registry, "wagi_env", tmp_path)


@pytest.fixture
def deployment(admin: Client, wasm_node: WasmletNode, wagi_image: str) -> Iterator[str]:
    """A Deployment of 3 WAGI replicas on the session node and a Service in front of them."""
    container = {
        "name": "hello",
        "image": wagi_image,
        "ports": [{"containerPort": 8080}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        ],
    }
    annotations = wagi_annotation("hello", "/hello/...")
    with served_deployment(
        admin, wasm_node.name, unique("hello-http"), container, replicas=3, annotations=annotations
    ) as name:
        yield name


def scale(admin: Client, name: str, replicas: int) -> None:
    admin.patch(f"{APPS}/deployments/{name}/scale", {"spec": {"replicas": replicas}})


def refused(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_deployment_behind_a_service_serves_from_pod_ips_and_scales_to_zero_and_back(
    admin: Client, wasm_node: WasmletNode, deployment: str
) -> None:
    cidr = pod_cidr(admin, wasm_node)

    def three_ready() -> list[str] | None:
        ips = running_pod_ips(admin, deployment)
        return ips if len(ips) == 3 and ready_endpoints(admin, deployment) == ips else None

    ips = wait_for("3 replicas Running and ready in the Service's EndpointSlice", three_ready, timeout=60)
    assert all(ipaddress.IPv4Address(ip) in cidr for ip in ips), (ips, cidr)
    for ip in ips:
        status, text = request(ip, 8080, "POST", "/hello/world?x=1", body=b"ping")
        assert status == 200, text
        cgi = cgi_variables(text)
        assert cgi["REQUEST_METHOD"] == "POST"
        assert (cgi["SCRIPT_NAME"], cgi["PATH_INFO"], cgi["QUERY_STRING"]) == ("/hello", "/world", "x=1")
        assert (cgi["SERVER_NAME"], cgi["SERVER_PORT"]) == (ip, "8080")
        assert (cgi["POD_IP"], cgi["HOST_IP"]) == (ip, wasm_node.ip)  # the downward API's view
        assert cgi["X_MATCHED_ROUTE"] == "/hello/..."
        assert text.endswith("body=ping")
        assert request(ip, 8080, "GET", "/elsewhere")[0] == 404

    scale(admin, deployment, 0)
    wait_for("the EndpointSlice to empty", lambda: ready_endpoints(admin, deployment) == [], timeout=60)
    wait_for("every listener to close", lambda: all(refused(ip, 8080) for ip in ips), timeout=30)

    scale(admin, deployment, 3)
    again = wait_for("3 replicas again", three_ready, timeout=60)
    for ip in again:
        assert request(ip, 8080, "GET", "/hello")[0] == 200


def test_pod_ips_are_distinct_and_freed_with_their_pods(
    admin: Client, wasm_node: WasmletNode, pods: Pods, wagi_image: str
) -> None:
    cidr = pod_cidr(admin, wasm_node)
    first = pods.create(unique("ip-a"), wagi_image, restartPolicy="Never")
    second = pods.create(unique("ip-b"), wagi_image, restartPolicy="Never")
    for name in (first, second):
        pods.wait_state(name, "terminated")  # not annotated as a handler: it runs once and ends
    a, b = (pods.get(name)["status"]["podIP"] for name in (first, second))
    assert a != b
    assert ipaddress.IPv4Address(a) in cidr and ipaddress.IPv4Address(b) in cidr
    assert ipaddress.IPv4Address(a) not in {cidr.network_address, cidr.network_address + 1}


def test_a_host_network_pod_has_the_node_ip(
    wasm_node: WasmletNode, host_path_pods: Pods, wagi_image: str
) -> None:
    pods = host_path_pods  # a privileged namespace: baseline Pod Security refuses hostNetwork
    name = pods.create(unique("host-net"), wagi_image, hostNetwork=True, restartPolicy="Never")
    pods.wait_state(name, "terminated")
    status = pods.get(name)["status"]
    assert status["podIP"] == status["hostIP"] == wasm_node.ip


def test_a_host_port_taken_by_another_pod_is_refused_with_the_kubelets_reason(
    host_path_pods: Pods, wagi_image: str
) -> None:
    pods = host_path_pods  # a privileged namespace: baseline Pod Security refuses host ports
    port = {"ports": [{"containerPort": 8080, "hostPort": 18080}]}
    first = unique("port-a")
    manifest = pod_manifest(first, pods.node.name, wagi_image, port)
    manifest["metadata"]["annotations"] = wagi_annotation(first.rsplit("-", 1)[0])
    pods.admin.post(f"{pods.path}/pods", manifest)
    pods.created.append(first)
    pods.wait_state(first, "running")  # a handler: it holds its host port while it runs
    # The scheduler would keep it Pending: bound by hand, it reaches the node's own admission.
    second = pods.create(unique("port-b"), wagi_image, port, restartPolicy="Never", nodeName=pods.node.name)

    def failed() -> dict[str, Any] | None:
        status = pods.get(second).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for("the second pod to be refused", failed, timeout=30)
    assert status["reason"] == "NodePorts"
    assert status["message"] == (
        "Pod was rejected: Predicate NodePorts failed: "
        "node(s) didn't have free ports for the requested pod ports"
    )


def test_a_malformed_wagi_annotation_is_a_config_error_naming_it(pods: Pods, wagi_image: str) -> None:
    name = unique("bad-wagi")
    manifest = pod_manifest(name, pods.node.name, wagi_image)
    manifest["metadata"]["annotations"] = {"wasmlet.dev/wagi": '{"nosuch": {}}'}
    pods.admin.post(f"{pods.path}/pods", manifest)
    pods.created.append(name)
    waiting = pods.wait_state(name, "waiting", "CreateContainerConfigError")
    assert waiting["message"] == "annotation wasmlet.dev/wagi: 'nosuch' is not a container of the pod"


def test_routes_keep_the_cluster_ranges_on_the_machine(admin: Client, wasm_node: WasmletNode) -> None:
    """No packet for a pod or Service address may leave through the uplink: the node's own range is
    local, every other address of the cluster's ranges goes into wasmlet0."""
    uplink = interface.route_of("198.51.100.1").split(" dev ")[1].split()[0]  # where the world goes
    cidr = pod_cidr(admin, wasm_node)
    unused_here = str(cidr.network_address + cidr.num_addresses - 2)
    # Every node on this host makes its own range local: take an address of a range none holds.
    ranges = reversed(list(ipaddress.IPv4Network(CLUSTER_CIDR).subnets(new_prefix=22)))
    candidates = (str(n[5]) for n in ranges)
    elsewhere = next(a for a in candidates if not interface.route_of(a).startswith("local "))
    cluster_ip = str(ipaddress.IPv4Network(SERVICE_CIDR).network_address + 4242)
    assert interface.route_of(unused_here).startswith(f"local {unused_here} dev lo")
    for address in (elsewhere, cluster_ip):
        route = interface.route_of(address)
        assert f"dev {interface.BRIDGE}" in route, route
        assert f"dev {uplink}" not in route and " via " not in route, route
    for address in (unused_here, elsewhere, cluster_ip):
        with pytest.raises(OSError):  # refused here, or no route to host: never sent out
            socket.create_connection((address, 80), timeout=5).close()


class Health:
    """An HTTP server on loopback that answers what the test says: what probes call here."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    server = Health()
    yield server
    server.close()


def probe_at(port: int, path: str = "/", **timing: int) -> dict[str, Any]:
    return {
        "httpGet": {"host": "127.0.0.1", "port": port, "path": path},
        "periodSeconds": 1,
        "failureThreshold": 1,
        **timing,
    }


def handler_pod(pods: Pods, name: str, image: str, **container: Any) -> str:
    manifest = pod_manifest(name, pods.node.name, image, {"ports": [{"containerPort": 8080}], **container})
    manifest["metadata"]["annotations"] = wagi_annotation(name.rsplit("-", 1)[0])
    manifest["spec"]["terminationGracePeriodSeconds"] = 1
    pods.admin.post(f"{pods.path}/pods", manifest)
    pods.created.append(name)
    return name


def pod_ready(pods: Pods, name: str) -> bool:
    conditions = pods.get(name).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_a_failing_readiness_probe_takes_the_pod_out_of_its_services_endpoints(
    admin: Client, host_path_pods: Pods, wagi_image: str, health: Health
) -> None:
    pods = host_path_pods  # privileged: baseline Pod Security refuses a probe's host (the test's server)
    name = handler_pod(pods, unique("ready"), wagi_image, readinessProbe=probe_at(health.port))
    service = name
    admin.post(
        f"{pods.path}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    endpoints = functools.partial(ready_endpoints, admin, service, pods.namespace)
    try:
        wait_for("the pod Ready", lambda: pod_ready(pods, name), timeout=30)
        ip = pods.get(name)["status"]["podIP"]
        wait_for("its endpoint ready", lambda: endpoints() == [ip], timeout=30)

        health.status = 503
        wait_for("the pod not Ready", lambda: not pod_ready(pods, name), timeout=30)
        wait_for("its endpoint out", lambda: endpoints() == [], timeout=30)
        event = pods.wait_event(name, "Unhealthy")
        assert event["message"] == "Readiness probe failed: HTTP probe failed with statuscode: 503"
        assert pods.container(name)["restartCount"] == 0  # readiness never restarts
        assert request(ip, 8080, "GET", "/")[0] == 200  # it still serves; it is only out of the Service

        health.status = 200
        wait_for("its endpoint back", lambda: endpoints() == [ip], timeout=30)
    finally:
        delete_quietly(admin, f"{pods.path}/services/{service}")


def test_a_liveness_failure_restarts_the_container(
    host_path_pods: Pods, wagi_image: str, health: Health
) -> None:
    pods = host_path_pods  # privileged: baseline Pod Security refuses a probe's host (the test's server)
    name = handler_pod(pods, unique("alive"), wagi_image, livenessProbe=probe_at(health.port))
    pods.wait_state(name, "running")
    health.status = 500
    container = name.rsplit("-", 1)[0]
    pods.wait_event(name, "Killing", f"Container {container} failed liveness probe, will be restarted")
    pods.wait_event(name, "Unhealthy", "Liveness probe failed: HTTP probe failed with statuscode: 500")
    health.status = 200
    restarted = wait_for("a restart", lambda: pods.container(name).get("restartCount", 0) >= 1, timeout=30)
    assert restarted
    pods.wait_state(name, "running")
    ip = pods.get(name)["status"]["podIP"]
    wait_for("it to serve again", lambda: request(ip, 8080, "GET", "/")[0] == 200, timeout=30)


def test_probes_on_the_pods_own_address_gate_ready_and_started(pods: Pods, wagi_image: str) -> None:
    tcp = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    get = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    name = handler_pod(pods, unique("own"), wagi_image, startupProbe=tcp, readinessProbe=get)
    wait_for("the pod Ready", lambda: pod_ready(pods, name), timeout=30)
    status = pods.container(name)
    assert status["started"] is True and status["ready"] is True


def test_an_exec_probe_is_refused_naming_it(pods: Pods, wagi_image: str) -> None:
    name = pods.create(unique("exec-probe"), wagi_image, {"livenessProbe": {"exec": {"command": ["true"]}}})
    waiting = pods.wait_state(name, "waiting", "CreateContainerConfigError")
    container = name.rsplit("-", 1)[0]
    assert waiting["message"] == (
        f"container {container}: livenessProbe: exec probes run a command in the container, and a "
        "WebAssembly pod has no process: not supported by wasmlet"
    )
    pods.wait_event(name, "Failed", f"Error: {waiting['message']}")
