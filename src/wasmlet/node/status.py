"""The Node object and its Lease: what makes the cluster see a Ready wasm node.

Labels and taints follow Krustlet's (``kubernetes.io/arch=wasm32-wasi`` NoSchedule and
NoExecute, so only pods that tolerate them land here), and are refreshed on every start
(Krustlet left stale ones). Capacity comes from the real host and ``--max-pods``.

The node's events are kubelet's (``kubectl describe node``): ``Starting`` at each start,
``NodeAllocatableEnforced`` once admission holds pods to the allocatable, and one
``Node <name> status is now: <reason>`` event per condition that changes
(``NodeHasSufficientMemory``/``NodeHasInsufficientMemory``, ``NodeHasNoDiskPressure``,
``NodeHasSufficientPID``, ``NodeReady``/``NodeNotReady``), as kubelet's condition setters
(pkg/kubelet/nodestatus/setters.go) record them against the node's stored conditions.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import wasmtime

from wasmlet import __version__
from wasmlet.kube.client import ApiError, Client, timestamp
from wasmlet.kube.events import EventSink
from wasmlet.kube.quantity import parse_quantity
from wasmlet.node import eviction
from wasmlet.runtime import memory_stats

if TYPE_CHECKING:  # the settings' type only: config sits above every stage
    from wasmlet.config import NodeConfig

log = logging.getLogger(__name__)

ARCH = "wasm32-wasi"
LEASE_DURATION = 40
LEASE_RENEW_INTERVAL = 10.0
STATUS_INTERVAL = 60.0

# kubelet's event reasons (pkg/kubelet/events/event.go) and messages.
STARTING = "Starting"
STARTING_MESSAGE = "Starting wasmlet."  # kubelet's BirthCry says "Starting kubelet."
ALLOCATABLE_ENFORCED = "NodeAllocatableEnforced"
ALLOCATABLE_ENFORCED_MESSAGE = "Updated Node Allocatable limit across pods"
REBOOTED = "Rebooted"
# What kubelet's condition setters record when a condition turns to a status (all Normal events).
CONDITION_EVENTS = {
    ("MemoryPressure", "True"): "NodeHasInsufficientMemory",
    ("MemoryPressure", "False"): "NodeHasSufficientMemory",
    ("DiskPressure", "True"): "NodeHasDiskPressure",
    ("DiskPressure", "False"): "NodeHasNoDiskPressure",
    ("PIDPressure", "True"): "NodeHasInsufficientPID",
    ("PIDPressure", "False"): "NodeHasSufficientPID",
    ("Ready", "True"): "NodeReady",
    ("Ready", "False"): "NodeNotReady",
}

WASM_TAINTS = [
    {"key": "kubernetes.io/arch", "value": ARCH, "effect": "NoSchedule"},
    {"key": "kubernetes.io/arch", "value": ARCH, "effect": "NoExecute"},
]


def wasmtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # pragma: no cover - metadata missing only in odd installs
        return getattr(wasmtime, "__version__", "unknown")


def labels(config: NodeConfig) -> dict[str, str]:
    return {
        "kubernetes.io/arch": ARCH,
        "beta.kubernetes.io/arch": ARCH,
        "kubernetes.io/os": ARCH,
        "beta.kubernetes.io/os": ARCH,
        "kubernetes.io/hostname": config.hostname.lower(),
        "type": "wasmlet",
        **config.node_labels,
    }


def capacity(config: NodeConfig) -> dict[str, str]:
    """The host's, except memory: the node's memory cgroup limit when that is smaller."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fs = os.statvfs(config.data_dir)
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_stats.observe().capacity // 1024}Ki",
        "ephemeral-storage": f"{fs.f_blocks * fs.f_frsize // 1024}Ki",
        "pods": str(config.max_pods),
    }


def allocatable(config: NodeConfig, cap: dict[str, str]) -> dict[str, str]:
    """Capacity less the hard eviction threshold for memory, as the kubelet computes it."""
    memory = int(parse_quantity(cap["memory"]))
    left = max(memory - config.eviction_hard.of(memory), 0)
    return {**cap, "memory": f"{left // 1024}Ki"}


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def node_info() -> dict[str, str]:
    uname = platform.uname()
    os_release = {}
    for line in _read("/etc/os-release").splitlines():
        key, _sep, value = line.partition("=")
        os_release[key] = value.strip('"')
    return {
        "machineID": _read("/etc/machine-id"),
        "systemUUID": _read("/sys/class/dmi/id/product_uuid") or _read("/etc/machine-id"),
        "bootID": _read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": uname.release,
        "osImage": os_release.get("PRETTY_NAME", uname.system),
        "containerRuntimeVersion": f"wasmtime://{wasmtime_version()}",
        "kubeletVersion": __version__,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": ARCH,
    }


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def conditions(
    ready: bool = True,
    message: str = "wasmlet is posting ready status",
    memory_pressure: bool = False,
    previous: list[dict[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """The node's conditions; each keeps its ``previous`` ``lastTransitionTime`` while its
    status stays the same, as kubelet's setters do."""
    now = timestamp()
    before = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}

    def cond(kind: str, status: str, reason: str, text: str) -> dict[str, str]:
        old = before.get(kind) or {}
        same = old.get("status") == status and isinstance(old.get("lastTransitionTime"), str)
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": text,
            "lastHeartbeatTime": now,
            "lastTransitionTime": old["lastTransitionTime"] if same else now,
        }

    memory = (
        ("True", "KubeletHasInsufficientMemory", "wasmlet has insufficient memory available")
        if memory_pressure
        else ("False", "KubeletHasSufficientMemory", "wasmlet has sufficient memory available")
    )
    return [
        cond("MemoryPressure", *memory),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "wasmlet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "wasmlet has sufficient PID available"),
        cond("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady", message),
    ]


def condition_events(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    """The event reasons for the conditions whose status changed from ``previous`` to ``current``,
    in ``current``'s order.

    A pressure condition the node did not have yet counts as ``Unknown`` (kubelet's setters: a
    new node records ``NodeHasSufficientMemory``...). A new ``Ready`` condition records
    ``NodeReady`` when it is True: kubelet's setter records nothing for it, but a kubelet always
    registers NotReady first (its runtime check has not run yet) and records ``NodeReady`` a
    moment later; wasmlet's runtime is in-process and ready at registration, and records
    ``NodeReady`` then, so a new node shows the same events as a kubelet's.
    """
    before = {c.get("type"): c.get("status") for c in previous if isinstance(c, dict)}
    reasons = []
    for condition in current:
        kind, status = condition["type"], condition["status"]
        was = before.get(kind)
        if was == status or (kind == "Ready" and was is None and status != "True"):
            continue
        reason = CONDITION_EVENTS.get((kind, status))
        if reason:
            reasons.append(reason)
    return reasons


def node_status(
    config: NodeConfig, memory_pressure: bool = False, previous: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The status to report; ``previous`` is the stored conditions (their transition times kept)."""
    cap = capacity(config)
    return {
        "capacity": cap,
        "allocatable": allocatable(config, cap),
        "conditions": conditions(memory_pressure=memory_pressure, previous=previous),
        "addresses": [
            {"type": "InternalIP", "address": config.node_ip},
            {"type": "Hostname", "address": config.hostname.lower()},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.port}},
        "nodeInfo": node_info(),
    }


def node_object(config: NodeConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels(config)},
        "spec": {"taints": WASM_TAINTS},
    }


def _has_wasm_taints(node: dict[str, Any]) -> bool:
    have = {(t.get("key"), t.get("value"), t.get("effect")) for t in node["spec"].get("taints") or []}
    return {(t["key"], t["value"], t["effect"]) for t in WASM_TAINTS} <= have


class NodeAgent:
    """Registers the Node, keeps its status and Lease fresh, records the node's events."""

    def __init__(
        self,
        config: NodeConfig,
        client: Client,
        pressure: eviction.Pressure | None = None,
        events: EventSink | None = None,
        on_pod_cidr: Callable[[str], None] | None = None,
    ) -> None:
        self.on_pod_cidr = on_pod_cidr  # told the Node's spec.podCIDR whenever the Node is read
        self.config = config
        self.client = client
        self.path = f"/api/v1/nodes/{config.node_name}"
        self.uid = ""
        self.pressure = pressure or eviction.Pressure()
        self.events = events
        self._reported_pressure = False
        self._reboot_recorded = False

    def register(self) -> None:
        """Create the Node, or bring an existing one's labels and taints up to date; records
        ``Starting`` and the conditions' events."""
        desired = node_object(self.config)
        try:
            current = self.client.post("/api/v1/nodes", desired)
            self.uid = current["metadata"]["uid"]
            log.info("registered node %s", self.config.node_name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = self.client.get(self.path)
            self.uid = current["metadata"]["uid"]
            self._refresh(current, desired)
        self.record("Normal", STARTING, STARTING_MESSAGE)
        self.report_status(current)

    def ref(self) -> dict[str, Any]:
        """The Node as events name it: kind Node, its name, and its uid.

        kubelet v1.36's node reference has no uid, and ``kubectl describe node`` (v1.36) lists
        only events whose uid is the Node's or its name. The Node's own uid (what kubelet records
        since kubernetes/kubernetes#139921, merged after v1.36) is listed, and ties the event to
        this Node; the name stands in until the Node's uid is known.
        """
        uid = self.uid or self.config.node_name
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.config.node_name, "uid": uid}}

    def record(self, kind: str, reason: str, message: str) -> None:
        """An event about the node (``kind`` Normal or Warning)."""
        if self.events is not None:
            self.events.event(self.ref(), kind, reason, message)

    def allocatable_enforced(self) -> None:
        """Admission now holds the node's pods to its allocatable: kubelet's event for it."""
        self.record("Normal", ALLOCATABLE_ENFORCED, ALLOCATABLE_ENFORCED_MESSAGE)

    def _refresh(self, current: dict[str, Any], desired: dict[str, Any]) -> None:
        ours = set(labels(self.config))
        kept = {k: v for k, v in (current["metadata"].get("labels") or {}).items() if k not in ours}
        current["metadata"]["labels"] = {**kept, **desired["metadata"]["labels"]}
        # NodeRestriction forbids a node to change (even reorder) its own taints, and to delete
        # itself: send the taints back untouched and say how an admin fixes wrong ones.
        if not _has_wasm_taints(current):
            node = self.config.node_name
            log.warning(
                "node %s lacks the taints %s, so pods that do not tolerate wasm may be scheduled here; "
                "a node may not change its own taints. Fix: kubectl taint nodes %s "
                "kubernetes.io/arch=%s:NoSchedule kubernetes.io/arch=%s:NoExecute",
                node,
                WASM_TAINTS,
                node,
                ARCH,
                ARCH,
            )
        self.client.put(self.path, current)
        log.info("node %s already registered; labels refreshed", self.config.node_name)

    def report_status(self, current: dict[str, Any] | None = None) -> None:
        """Patch the status, against the stored Node (``current``, else read, as kubelet reads
        it before each update), and record an event for each condition that changed."""
        if current is None:
            current = self.client.get(self.path)
        self._pod_cidr(current)
        stored = current.get("status") if isinstance(current, dict) else None
        stored = stored if isinstance(stored, dict) else {}
        previous = [c for c in stored.get("conditions") or [] if isinstance(c, dict)]
        pressure = self.pressure.memory
        status = node_status(self.config, memory_pressure=pressure, previous=previous)
        self.client.patch(f"{self.path}/status", {"status": status}, "strategic-merge")
        self._reported_pressure = pressure
        name = self.config.node_name
        boot = status["nodeInfo"]["bootID"]
        was = (stored.get("nodeInfo") or {}).get("bootID")
        if was and boot and was != boot and not self._reboot_recorded:
            self._reboot_recorded = True  # kubelet records it once a run
            self.record("Warning", REBOOTED, f"Node {name} has been rebooted, boot id: {boot}")
        for reason in condition_events(previous, status["conditions"]):
            self.record("Normal", reason, f"Node {name} status is now: {reason}")

    def _pod_cidr(self, node: Any) -> str:
        spec = node.get("spec") if isinstance(node, dict) else None
        cidr = str(spec.get("podCIDR") or "") if isinstance(spec, dict) else ""
        if cidr and self.on_pod_cidr is not None:
            self.on_pod_cidr(cidr)
        return cidr

    def await_pod_cidr(self, timeout: float) -> str:
        """The Node's podCIDR, read until the controller manager has set it or ``timeout`` passes
        ("" then: no allocator runs, or it has no range left)."""
        until = time.monotonic() + timeout
        while True:
            cidr = self._pod_cidr(self.client.get(self.path))
            if cidr or time.monotonic() >= until:
                return cidr
            time.sleep(0.2)

    def renew_lease(self) -> None:
        name = self.config.node_name
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": _micro_now()}
        try:
            self.client.patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self.uid}
            self.client.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    def run(self, stop: threading.Event) -> None:
        """Renew the Lease every 10 s and the status every minute or when pressure changes, until ``stop``."""
        last_status = 0.0
        elapsed = 0.0
        while not stop.is_set():
            try:
                self.renew_lease()
                due = elapsed - last_status >= STATUS_INTERVAL
                if due or self.pressure.memory != self._reported_pressure:
                    self.report_status()
                    last_status = elapsed
            except (ApiError, OSError) as exc:
                log.warning("node %s: heartbeat failed: %s", self.config.node_name, exc)
            except Exception as exc:  # transport errors; keep heartbeating
                log.warning("node %s: heartbeat failed: %s", self.config.node_name, exc)
            stop.wait(LEASE_RENEW_INTERVAL)
            elapsed += LEASE_RENEW_INTERVAL
