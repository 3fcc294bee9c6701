"""Probes as kubelet reads and counts them: the spec's fields, refusals naming the probe, the
thresholds' arithmetic, and the prober's verdicts (a fake check; the real checks are in
tests/integration/test_serving.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from wasmlet.network import checks
from wasmlet.pod.prober import Health, Prober
from wasmlet.pod.probes import HttpGet, Probe, ProbeError, TcpSocket, Tracker, probes_of


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "web", "ports": [{"name": "http", "containerPort": 8080}], **fields}


def test_fields_and_kubelet_defaults() -> None:
    (probe,) = probes_of(container(readinessProbe={"httpGet": {"port": "http"}}))
    assert probe.kind == "Readiness"
    assert probe.action == HttpGet("HTTP", "", 8080, "/")
    assert (probe.initial_delay, probe.period, probe.timeout) == (0, 10, 1)
    assert (probe.success_threshold, probe.failure_threshold, probe.grace) == (1, 3, None)


def test_startup_comes_first_and_every_field_is_read() -> None:
    spec = container(
        livenessProbe={
            "tcpSocket": {"port": 9000, "host": "10.0.0.1"},
            "initialDelaySeconds": 2,
            "periodSeconds": 3,
            "timeoutSeconds": 4,
            "failureThreshold": 5,
            "terminationGracePeriodSeconds": 6,
        },
        startupProbe={
            "httpGet": {
                "port": 8080,
                "path": "ready",
                "scheme": "HTTPS",
                "httpHeaders": [{"name": "X", "value": "y"}],
            }
        },
    )
    startup, liveness = probes_of(spec)
    assert startup.action == HttpGet("HTTPS", "", 8080, "/ready", (("X", "y"),))
    assert liveness.action == TcpSocket("10.0.0.1", 9000)
    assert (liveness.initial_delay, liveness.period, liveness.timeout) == (2, 3, 4)
    assert (liveness.failure_threshold, liveness.grace) == (5, 6)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ({"exec": {"command": ["true"]}}, "container web: livenessProbe: exec probes run a command"),
        ({"grpc": {"port": 9000}}, "container web: livenessProbe: grpc probes need an HTTP/2 server"),
        ({"httpGet": {"port": "nosuch"}}, "container web: livenessProbe: port 'nosuch' is not the name"),
        ({"tcpSocket": {"port": 70000}}, "container web: livenessProbe: port 70000 is out of range"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "container web: livenessProbe: scheme 'FTP'"),
        ({"periodSeconds": 1}, "container web: livenessProbe: names no action"),
    ],
)
def test_probes_wasmlet_cannot_run_are_refused_naming_them(probe: dict[str, Any], message: str) -> None:
    with pytest.raises(ProbeError, match=f"^{message}"):
        probes_of(container(livenessProbe=probe))


def probe(kind: str, success: int = 1, failure: int = 3, period: float = 0.05) -> Probe:
    return Probe(kind, TcpSocket("", 1), 0.0, period, 1.0, success, failure, None)


def test_readiness_has_no_verdict_until_its_first_success() -> None:
    tracker = Tracker(probe("Readiness", success=2, failure=2))
    assert tracker.result is None
    assert not tracker.record(True)  # one success of two
    assert tracker.record(True) and tracker.result is True
    assert not tracker.record(False)  # one failure of two
    assert not tracker.record(True)  # a success resets the failures
    assert not tracker.record(False)
    assert tracker.record(False) and tracker.result is False


def test_liveness_starts_as_a_success() -> None:
    tracker = Tracker(probe("Liveness", failure=1))
    assert tracker.result is True
    assert not tracker.record(True)
    assert tracker.record(False) and tracker.result is False


def test_health_gates_ready_on_startup() -> None:
    health = Health("web", [probe("Startup", failure=1), probe("Readiness")])
    assert not health.started and not health.ready
    health.trackers["Readiness"].record(True)
    assert not health.ready  # not started yet
    health.trackers["Startup"].record(True)
    assert health.started and health.ready
    health.failed = health.trackers["Startup"].probe
    assert health.kill_message() == "Container web failed startup probe"


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.recorded.append((kind, reason, message))


def wait(condition: Any, timeout: float = 5.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.01)


def test_the_prober_turns_failures_into_a_kill_and_an_event_each() -> None:
    events, queued = Events(), list[str]()
    answers = iter([True, False, False, False])
    prober = Prober(events, queued.append, run_check=lambda _probe, _address: (next(answers, False), "boom"))
    health = Health("web", [probe("Liveness", failure=3)])
    prober.watch("ns/p", {"metadata": {"name": "p"}}, health, "10.244.0.2")
    try:
        wait(lambda: health.failed is not None)
        assert queued == ["ns/p"]
        assert events.recorded[:3] == [("Warning", "Unhealthy", "Liveness probe failed: boom")] * 3
        count = len(events.recorded)
        time.sleep(0.2)
        assert len(events.recorded) == count  # a container being killed is not probed again
    finally:
        prober.close()


def test_the_prober_waits_for_startup_and_stops_with_the_run() -> None:
    events, queued = Events(), list[str]()
    calls: list[str] = []
    started = threading.Event()

    def check(probe: Probe, _address: str) -> tuple[bool, str]:
        calls.append(probe.kind)
        return (probe.kind != "Startup" or started.is_set()), "not yet"

    prober = Prober(events, queued.append, run_check=check)
    health = Health("web", [probe("Startup", failure=100), probe("Readiness")])
    prober.watch("ns/p", {"metadata": {"name": "p"}}, health, "10.244.0.2")
    try:
        wait(lambda: calls.count("Startup") >= 3)
        assert "Readiness" not in calls
        started.set()
        wait(lambda: health.ready)
        health.stopped = True
        time.sleep(0.1)
        count = len(calls)
        time.sleep(0.2)
        assert len(calls) == count
    finally:
        prober.close()


def test_http_and_tcp_checks_say_what_go_says_for_a_refused_connection() -> None:
    ok, output = checks.tcp_check("127.0.0.1", 1, 1.0)
    assert (ok, output) == (False, "dial tcp 127.0.0.1:1: connect: connection refused")
    ok, output = checks.http_check("HTTP", "127.0.0.1", 1, "/healthz", headers=(), timeout=1.0)
    assert (ok, output) == (
        False,
        'Get "http://127.0.0.1:1/healthz": dial tcp 127.0.0.1:1: connect: connection refused',
    )
