"""The real scheduler binds pods by taints and tolerations, as it will for wasm nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import delete_quietly, unique, wait_for

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration

WASM_TAINTS = [
    {"key": "kubernetes.io/arch", "value": "wasm32-wasi", "effect": "NoSchedule"},
    {"key": "kubernetes.io/arch", "value": "wasm32-wasi", "effect": "NoExecute"},
]
# The seed's simpleserver.yaml tolerations, plus the node-lifecycle taints a Node object
# without a kubelet behind it soon gets.
WASM_TOLERATIONS = [
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"},
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
]


def make_node(admin: Client, name: str, label: str, taints: list[dict[str, str]]) -> None:
    admin.post(
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"wasmlet.test/run": label, "kubernetes.io/hostname": name}},
            "spec": {"taints": taints},
        },
    )
    resources = {"cpu": "2", "memory": "4Gi", "pods": "110"}
    admin.patch(
        f"/api/v1/nodes/{name}/status",
        {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "IntegrationTest",
                        "message": "a Node object made by the test",
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            }
        },
        patch_type="strategic-merge",
    )


def pod(name: str, label: str, tolerations: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"wasmlet.test/run": label},
            "tolerations": tolerations,
            "containers": [{"name": "main", "image": "127.0.0.1:5000/simpleserver:v1"}],
        },
    }


@pytest.fixture
def nodes(admin: Client) -> Iterator[tuple[str, str, str]]:
    label = unique("run")
    wasm_node, other_node = unique("wasm-node"), unique("other-node")
    make_node(admin, wasm_node, label, WASM_TAINTS)
    make_node(
        admin, other_node, label, [{"key": "example.com/dedicated", "value": "gpu", "effect": "NoSchedule"}]
    )
    yield label, wasm_node, other_node
    for name in (wasm_node, other_node):
        delete_quietly(admin, f"/api/v1/nodes/{name}")


def test_scheduler_binds_wasm_pod_to_the_node_whose_taints_it_tolerates(
    admin: Client, nodes: tuple[str, str, str]
) -> None:
    label, wasm_node = nodes[0], nodes[1]
    names = [unique(f"wasm-pod-{i}") for i in range(4)]
    try:
        for name in names:
            admin.post("/api/v1/namespaces/default/pods", pod(name, label, WASM_TOLERATIONS))
        for name in names:

            def node_name(pod_name: str = name) -> str | None:
                bound: str | None = admin.get(f"/api/v1/namespaces/default/pods/{pod_name}")["spec"].get(
                    "nodeName"
                )
                return bound

            assert wait_for(f"pod {name} to be bound", node_name) == wasm_node
    finally:
        for name in names:
            delete_quietly(admin, f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")


def test_pod_without_wasm_tolerations_stays_unschedulable(admin: Client, nodes: tuple[str, str, str]) -> None:
    label = nodes[0]
    name = unique("plain-pod")
    admin.post("/api/v1/namespaces/default/pods", pod(name, label, WASM_TOLERATIONS[2:]))
    try:

        def unschedulable() -> dict[str, Any] | None:
            p: dict[str, Any] = admin.get(f"/api/v1/namespaces/default/pods/{name}")
            for cond in p.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["reason"] == "Unschedulable":
                    return p
            return None

        p = wait_for(f"pod {name} to be reported unschedulable", unschedulable)
        assert not p["spec"].get("nodeName")
        message = next(c["message"] for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
        assert "untolerated taint" in message
    finally:
        delete_quietly(admin, f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")
