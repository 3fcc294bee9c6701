"""Memory-pressure eviction, as the kubelet's eviction manager does it for ``memory.available``.

Every pod runs in the node's process, so the sum of their memory may exceed the node even when
each stays within its limit. Below ``--eviction-hard`` the node reports MemoryPressure, refuses
BestEffort pods and evicts one pod per cycle in the kubelet's order; the signal, the ranking,
the messages and the measured cost are in docs/security.md ("Memory pressure").
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from wasmlet.kube.quantity import format_bytes, parse_quantity
from wasmlet.runtime import memory_stats

log = logging.getLogger(__name__)

SIGNAL = "memory.available"
DEFAULT_EVICTION_HARD = "memory.available<100Mi"
DEFAULT_PRESSURE_TRANSITION = 300.0  # seconds: kubelet's --eviction-pressure-transition-period
MONITORING_INTERVAL = 1.0  # seconds between observations
CLEANUP_TIMEOUT = 30.0  # seconds to wait for an evicted pod's memory before picking another
SYSTEM_CRITICAL_PRIORITY = 2_000_000_000
REASON = "Evicted"
PRESSURE_REFUSAL = "The node had condition: [MemoryPressure]. "
# The kubelet's other signals: disk is kept by image GC and emptyDir limits; pods make no processes.
_IGNORED_SIGNALS = {
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "pid.available",
}
_THRESHOLD_PART = re.compile(r"^\s*([A-Za-z.]+)\s*<\s*(\S+)\s*$")


@dataclass(frozen=True)
class Threshold:
    """``memory.available<100Mi`` or ``memory.available<5%``."""

    text: str  # the quantity as written: the kubelet's message prints it
    bytes: int = 0
    percentage: Decimal = Decimal(0)

    def of(self, capacity: int) -> int:
        """The threshold in bytes for a node of ``capacity`` bytes."""
        return self.bytes if not self.percentage else int(capacity * self.percentage / 100)

    def shown(self, capacity: int) -> str:
        return self.text if not self.percentage else format_bytes(self.of(capacity))


def parse_eviction_hard(text: str) -> Threshold:
    """The memory threshold of an ``--eviction-hard`` value (kubelet syntax, comma-separated).

    Raises :class:`ValueError` naming the part and the cause. The kubelet's other signals are
    accepted and ignored, so a kubelet's value can be reused as it is; ``memory.available<0``
    turns eviction off.
    """
    found: Threshold | None = None
    for part in (p for p in text.split(",") if p.strip()):
        match = _THRESHOLD_PART.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not <signal><<quantity> (e.g. memory.available<100Mi)")
        signal, value = match.groups()
        if signal in _IGNORED_SIGNALS:
            continue
        if signal != SIGNAL:
            raise ValueError(f"{signal!r} is not an eviction signal wasmlet watches (only {SIGNAL})")
        found = _threshold(value)
    if found is None:
        raise ValueError(f"no {SIGNAL} threshold in {text!r} ({SIGNAL}<0 turns eviction off)")
    return found


def _threshold(value: str) -> Threshold:
    if value.endswith("%"):
        try:
            percentage = Decimal(value[:-1])
        except ArithmeticError:
            raise ValueError(f"{value!r} is not a percentage") from None
        if not 0 < percentage <= 100:
            raise ValueError(f"{value!r} must be more than 0% and at most 100%")
        return Threshold(value, percentage=percentage)
    size = parse_quantity(value)
    if size < 0 or size != int(size):
        raise ValueError(f"{value!r} must be a whole number of bytes")
    return Threshold(value, bytes=int(size))


class Pressure:
    """Whether the node reports MemoryPressure; read by the heartbeat and by admission."""

    def __init__(self) -> None:
        self.memory = False


DEFAULT_THRESHOLD = Threshold("100Mi", bytes=100 << 20)


@dataclass(frozen=True)
class ContainerUsage:
    name: str
    usage: int  # bytes resident in its linear memory
    request: int  # bytes of requests.memory (0 when none)


@dataclass(frozen=True)
class PodUsage:
    key: str  # namespace/name
    priority: int
    containers: Sequence[ContainerUsage]

    @property
    def usage(self) -> int:
        return sum(c.usage for c in self.containers)

    @property
    def request(self) -> int:
        return sum(c.request for c in self.containers)


def rank(pods: Sequence[PodUsage]) -> list[PodUsage]:
    """Who goes first: kubelet's rankMemoryPressure (exceeds requests, priority, usage - request)."""
    candidates = [p for p in pods if p.priority < SYSTEM_CRITICAL_PRIORITY]
    return sorted(candidates, key=lambda p: (p.usage <= p.request, p.priority, -(p.usage - p.request)))


def message(threshold: Threshold, capacity: int, available: int, pod: PodUsage) -> str:
    """The kubelet's words (pkg/kubelet/eviction/helpers.go), trailing spaces included."""
    text = "The node was low on resource: memory. "
    text += f"Threshold quantity: {threshold.shown(capacity)}, available: {format_bytes(available)}. "
    for c in pod.containers:
        if c.usage > c.request:
            text += (
                f"Container {c.name} was using {format_bytes(c.usage)}, request is "
                f"{format_bytes(c.request)}, has larger consumption of memory. "
            )
    return text


class EvictionManager:
    def __init__(
        self,
        threshold: Threshold,
        *,
        usage: Callable[[], Sequence[PodUsage]],
        evict: Callable[[str, str], None],
        gone: Callable[[str], bool],
        pressure: Pressure,
        transition: float = DEFAULT_PRESSURE_TRANSITION,
        observe: Callable[[], memory_stats.MemoryObservation] = memory_stats.observe,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.usage = usage
        self.evict = evict
        self.gone = gone  # the pod's modules have all ended (its memory is released)
        self.pressure = pressure
        self.transition = transition
        self.observe = observe
        self.clock = clock
        self._last_met = float("-inf")
        self._evicted: tuple[str, float] | None = None  # the pod whose memory we wait for, since

    def synchronize(self) -> str | None:
        """One cycle; the key of the pod evicted, if one was."""
        seen = self.observe()
        now = self.clock()
        met = seen.available < self.threshold.of(seen.capacity)
        if met:
            self._last_met = now
        pressure = now - self._last_met < self.transition
        if pressure != self.pressure.memory:
            log.warning(
                "node memory pressure %s: %s available, threshold %s",
                "begins" if pressure else "ends",
                format_bytes(seen.available),
                self.threshold.shown(seen.capacity),
            )
            self.pressure.memory = pressure
        if not met or self._waiting(now):
            return None
        for pod in rank(self.usage()):
            text = message(self.threshold, seen.capacity, seen.available, pod)
            log.warning("evicting pod %s: %s", pod.key, text)
            self.evict(pod.key, text)
            self._evicted = (pod.key, now)
            return pod.key
        log.warning("memory.available is below %s and no pod can be evicted", self.threshold.text)
        return None

    def _waiting(self, now: float) -> bool:
        if self._evicted is None:
            return False
        key, since = self._evicted
        if self.gone(key) or now - since > CLEANUP_TIMEOUT:
            self._evicted = None
            return False
        return True

    def run(self, stop: threading.Event, interval: float = MONITORING_INTERVAL) -> None:
        while not stop.wait(interval):
            try:
                self.synchronize()
            except Exception:  # keep watching; a failed cycle is tried at the next one
                log.exception("eviction cycle failed")
