"""The node's events, as kubelet records them: Starting, the conditions' changes, NodeAllocatableEnforced."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from wasmlet.config import NodeConfig, load
from wasmlet.kube import events
from wasmlet.kube.client import ApiError
from wasmlet.node import eviction
from wasmlet.node import status as node_status
from wasmlet.node.status import NodeAgent

NAME = "wasm-1"
UID = "5f0c6a8e-0000-4000-8000-000000000001"
HEALTHY = ["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID"]
HEALTHY_CONDITIONS = [
    ("MemoryPressure", "False"),
    ("DiskPressure", "False"),
    ("PIDPressure", "False"),
    ("Ready", "True"),
]


class FakeSink:
    """Collects (object, type, reason, message) as the recorder would receive them."""

    def __init__(self) -> None:
        self.recorded: list[tuple[dict[str, Any], str, str, str]] = []

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.recorded.append((copy.deepcopy(obj), kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _obj, _kind, reason, _message in self.recorded]

    def clear(self) -> None:
        self.recorded.clear()


class FakeNodes:
    """The Node in the apiserver: POST creates it (409 when it exists), status patches merge conditions."""

    def __init__(self, existing: dict[str, Any] | None = None) -> None:
        self.node = existing

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.node is not None:
            raise ApiError("POST", path, 409, {"message": "already exists"})
        self.node = {**copy.deepcopy(body), "status": {}}
        self.node["metadata"]["uid"] = UID
        return copy.deepcopy(self.node)

    def get(self, path: str) -> dict[str, Any]:
        assert self.node is not None
        return copy.deepcopy(self.node)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.node = copy.deepcopy(body)
        return copy.deepcopy(body)

    def patch(self, path: str, body: dict[str, Any], patch_type: str = "merge") -> dict[str, Any]:
        if "/leases/" in path:
            return body
        assert self.node is not None and path.endswith("/status")
        status = self.node.setdefault("status", {})
        status.update({k: v for k, v in body["status"].items() if k != "conditions"})
        by_type = {c["type"]: c for c in status.get("conditions") or []}
        by_type.update({c["type"]: c for c in body["status"]["conditions"]})
        status["conditions"] = list(by_type.values())
        return copy.deepcopy(self.node)

    def condition(self, kind: str) -> dict[str, Any]:
        assert self.node is not None
        return next(c for c in self.node["status"]["conditions"] if c["type"] == kind)


def config(tmp_path: Path) -> NodeConfig:
    return load(["--node-name", NAME, "--node-ip", "127.0.0.9", "--data-dir", str(tmp_path)], {})


def agent(tmp_path: Path, nodes: FakeNodes, sink: FakeSink) -> tuple[NodeAgent, eviction.Pressure]:
    pressure = eviction.Pressure()
    return NodeAgent(config(tmp_path), nodes, pressure, sink), pressure  # type: ignore[arg-type]


def stored_node(conditions: list[tuple[str, str]], boot_id: str | None = None) -> dict[str, Any]:
    node = node_status.node_object(load(["--node-name", NAME, "--node-ip", "127.0.0.9"], {}))
    node["metadata"]["uid"] = UID
    stamp = "2026-01-01T00:00:00Z"
    node["status"] = {
        "conditions": [
            {"type": kind, "status": status, "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}
            for kind, status in conditions
        ],
        "nodeInfo": {"bootID": boot_id or node_status.node_info()["bootID"]},
    }
    return node


def test_a_new_node_records_starting_then_each_condition_as_kubelet(tmp_path: Path) -> None:
    sink, nodes = FakeSink(), FakeNodes()
    node, _pressure = agent(tmp_path, nodes, sink)
    node.register()
    assert sink.reasons() == ["Starting", *HEALTHY, "NodeReady"]
    obj, kind, _reason, message = sink.recorded[0]
    assert (kind, message) == ("Normal", "Starting wasmlet.")
    # The Node as kubelet's nodeRef names it (kind Node, no namespace), with the Node's uid.
    assert obj == {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NAME, "uid": UID}}
    assert all(kind == "Normal" for _obj, kind, _reason, _message in sink.recorded)
    messages = [message for _obj, _kind, _reason, message in sink.recorded[1:]]
    assert messages == [f"Node {NAME} status is now: {r}" for r in [*HEALTHY, "NodeReady"]]


def test_allocatable_enforced_is_kubelets_event(tmp_path: Path) -> None:
    sink, nodes = FakeSink(), FakeNodes()
    node, _pressure = agent(tmp_path, nodes, sink)
    node.register()
    sink.clear()
    node.allocatable_enforced()
    assert [(kind, reason, message) for _obj, kind, reason, message in sink.recorded] == [
        ("Normal", "NodeAllocatableEnforced", "Updated Node Allocatable limit across pods")
    ]


def test_a_restart_of_a_ready_node_records_only_starting(tmp_path: Path) -> None:
    healthy = HEALTHY_CONDITIONS
    sink, nodes = FakeSink(), FakeNodes(stored_node(healthy))
    node, _pressure = agent(tmp_path, nodes, sink)
    node.register()
    assert sink.reasons() == ["Starting"]
    # An unchanged condition keeps its transition time; the heartbeat moves on.
    ready = nodes.condition("Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["lastHeartbeatTime"] != "2026-01-01T00:00:00Z"


def test_a_node_the_controller_marked_unknown_records_node_ready_again(tmp_path: Path) -> None:
    unknown = [("MemoryPressure", "Unknown"), ("DiskPressure", "Unknown"), ("PIDPressure", "Unknown")]
    sink, nodes = FakeSink(), FakeNodes(stored_node([*unknown, ("Ready", "Unknown")]))
    node, _pressure = agent(tmp_path, nodes, sink)
    node.register()
    assert sink.reasons() == ["Starting", *HEALTHY, "NodeReady"]
    assert nodes.condition("Ready")["lastTransitionTime"] != "2026-01-01T00:00:00Z"


def test_memory_pressure_transitions_record_one_event_each(tmp_path: Path) -> None:
    sink, nodes = FakeSink(), FakeNodes()
    node, pressure = agent(tmp_path, nodes, sink)
    node.register()
    sink.clear()
    node.report_status()
    assert sink.reasons() == []  # nothing changed: no event
    pressure.memory = True
    node.report_status()
    assert sink.reasons() == ["NodeHasInsufficientMemory"]
    assert nodes.condition("MemoryPressure")["status"] == "True"
    node.report_status()
    assert sink.reasons() == ["NodeHasInsufficientMemory"]
    pressure.memory = False
    node.report_status()
    assert sink.reasons() == ["NodeHasInsufficientMemory", "NodeHasSufficientMemory"]
    assert sink.recorded[-1][3] == f"Node {NAME} status is now: NodeHasSufficientMemory"


def test_the_heartbeat_reports_status_and_records_the_change_of_pressure(tmp_path: Path) -> None:
    sink, nodes = FakeSink(), FakeNodes()
    node, pressure = agent(tmp_path, nodes, sink)
    node.register()
    sink.clear()
    pressure.memory = True
    stop = _StopAfter(1)
    node.run(stop)  # type: ignore[arg-type]
    assert sink.reasons() == ["NodeHasInsufficientMemory"]


def test_a_reboot_is_a_warning_recorded_once(tmp_path: Path) -> None:
    healthy = HEALTHY_CONDITIONS
    sink, nodes = FakeSink(), FakeNodes(stored_node(healthy, boot_id="an-earlier-boot"))
    node, _pressure = agent(tmp_path, nodes, sink)
    node.register()
    boot = node_status.node_info()["bootID"]
    if not boot:
        pytest.skip("no boot id on this host")
    assert [(kind, reason) for _obj, kind, reason, _message in sink.recorded] == [
        ("Normal", "Starting"),
        ("Warning", "Rebooted"),
    ]
    assert sink.recorded[1][3] == f"Node {NAME} has been rebooted, boot id: {boot}"


@pytest.mark.parametrize(
    ("previous", "current", "reasons"),
    [
        ({}, {"Ready": "False"}, []),  # kubelet: a new Ready condition records nothing ...
        ({}, {"Ready": "True"}, ["NodeReady"]),  # ... wasmlet is ready at once (see condition_events)
        ({"Ready": "True"}, {"Ready": "False"}, ["NodeNotReady"]),
        ({"Ready": "Unknown"}, {"Ready": "False"}, ["NodeNotReady"]),
        ({"Ready": "False"}, {"Ready": "True"}, ["NodeReady"]),
        ({"DiskPressure": "False"}, {"DiskPressure": "True"}, ["NodeHasDiskPressure"]),
        ({"PIDPressure": "False"}, {"PIDPressure": "True"}, ["NodeHasInsufficientPID"]),
        ({"MemoryPressure": "True"}, {"MemoryPressure": "True"}, []),
    ],
)
def test_condition_events(previous: dict[str, str], current: dict[str, str], reasons: list[str]) -> None:
    def conditions(by_type: dict[str, str]) -> list[dict[str, Any]]:
        return [{"type": kind, "status": status} for kind, status in by_type.items()]

    assert node_status.condition_events(conditions(previous), conditions(current)) == reasons


def test_the_recorder_files_a_node_event_in_default_without_a_namespace() -> None:
    posted: list[tuple[str, dict[str, Any]]] = []

    class Api:
        def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            posted.append((path, body))
            return {**body, "metadata": {**body["metadata"], "name": f"{NAME}.1"}}

    rec = events.EventRecorder(Api(), "wasmlet", NAME)  # type: ignore[arg-type]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NAME, "uid": UID}}
    rec.event(node, "Normal", "Starting", "Starting wasmlet.")
    assert rec.flush(5)
    rec.close()
    path, body = posted[0]
    assert path == "/api/v1/namespaces/default/events"
    assert body["metadata"] == {"generateName": f"{NAME}.", "namespace": "default"}
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NAME, "uid": UID}
    assert body["source"] == {"component": "wasmlet", "host": NAME}


class _StopAfter:
    """A stop event that is set after ``rounds`` heartbeats, without waiting between them."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def is_set(self) -> bool:
        return self.rounds <= 0

    def wait(self, _timeout: float) -> bool:
        self.rounds -= 1
        return self.is_set()
