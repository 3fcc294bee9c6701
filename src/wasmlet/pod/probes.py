"""Container probes as the kubelet reads and counts them (pkg/kubelet/prober): what each probe
asks (:func:`probes_of`) and how its results add up (:class:`Tracker`).

* ``readinessProbe``: a container is not ready until its first success; ``successThreshold``
  successes in a row make it ready, ``failureThreshold`` failures not ready (out of its
  Services' endpoints).
* ``livenessProbe``: ``failureThreshold`` failures in a row kill the container, which restarts
  unless the pod's policy is Never.
* ``startupProbe``: the other two wait until it succeeds; ``failureThreshold`` failures kill the
  container as a liveness failure does.

``httpGet`` and ``tcpSocket`` run against the pod's address (wasmlet owns the listeners of its
pods). ``exec`` needs a process to run a command in, and a wasm pod has none; ``grpc`` needs an
HTTP/2 server, and a wasm pod's listeners speak HTTP/1.1: both are refused, naming the probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}


class ProbeError(Exception):
    """A probe wasmlet cannot run; the message names the container, the probe and why."""


@dataclass(frozen=True)
class HttpGet:
    scheme: str  # HTTP or HTTPS
    host: str  # "" means the pod's IP
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpSocket:
    host: str
    port: int


Action = HttpGet | TcpSocket


@dataclass(frozen=True)
class Probe:
    kind: str  # Startup, Liveness or Readiness, as kubelet's events name them
    action: Action
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    grace: float | None  # the probe's terminationGracePeriodSeconds, for the kill it causes


def _port(container: Mapping[str, Any], value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.isdigit():
        port = int(value)
    elif isinstance(value, str):
        named = [p for p in container.get("ports") or [] if p.get("name") == value]
        if not named:
            raise ProbeError(f"{where}: port {value!r} is not the name of a port of the container")
        port = int(named[0]["containerPort"])
    else:
        raise ProbeError(f"{where}: port {value!r} is neither a number nor a port name")
    if not 1 <= port <= 65535:
        raise ProbeError(f"{where}: port {port} is out of range 1..65535")
    return port


def _action(container: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> Action:
    if spec.get("exec"):
        raise ProbeError(
            f"{where}: exec probes run a command in the container, and a WebAssembly pod has no process"
        )
    if spec.get("grpc"):
        raise ProbeError(f"{where}: grpc probes need an HTTP/2 server, and a WebAssembly pod serves HTTP/1.1")
    if spec.get("httpGet"):
        get = spec["httpGet"]
        scheme = str(get.get("scheme") or "HTTP").upper()
        if scheme not in {"HTTP", "HTTPS"}:
            raise ProbeError(f"{where}: scheme {scheme!r} is neither HTTP nor HTTPS")
        path = str(get.get("path") or "/")
        headers = tuple((str(h["name"]), str(h.get("value", ""))) for h in get.get("httpHeaders") or [])
        return HttpGet(
            scheme,
            str(get.get("host") or ""),
            _port(container, get.get("port"), where),
            path if path.startswith("/") else "/" + path,
            headers,
        )
    if spec.get("tcpSocket"):
        tcp = spec["tcpSocket"]
        return TcpSocket(str(tcp.get("host") or ""), _port(container, tcp.get("port"), where))
    raise ProbeError(f"{where}: names no action (httpGet, tcpSocket)")


def probes_of(container: Mapping[str, Any]) -> list[Probe]:
    """The container's probes, startup first (ProbeError for one wasmlet cannot run)."""
    found = []
    for field, kind in KINDS.items():
        spec = container.get(field)
        if not spec:
            continue
        where = f"container {container.get('name')}: {field}"
        grace = spec.get("terminationGracePeriodSeconds")
        found.append(
            Probe(
                kind,
                _action(container, spec, where),
                initial_delay=float(spec.get("initialDelaySeconds") or 0),
                period=float(spec.get("periodSeconds") or 10),
                timeout=float(spec.get("timeoutSeconds") or 1),
                success_threshold=int(spec.get("successThreshold") or 1),
                failure_threshold=int(spec.get("failureThreshold") or 3),
                grace=float(grace) if grace is not None else None,
            )
        )
    return found


class Tracker:
    """One probe's results in a row, and what they amount to: True (success), False (failure)
    or None (no verdict yet: a readiness probe's first, a startup probe's before it decides)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.result: bool | None = True if probe.kind == "Liveness" else None
        self._successes = 0
        self._failures = 0

    def record(self, ok: bool) -> bool:
        """Count one result; True when the verdict changed."""
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            reached = self._successes >= self.probe.success_threshold
        else:
            self._successes, self._failures = 0, self._failures + 1
            reached = self._failures >= self.probe.failure_threshold
        if not reached or self.result is ok:
            return False
        self.result = ok
        return True
