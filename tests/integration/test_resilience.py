"""Resilience of a real wasmlet node: the apiserver down for a minute, the registry down, and
hundreds of pods created and deleted without leaking threads, file descriptors or memory.

These tests stop shared services (the apiserver, a registry of their own) and run a node of
their own on 127.0.0.7, so the session's node is not involved.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Cluster,
    Pods,
    Registry,
    joined_node,
    node_ready,
    push_wat,
    run_playbook,
    tracked_pods,
    unique,
    wait_for,
)
from wasmlet_proc import WasmletNode

from wasmlet.kube.client import Client
from wasmlet.ops import supervision

pytestmark = pytest.mark.integration

FLAKY_REGISTRY = {"registry_name": "registry-flaky", "registry_port": 5002}
FLAKY_HOST = "127.0.0.1:5002"


@pytest.fixture(scope="module")
def node(
    cluster: Cluster, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WasmletNode]:
    admin = cluster.admin()
    registries = f"{registry.host},{FLAKY_HOST}"
    tmp = tmp_path_factory.mktemp("resilient")
    with joined_node(
        admin, tmp, unique("resilient"), "127.0.0.7", "--insecure-registries", registries
    ) as node:
        yield node
    admin.close()


@pytest.fixture
def node_pods(admin: Client, node: WasmletNode) -> Iterator[Pods]:
    yield from tracked_pods(admin, node)


def lease_renewed(admin: Client, node: str, after: dt.datetime) -> str | None:
    lease = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
    renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    return lease["spec"]["renewTime"] if renewed > after else None


def log_size(node: WasmletNode, pod: str) -> int:
    return sum(p.stat().st_size for p in (node.data_dir / "logs").glob(f"default_{pod}_*/**/*.log"))


def test_apiserver_down_for_a_minute_workloads_keep_running_and_everything_resumes(
    cluster: Cluster, node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    admin = node_pods.admin
    looping = node_pods.create(unique("steady"), push_wat(registry, "hello_loop", tmp_path))
    finishing = node_pods.create(
        unique("finisher"), push_wat(registry, "sleep10", tmp_path), restartPolicy="Never"
    )
    node_pods.wait_state(looping, "running")
    node_pods.wait_state(finishing, "running")
    spec = json.loads((cluster.run_dir / "kube-apiserver.json").read_text())
    assert supervision.stop(cluster.run_dir, "kube-apiserver")
    stopped_at = dt.datetime.now(dt.UTC)
    try:
        size = log_size(node, looping)
        time.sleep(60)
        # The module kept printing while nobody could see it, and the finisher finished.
        assert log_size(node, looping) >= size + len("Hello, World!\n") * 50
        assert node.process.poll() is None
    finally:
        supervision.start(
            supervision.ServiceSpec(
                spec["name"], Path(spec["directory"]), tuple(spec["argv"]), spec["env"], spec["grace"]
            )
        )
    wait_for("the apiserver", lambda: _ready(cluster), timeout=90)
    wait_for("the Lease to be renewed", lambda: lease_renewed(admin, node.name, stopped_at), timeout=60)
    wait_for(f"node {node.name} Ready", lambda: node_ready(admin, node.name), timeout=60)
    # Status converges: the pod that finished during the outage is reported Succeeded.
    done = node_pods.wait_state(finishing, "terminated", "Completed", timeout=90)
    assert done["exitCode"] == 0
    assert node_pods.get(finishing)["status"]["phase"] == "Succeeded"
    assert node_pods.container(looping)["restartCount"] == 0
    assert "running" in node_pods.container(looping)["state"]

    # The node lifecycle controller marked the pods not Ready while the node was silent; the
    # node puts its own view back.
    def ready() -> bool:
        conditions = node_pods.get(looping)["status"]["conditions"]
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(f"pod {looping} Ready again", ready, timeout=60)
    # The watch resumed: a pod created now starts.
    fresh = node_pods.create(unique("after"), push_wat(registry, "hello_loop", tmp_path))
    node_pods.wait_state(fresh, "running", timeout=90)


def _ready(cluster: Cluster) -> bool:
    try:
        with cluster.admin() as client:
            return client.request("GET", "/readyz") is not None
    except Exception:
        return False


@pytest.fixture
def flaky_registry() -> Iterator[Registry]:
    run_playbook("registry.yml", FLAKY_REGISTRY)
    yield Registry(host=FLAKY_HOST)
    run_playbook("registry.yml", {**FLAKY_REGISTRY, "registry_state": "absent"})


def test_registry_down_backs_off_then_recovers_without_intervention(
    node_pods: Pods, flaky_registry: Registry, tmp_path: Path
) -> None:
    image = push_wat(flaky_registry, "hello_loop", tmp_path)
    run_playbook("registry.yml", {**FLAKY_REGISTRY, "registry_state": "stopped"})
    name = node_pods.create(unique("patient"), image)
    waiting = node_pods.wait_state(name, "waiting", "ImagePullBackOff", timeout=60)
    assert FLAKY_HOST in waiting["message"]
    run_playbook("registry.yml", FLAKY_REGISTRY)
    node_pods.wait_state(name, "running", timeout=120)
    reasons = [e["reason"] for e in node_pods.events(name)]
    assert "BackOff" in reasons
    assert "Pulled" in reasons


def _fds(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return sorted(targets)


def _process(pid: int) -> dict[str, Any]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "threads": int(status["Threads"]),
        "fds": _fds(pid),
        "rss_kib": int(status["VmRSS"].split()[0]),
    }


def _cycle(pods: Pods, image: str, count: int) -> None:
    names = [pods.create(unique("churn"), image) for _number in range(count)]
    for name in names:
        pods.wait_state(name, "running", timeout=120)
    for name in names:
        pods.admin.request("DELETE", f"/api/v1/namespaces/default/pods/{name}")
    pods.created.clear()

    def gone() -> bool:
        items: list[dict[str, Any]] = pods.admin.get(
            "/api/v1/pods", {"fieldSelector": f"spec.nodeName={pods.node.name}"}
        )["items"]
        return not any(p["metadata"]["name"] in names for p in items)

    wait_for(f"{count} pods deleted", gone, timeout=120)


def test_creating_and_deleting_hundreds_of_pods_leaks_nothing(
    node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    image = push_wat(registry, "hello_loop", tmp_path)
    # Warm-up at full size: caches, connection pools and worker threads reach their working size.
    _cycle(node_pods, image, 100)
    time.sleep(2)
    before = _process(node.process.pid)
    for _round in range(3):
        _cycle(node_pods, image, 100)
    time.sleep(2)
    after = _process(node.process.pid)
    # What is open now and was not before, counted: a second descriptor of a path open before counts.
    new_fds = sorted((Counter(after["fds"]) - Counter(before["fds"])).elements())
    assert after["threads"] <= before["threads"] + 2, (before["threads"], after["threads"])
    # Sockets come and go with the HTTP connection pool (bounded); files and directories must not.
    files_before = [fd for fd in before["fds"] if not fd.startswith("socket:")]
    files_after = [fd for fd in after["fds"] if not fd.startswith("socket:")]
    assert len(files_after) <= len(files_before) + 2, new_fds
    assert len(after["fds"]) <= len(before["fds"]) + 20, new_fds
    assert after["rss_kib"] <= before["rss_kib"] + 32 * 1024, (before["rss_kib"], after["rss_kib"])
