"""A pod's faults stay in the pod, on a real node: a module that opens files without end gets
"too many open files" at its own cap while its neighbours keep running, ``kubectl logs`` keeps
answering and the Lease is renewed; a module with no memory limit is stopped at the node's default."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from helpers import Pods, Registry, push_wat, unique, wait_for

from wasmlet.kubeapi import Client

HOLD = 25_000  # files the attacker's module asks for: more than this host's limit of 20,000
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _renewed(admin: Client, node: str) -> dt.datetime:
    lease = admin.get(f"{LEASES}/{node}")
    return dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))


def test_a_pod_opening_files_without_end_is_capped_and_its_neighbours_are_unharmed(
    pods: Pods, admin: Client, fsprobe: str, registry: Registry, tmp_path: Path
) -> None:
    """Seen by an attacker: 25,000 open files took the node to its limit; other pods' logs failed,
    a new pod got "no output pipes: Too many open files", the Lease was missed once."""
    neighbour = pods.create(unique("neighbour"), push_wat(registry, "hello_loop", tmp_path))
    pods.wait_state(neighbour, "running")
    before = _renewed(admin, pods.node.name)
    hog = unique("hog")
    pods.create(
        hog,
        fsprobe,
        {"args": ["hold", "/scratch/f", str(HOLD)], "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]},
        volumes=[{"name": "s", "emptyDir": {}}],
    )
    pods.wait_state(hog, "running")
    held = wait_for("the hog to report", lambda: pods.logs(hog).strip(), timeout=60)
    assert held == "held 1024: open /scratch/f: Too many open files", held  # its own cap, not the node's
    assert pods.container(hog)["state"].get("running") is not None  # it holds them and lives on

    assert pods.logs(neighbour)  # kubectl logs of another pod answers
    newcomer = pods.create(unique("newcomer"), push_wat(registry, "exit3", tmp_path), restartPolicy="Never")
    terminated = pods.wait_state(newcomer, "terminated")
    assert terminated["exitCode"] == 3, terminated  # a new pod gets its output pipes and runs
    wait_for("the Lease to be renewed", lambda: _renewed(admin, pods.node.name) > before, timeout=60)
    assert pods.container(neighbour)["state"].get("running") is not None


def test_a_module_with_no_memory_limit_is_oomkilled_at_the_nodes_default(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    """Seen by an attacker: with no limit a module grew to 4 GiB inside the node's one process."""
    name = unique("grow")
    pods.create(name, push_wat(registry, "grow", tmp_path), restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated", timeout=90)
    assert terminated["reason"] == "OOMKilled", terminated
