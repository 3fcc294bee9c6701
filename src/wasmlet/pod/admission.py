"""Whether this node takes a pod, decided once when the pod first arrives, as kubelet's
admission handlers do: pods that are not WebAssembly workloads are refused, and so are pods
whose requests do not fit what the node has left (reasons ``OutOfpods``, ``OutOfcpu``,
``OutOfmemory``, with kubelet's messages). A refused pod is Failed at once; it never waits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from wasmlet.kube.quantity import parse_quantity
from wasmlet.node import eviction

WASM_TAINT_KEY = "kubernetes.io/arch"
WASM_TAINT_VALUE = "wasm32-wasi"
# Resources admitted against allocatable; cpu in millicores and memory in bytes, as kubelet
# prints them in its messages.
ADMITTED = ("cpu", "memory")


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str


def _quantity(value: object, where: str) -> Decimal:
    try:
        return parse_quantity(str(value))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def container_requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    # A limit without a request requests the limit (the apiserver defaults it the same way).
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    name = container.get("name", "?")
    return {r: _quantity(merged[r], f"container {name} {r}") for r in ADMITTED if r in merged}


def best_effort(pod: Mapping[str, Any]) -> bool:
    """The BestEffort QoS class: no container asks for or is limited in cpu or memory."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return not any(
        (c.get("resources") or {}).get(kind, {}).get(name)
        for c in containers
        for kind in ("requests", "limits")
        for name in ADMITTED
    )


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """What a pod requests: the larger of its containers' sum and its largest init container
    (init containers run one at a time before the others), plus its overhead."""
    spec = pod.get("spec") or {}
    total = dict.fromkeys(ADMITTED, Decimal(0))
    for container in spec.get("containers") or []:
        for name, value in container_requests(container).items():
            total[name] += value
    for container in spec.get("initContainers") or []:
        for name, value in container_requests(container).items():
            total[name] = max(total[name], value)
    for name, value in (spec.get("overhead") or {}).items():
        if name in total:
            total[name] += _quantity(value, f"overhead {name}")
    return total


def _show(resource: str, value: Decimal) -> str:
    return str(int(value * 1000)) if resource == "cpu" else str(int(value))


def fit(
    pod: Mapping[str, Any], admitted: Iterable[Mapping[str, Any]], allocatable: Mapping[str, str]
) -> Rejection | None:
    """Kubelet's resource fit: the pod count, then each requested resource against allocatable."""
    admitted = list(admitted)
    pods_capacity = int(allocatable.get("pods", "110"))
    if len(admitted) + 1 > pods_capacity:
        return Rejection(
            "OutOfpods",
            f"Node didn't have enough resource: pods, requested: 1, used: {len(admitted)}, "
            f"capacity: {pods_capacity}",
        )
    wanted = pod_requests(pod)
    used = dict.fromkeys(ADMITTED, Decimal(0))
    for other in admitted:
        for name, value in pod_requests(other).items():
            used[name] += value
    for name in ADMITTED:
        if wanted[name] == 0 or name not in allocatable:
            continue
        capacity = parse_quantity(str(allocatable[name]))
        if used[name] + wanted[name] > capacity:
            return Rejection(
                f"OutOf{name}",
                f"Node didn't have enough resource: {name}, requested: {_show(name, wanted[name])}, "
                f"used: {_show(name, used[name])}, capacity: {_show(name, capacity)}",
            )
    return None


EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 -- a hostIP that is not set, compared, never bound
NODE_PORTS = Rejection(
    "NodePorts", "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
)


def host_ports(pod: Mapping[str, Any]) -> set[tuple[str, str, int]]:
    """(hostIP, protocol, hostPort) of each port the pod's containers take on the node (for
    ``hostNetwork`` pods the apiserver sets hostPort to containerPort)."""
    taken = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                ip = str(port.get("hostIP") or EVERY_ADDRESS)
                taken.add((ip, str(port.get("protocol") or "TCP"), int(port["hostPort"])))
    return taken


def port_conflict(pod: Mapping[str, Any], admitted: Iterable[Mapping[str, Any]]) -> Rejection | None:
    """The scheduler's NodePorts filter, as kubelet's admission runs it: a host port taken by an
    admitted pod (on the same address, or either on every address) refuses the pod."""
    used = {taken for other in admitted for taken in host_ports(other)}
    for ip, protocol, port in host_ports(pod):
        for other_ip, other_protocol, other_port in used:
            same_address = ip == other_ip or EVERY_ADDRESS in (ip, other_ip)
            if same_address and (protocol, port) == (other_protocol, other_port):
                return NODE_PORTS
    return None


def _tolerates_wasm(toleration: Mapping[str, Any]) -> bool:
    if toleration.get("key") != WASM_TAINT_KEY:
        return False
    operator = toleration.get("operator") or "Equal"
    return operator == "Exists" or toleration.get("value") == WASM_TAINT_VALUE


def not_wasm(pod: Mapping[str, Any]) -> Rejection | None:
    """A DaemonSet pod that landed here only because it tolerates every taint (kube-proxy,
    CNI agents) is a Linux container workload: refuse it. A DaemonSet that names the wasm
    taint in its tolerations is meant for wasm nodes and runs."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    if not any(owner.get("kind") == "DaemonSet" for owner in owners):
        return None
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    if any(_tolerates_wasm(t) for t in tolerations):
        return None
    meta = pod.get("metadata") or {}
    return Rejection(
        "NotWasm",
        f"pod {meta.get('namespace')}/{meta.get('name')} belongs to a DaemonSet that does not tolerate "
        f"{WASM_TAINT_KEY}={WASM_TAINT_VALUE} by name: it came here only by tolerating every taint, and "
        "wasmlet runs only WebAssembly (wasm32-wasi) workloads",
    )


def pod_usage(key: str, pod: Mapping[str, Any], resident: Mapping[str, int]) -> eviction.PodUsage:
    """What ``pod`` uses, from the bytes ``resident`` in each running container's memory."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return eviction.PodUsage(
        key,
        int(spec.get("priority") or 0),
        [
            eviction.ContainerUsage(
                c["name"], resident[c["name"]], int(container_requests(c).get("memory", 0))
            )
            for c in containers
            if c.get("name") in resident
        ],
    )


def refusal_under_pressure(pod: Mapping[str, Any], pressure: eviction.Pressure) -> Rejection | None:
    """Under memory pressure the kubelet takes no new BestEffort pod, unless it is critical."""
    spec = pod.get("spec") or {}
    if not pressure.memory or int(spec.get("priority") or 0) >= eviction.SYSTEM_CRITICAL_PRIORITY:
        return None
    if not best_effort(pod):
        return None
    return Rejection(eviction.REASON, eviction.PRESSURE_REFUSAL)
