"""Memory pressure on a real node: one pod takes memory until the node runs short; it alone is evicted.

The node is this module's own, on 127.0.0.61, run in a memory cgroup of its own limited to
1536Mi (as a container or a systemd unit with MemoryMax would run it), with
``--eviction-hard memory.available<600Mi``: pressure starts when the node's working set passes
936Mi, well before the kernel's OOM killer would end the whole node at 1536Mi.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, Pods, Registry, joined_node, push_wat, tracked_pods, unique, wait_for
from wasmlet_proc import WasmletNode

from wasmlet.kube.client import Client
from wasmlet.kube.quantity import parse_quantity

pytestmark = pytest.mark.integration

NODE_IP = "127.0.0.61"
LIMIT = 1536 << 20
THRESHOLD = "600Mi"
TRANSITION = 20  # seconds MemoryPressure stays after memory is back
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


@pytest.fixture(scope="module")
def memory_cgroup() -> Iterator[Path]:
    """A cgroup v1 memory group limited to :data:`LIMIT`, removed after the module."""
    assert (CGROUP_V1 / "cgroup.procs").exists(), (
        f"this test needs the cgroup v1 memory controller at {CGROUP_V1}"
    )
    group = CGROUP_V1 / f"wasmlet-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(LIMIT))
        yield group
    finally:
        deadline = time.monotonic() + 5  # the node's process leaves the group when it exits
        while group.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                group.rmdir()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def node(
    cluster: Cluster, registry: Registry, memory_cgroup: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WasmletNode]:
    admin = cluster.admin()
    flags = (
        "--insecure-registries",
        registry.host,
        "--eviction-hard",
        f"memory.available<{THRESHOLD}",
        "--eviction-pressure-transition-period",
        f"{TRANSITION}s",
    )
    tmp = tmp_path_factory.mktemp("memory-pressure")
    with joined_node(admin, tmp, unique("pressure"), NODE_IP, *flags, cgroup=memory_cgroup) as node:
        yield node
    admin.close()


@pytest.fixture
def node_pods(admin: Client, node: WasmletNode) -> Iterator[Pods]:
    yield from tracked_pods(admin, node)


def memory_pressure(admin: Client, node: str) -> str:
    status = admin.get(f"/api/v1/nodes/{node}")["status"]
    return str(next(c["status"] for c in status["conditions"] if c["type"] == "MemoryPressure"))


def lease_renewed(admin: Client, node: str) -> str:
    return str(
        admin.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")["spec"][
            "renewTime"
        ]
    )


def resources(request: str, limit: str) -> dict[str, Any]:
    return {"resources": {"requests": {"memory": request}, "limits": {"memory": limit}}}


def test_the_pod_over_its_request_is_evicted_and_its_neighbours_keep_running(
    admin: Client, node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    status = admin.get(f"/api/v1/nodes/{node.name}")["status"]
    # The cgroup's limit is the node's memory; allocatable leaves the threshold out.
    assert parse_quantity(status["capacity"]["memory"]) == LIMIT
    assert parse_quantity(status["allocatable"]["memory"]) == LIMIT - (600 << 20)

    hoard = push_wat(registry, "hoard", tmp_path)
    calm = node_pods.create(unique("calm"), hoard, {"args": ["8"], **resources("64Mi", "64Mi")})
    node_pods.wait_state(calm, "running")
    lease_before = lease_renewed(admin, node.name)

    # Within its own limit (2Gi), over its request (16Mi), and more than the node can spare.
    hog = node_pods.create(unique("hoard"), hoard, {"args": ["1000"], **resources("16Mi", "2Gi")})

    def failed() -> dict[str, Any] | None:
        pod_status: dict[str, Any] = node_pods.get(hog).get("status") or {}
        return pod_status if pod_status.get("phase") == "Failed" else None

    evicted = wait_for(f"pod {hog} to be evicted", failed, timeout=60)
    assert evicted["reason"] == "Evicted"
    message = evicted["message"]
    assert message.startswith(
        f"The node was low on resource: memory. Threshold quantity: {THRESHOLD}, available: "
    )
    assert "Container hoard was using " in message
    assert message.endswith(", request is 16Mi, has larger consumption of memory. ")
    target = next(c for c in evicted["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"], target["message"]) == (
        "True",
        "TerminationByKubelet",
        message,
    )
    assert node_pods.wait_event(hog, "Evicted")["message"] == message
    killed = node_pods.wait_state(hog, "terminated", timeout=10)
    assert killed["exitCode"] == 137

    # The node said so, and took no BestEffort pod meanwhile (bound directly, past the scheduler).
    wait_for("MemoryPressure=True", lambda: memory_pressure(admin, node.name) == "True" or None, timeout=20)
    refused = node_pods.create(unique("besteffort"), hoard, {"args": ["1"]}, nodeName=node.name)
    refusal = wait_for(f"pod {refused} to be refused", lambda: node_pods.get(refused)["status"].get("reason"))
    assert refusal == "Evicted"
    assert (
        node_pods.get(refused)["status"]["message"]
        == "Pod was rejected: The node had condition: [MemoryPressure]. "
    )

    # Its neighbour never noticed; the Lease kept being renewed; the pressure ends.
    calm_status = node_pods.container(calm)
    assert "running" in calm_status["state"] and calm_status["restartCount"] == 0
    assert node_pods.logs(calm) == ""
    wait_for(
        "the Lease to be renewed", lambda: lease_renewed(admin, node.name) != lease_before or None, timeout=20
    )
    wait_for(
        "MemoryPressure=False",
        lambda: memory_pressure(admin, node.name) == "False" or None,
        timeout=TRANSITION + 30,
    )
    assert "Evicted" not in {e["reason"] for e in node_pods.events(calm)}
