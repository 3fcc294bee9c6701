"""The prober: runs each running container's probes on their periods and hands the verdicts to
the pod's worker, as kubelet's probe workers do (one thread schedules every probe of the node;
the checks run on a small pool, so a slow probe never delays another's schedule).

A verdict lands on the container's :class:`Health` and re-queues its pod: the worker writes the
new readiness into the status, or kills a container whose liveness or startup probe failed.
Every failed probe records kubelet's ``Unhealthy`` event.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wasmlet.kube.events import EventSink
from wasmlet.network import checks
from wasmlet.pod.probes import HttpGet, Probe, TcpSocket, Tracker

log = logging.getLogger(__name__)

WORKERS = 4


class Health:
    """What one run of a container's probes say; a restart gets a new one."""

    def __init__(self, container: str, probes: list[Probe]) -> None:
        self.container = container
        self.trackers = {probe.kind: Tracker(probe) for probe in probes}
        self.failed: Probe | None = None  # the liveness or startup probe whose failures kill it
        self.stopped = False  # its run ended: probing stops

    @property
    def started(self) -> bool:
        startup = self.trackers.get("Startup")
        return startup is None or startup.result is True

    @property
    def ready(self) -> bool:
        readiness = self.trackers.get("Readiness")
        return self.started and (readiness is None or readiness.result is True)

    def kill_message(self) -> str:
        kind = self.failed.kind.lower() if self.failed is not None else "liveness"
        return f"Container {self.container} failed {kind} probe"


@dataclass(order=True)
class _Due:
    at: float
    order: int
    key: str = field(compare=False)
    pod: Mapping[str, Any] = field(compare=False)
    health: Health = field(compare=False)
    probe: Probe = field(compare=False)
    address: str = field(compare=False)
    busy: bool = field(default=False, compare=False)


def check(probe: Probe, address: str) -> tuple[bool, str]:
    """Run the probe's action once against ``address`` (the pod's IP), within its timeout."""
    action = probe.action
    host = action.host or address
    if isinstance(action, TcpSocket):
        return checks.tcp_check(host, action.port, probe.timeout)
    if isinstance(action, HttpGet):
        return checks.http_check(
            action.scheme, host, action.port, action.path, headers=action.headers, timeout=probe.timeout
        )
    raise TypeError(f"unknown probe action {action!r}")


class Prober:
    def __init__(
        self,
        events: EventSink,
        requeue: Callable[[str], None],
        run_check: Callable[[Probe, str], tuple[bool, str]] = check,
    ) -> None:
        self.events = events
        self.requeue = requeue
        self.run_check = run_check
        self._heap: list[_Due] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, key: str, pod: Mapping[str, Any], health: Health, address: str) -> None:
        """Probe a container that just started, each probe first after its initialDelaySeconds."""
        now = time.monotonic()
        with self._wake:
            for tracker in health.trackers.values():
                probe = tracker.probe
                due = _Due(now + probe.initial_delay, next(self._order), key, pod, health, probe, address)
                heapq.heappush(self._heap, due)
            if self._thread is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="probe")
                self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0].at <= now:
                    due = heapq.heappop(self._heap)
                    if due.health.stopped or due.health.failed is not None:
                        continue  # its run ended, or it is being killed: no more probes
                    due.at += due.probe.period
                    heapq.heappush(self._heap, due)
                    gated = due.probe.kind != "Startup" and not due.health.started
                    if not due.busy and not gated and self._pool is not None:
                        due.busy = True
                        self._pool.submit(self._probe, due)
                self._wake.wait(self._heap[0].at - now if self._heap else None)

    def _probe(self, due: _Due) -> None:
        try:
            ok, output = self.run_check(due.probe, due.address)
        except Exception as exc:  # a bug in a check is a failed probe, never a dead prober
            log.exception("probe of %s/%s failed to run", due.key, due.health.container)
            ok, output = False, str(exc)
        finally:
            due.busy = False
        if due.health.stopped:
            return
        probe, health = due.probe, due.health
        if not ok:
            self.events.event(dict(due.pod), "Warning", "Unhealthy", f"{probe.kind} probe failed: {output}")
        if not health.trackers[probe.kind].record(ok):
            return
        if not ok and probe.kind in {"Liveness", "Startup"}:
            health.failed = probe
        self.requeue(due.key)
