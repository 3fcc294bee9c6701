"""Services against a real node: the control plane's kube-proxy (iptables mode) turns a ClusterIP
into the pod IPs of its EndpointSlice, so a Service of WAGI pods answers on its ClusterIP from the
host, spread over its pods; with no endpoints left it refuses, and no packet for it ever takes the
uplink."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Registry, push_wat, unique, wait_for
from http_pods import APPS, CORE, cgi_variables, ready_endpoints, request, running_pod_ips, served_deployment
from wasmlet_proc import WasmletNode

from wasmlet.kube.client import Client
from wasmlet.network import interface

pytestmark = pytest.mark.integration

BRIDGE = interface.BRIDGE
REPLICAS = 2


def device(route_line: str) -> str:
    words = route_line.split()
    return words[words.index("dev") + 1]


def answers(ip: str, port: int) -> bool:
    """Whether something accepts a connection within 5 s; refused and timed out are both 'no'."""
    try:
        socket.create_connection((ip, port), timeout=5).close()
    except (ConnectionRefusedError, TimeoutError):
        return False
    return True


@pytest.fixture
def service(admin: Client, wasm_node: WasmletNode, registry: Registry, tmp_path: Path) -> Iterator[str]:
    """A Deployment of 2 WAGI replicas on the session node and a ClusterIP Service (80 -> 8080)."""
    container = {
        "name": "web",
        "image": push_wat(registry, "wagi_env", tmp_path),
        "ports": [{"containerPort": 8080}],
    }
    annotations = {"wasmlet.dev/wagi": json.dumps({"web": {"route": "/..."}})}
    with served_deployment(
        admin, wasm_node.name, unique("svc-http"), container, replicas=REPLICAS, annotations=annotations
    ) as name:
        yield name


def test_a_cluster_ip_answers_from_the_host_spread_over_its_pods_and_refuses_without_them(
    admin: Client, service: str
) -> None:
    def all_ready() -> list[str] | None:
        ips = running_pod_ips(admin, service)
        return ips if len(ips) == REPLICAS and ready_endpoints(admin, service) == ips else None

    pod_ips = wait_for(f"{REPLICAS} replicas Running and ready in the EndpointSlice", all_ready, timeout=60)
    cluster_ip = admin.get(f"{CORE}/services/{service}")["spec"]["clusterIP"]

    # The ClusterIP is routed into the node-local bridge, never towards the uplink.
    uplink = device(interface.route_of("198.51.100.1"))  # where the rest of the world goes
    assert uplink != BRIDGE
    found = interface.route_of(cluster_ip)
    assert device(found) == BRIDGE, found
    assert f"dev {uplink}" not in found and " via " not in found, found

    # kube-proxy programs the Service within its sync period.
    def first_answer() -> tuple[int, str] | None:
        try:
            return request(cluster_ip, 80, path="/hello")
        except OSError:
            return None

    status, text = wait_for(f"ClusterIP {cluster_ip}:80 to answer", first_answer, timeout=60, interval=0.5)
    assert status == 200, text
    cgi = cgi_variables(text)
    assert cgi["SERVER_NAME"] in pod_ips and cgi["SERVER_PORT"] == "8080", cgi
    assert cgi["PATH_INFO"] == "/hello", cgi

    # Each connection goes to an endpoint picked at random: both pods answer sooner or later. The
    # first answer may come while kube-proxy knows one endpoint only (it syncs at most once a
    # second, and the pods became ready apart): keep asking until its next sync, 30 s at most.
    served: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, text = request(cluster_ip, 80)
        assert status == 200, text
        server = cgi_variables(text)["SERVER_NAME"]
        served[server] = served.get(server, 0) + 1
        if set(served) == set(pod_ips) and min(served.values()) >= 3:
            break
        time.sleep(0.02)
    assert set(served) == set(pod_ips), served
    assert min(served.values()) >= 3, served

    # No endpoints: kube-proxy rejects connections to the ClusterIP (or they time out).
    admin.patch(f"{APPS}/deployments/{service}/scale", {"spec": {"replicas": 0}})
    wait_for("the EndpointSlice to empty", lambda: ready_endpoints(admin, service) == [], timeout=60)
    wait_for(f"ClusterIP {cluster_ip}:80 to stop answering", lambda: not answers(cluster_ip, 80), timeout=30)
    for _again in range(3):  # and it stays that way
        assert not answers(cluster_ip, 80)
    found = interface.route_of(cluster_ip)
    assert device(found) == BRIDGE and f"dev {uplink}" not in found, found
