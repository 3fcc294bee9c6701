"""Memory-pressure eviction: the signal, the per-module figure, the ranking, the kubelet's words."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasmlet.config import ConfigError, load
from wasmlet.node import eviction
from wasmlet.node import status as node_status
from wasmlet.node.eviction import ContainerUsage, EvictionManager, PodUsage, Pressure, Threshold
from wasmlet.pod import admission, lifecycle, stages
from wasmlet.pod.admission import Rejection
from wasmlet.pod.run import ContainerRun, PodRun
from wasmlet.pod.status import pod_status
from wasmlet.runtime import memory_stats
from wasmlet.runtime.engine import RunSpec, Runtime

MI = 1 << 20
PAGE = 65536

# Grows its memory by 160 pages (10 MiB),
# writes one byte in every 4 KiB of them, then spins until stopped.
TOUCH_10MI_THEN_SPIN = """(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (drop (memory.grow (i32.const 160)))
    (block $done (loop $touch
      (br_if $done (i32.ge_u (local.get $i) (i32.const 10485760)))
      (i32.store8 (local.get $i) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 4096)))
      (br $touch)))
    (loop $forever (br $forever))))"""


# --- the figure per module: resident pages of its linear memory ---------------------------------


def test_a_running_module_is_measured_by_the_pages_it_touched(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "cache")
    module = tmp_path / "touch.wasm"
    module.write_bytes(wasmtime.wat2wasm(TOUCH_10MI_THEN_SPIN))
    spec = RunSpec(module, ["touch"], {}, lambda _b: None, lambda _b: None, memory_limit_bytes=64 * MI)
    execution = runtime.start(spec, lambda _status: None)
    try:
        deadline = time.monotonic() + 10
        usage = 0
        while time.monotonic() < deadline and usage < 10 * MI:
            base = execution.memory_base
            usage = memory_stats.resident_bytes([base])[base] if base is not None else 0
            time.sleep(0.02)
        # 10 MiB touched; the first page (never touched) may or may not be resident.
        assert 10 * MI <= usage <= 10 * MI + PAGE
    finally:
        execution.stop(0)
        assert execution.wait(10) is not None
        runtime.close()
    assert execution.memory_base is None  # the store is gone; nothing to measure


def test_smaps_ranges_count_only_inside_each_reservation(tmp_path: Path) -> None:
    base_a, base_b = 0x7F0000000000, 0x7F2000000000
    smaps = tmp_path / "smaps"
    smaps.write_text(
        f"{base_a:x}-{base_a + 0x200000:x} rw-p 00000000 00:00 0 \n"
        "Size:               2048 kB\nRss:                1024 kB\nVmFlags: rd wr mr mw me ac sd\n"
        f"{base_a + 0x200000:x}-{base_a + (4 << 30):x} ---p 00000000 00:00 0 \n"
        "Rss:                   0 kB\n"
        f"{base_b - 0x1000:x}-{base_b:x} rw-p 00000000 00:00 0 [heap]\n"
        "Rss:                   4 kB\n"
        f"{base_b:x}-{base_b + 0x10000:x} rw-p 00000000 00:00 0 \n"
        "Rss:                  64 kB\n"
        f"{base_b + 0x10000:x}-{base_b + 0x20000:x} rw-p 00000000 00:00 0 \n"
        "Rss:                   8 kB\n"
    )
    assert memory_stats.resident_bytes([base_b, base_a], smaps) == {base_a: 1024 * 1024, base_b: 72 * 1024}
    assert memory_stats.resident_bytes([], smaps) == {}


# --- the signal: MemAvailable, or the node's memory cgroup when that is tighter ----------------


def fake_host(tmp_path: Path, cgroup_line: str, total_kib: int = 24 << 20, avail_kib: int = 20 << 20) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       {total_kib} kB\nMemFree:         1000 kB\nMemAvailable:   {avail_kib} kB\n"
    )
    (proc / "self" / "cgroup").write_text(cgroup_line)
    return proc


def test_without_a_cgroup_limit_the_host_is_the_node(tmp_path: Path) -> None:
    proc = fake_host(tmp_path, "4:memory:/work\n0::/\n")
    group = tmp_path / "cg" / "memory" / "work"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (group / "memory.usage_in_bytes").write_text("1000\n")
    seen = memory_stats.observe(proc, tmp_path / "cg")
    assert seen == memory_stats.MemoryObservation(24 << 30, 20 << 30)


def test_a_cgroup_v1_limit_caps_capacity_and_available(tmp_path: Path) -> None:
    proc = fake_host(tmp_path, "4:memory:/wasmlet\n")
    group = tmp_path / "cg" / "memory" / "wasmlet"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (group / "memory.usage_in_bytes").write_text(f"{1900 * MI}\n")
    (group / "memory.stat").write_text(f"cache 1\ninactive_file 5\ntotal_inactive_file {100 * MI}\n")
    # working set 1800Mi of a 2Gi limit: 248Mi left, though the host has 20Gi available
    assert memory_stats.observe(proc, tmp_path / "cg") == memory_stats.MemoryObservation(2 << 30, 248 * MI)


def test_a_cgroup_v2_limit_caps_capacity_and_available(tmp_path: Path) -> None:
    proc = fake_host(tmp_path, "0::/system.slice/wasmlet.service\n")
    root = tmp_path / "cg"
    group = root / "system.slice" / "wasmlet.service"
    group.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (group / "memory.max").write_text(f"{1 << 30}\n")
    (group / "memory.current").write_text(f"{1200 * MI}\n")  # above the limit: nothing available
    (group / "memory.stat").write_text("anon 1\ninactive_file 0\n")
    assert memory_stats.observe(proc, root) == memory_stats.MemoryObservation(1 << 30, 0)
    (group / "memory.max").write_text("max\n")
    assert memory_stats.observe(proc, root).capacity == 24 << 30


# --- --eviction-hard --------------------------------------------------------------------------


def test_eviction_hard_takes_the_kubelets_syntax() -> None:
    assert eviction.parse_eviction_hard(eviction.DEFAULT_EVICTION_HARD) == eviction.DEFAULT_THRESHOLD
    five = eviction.parse_eviction_hard("nodefs.available<10%, memory.available<5%,pid.available<1k")
    assert five.percentage == Decimal(5) and five.of(1000 * MI) == 50 * MI and five.shown(1000 * MI) == "50Mi"
    assert eviction.parse_eviction_hard("memory.available<1Gi").of(123) == 1 << 30


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("memory.available>1Gi", "'memory.available>1Gi' is not <signal><<quantity>"),
        ("memory.free<1Gi", "'memory.free' is not an eviction signal wasmlet watches"),
        ("nodefs.available<10%", "no memory.available threshold in 'nodefs.available<10%'"),
        ("memory.available<0%", "'0%' must be more than 0% and at most 100%"),
        ("memory.available<x%", "'x%' is not a percentage"),
        ("memory.available<0.5", "'0.5' must be a whole number of bytes"),
        ("memory.available<lots", "quantity 'lots'"),
    ],
)
def test_a_bad_eviction_hard_names_the_flag_and_the_cause(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=r"^--eviction-hard: ") as info:
        load(["--eviction-hard", value, "--node-ip", "127.0.0.9"], {})
    assert error in str(info.value)


def test_allocatable_memory_is_capacity_less_the_hard_threshold(tmp_path: Path) -> None:
    config = load(["--data-dir", str(tmp_path), "--node-ip", "127.0.0.9"], {})
    cap = {"cpu": "2", "memory": "1048576Ki", "pods": "110"}
    assert node_status.allocatable(config, cap) == {
        "cpu": "2",
        "memory": "946176Ki",
        "pods": "110",
    }  # 1Gi - 100Mi
    tight = replace(config, eviction_hard=Threshold("2Gi", bytes=2 << 30))
    assert node_status.allocatable(tight, cap)["memory"] == "0Ki"


# --- who is evicted first, and what they are told ---------------------------------------------


def usage(key: str, used_mi: int, request_mi: int = 0, priority: int = 0) -> PodUsage:
    return PodUsage(key, priority, [ContainerUsage("main", used_mi * MI, request_mi * MI)])


def test_pods_above_their_request_go_first_then_low_priority_then_the_largest_excess() -> None:
    pods = [
        usage("ns/within", 900, request_mi=1000),  # the largest user, but within its request
        usage("ns/small-excess", 60, request_mi=10),
        usage("ns/big-excess", 500, request_mi=100),
        usage("ns/important", 800, priority=1000),
        usage("ns/critical", 5000, priority=eviction.SYSTEM_CRITICAL_PRIORITY),
    ]
    order = [p.key for p in eviction.rank(pods)]
    assert order == ["ns/big-excess", "ns/small-excess", "ns/important", "ns/within"]


def test_the_message_is_the_kubelets() -> None:
    pod = PodUsage(
        "ns/hog",
        0,
        [ContainerUsage("hog", 700 * MI, 0), ContainerUsage("quiet", 1 * MI, 64 * MI)],
    )
    text = eviction.message(eviction.DEFAULT_THRESHOLD, 24 << 30, 51200 * 1024 + 4096, pod)
    assert text == (
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51204Ki. "
        "Container hog was using 700Mi, request is 0, has larger consumption of memory. "
    )


def test_pod_usage_takes_requests_or_limits_and_only_running_containers() -> None:
    pod = {
        "spec": {
            "priority": 7,
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a", "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "1Gi"}}},
                {"name": "b", "resources": {"limits": {"memory": "32Mi"}}},
                {"name": "c"},
            ],
        }
    }
    got = admission.pod_usage("ns/p", pod, {"a": 5, "b": 6})
    assert got == PodUsage("ns/p", 7, [ContainerUsage("a", 5, 64 * MI), ContainerUsage("b", 6, 32 * MI)])


def test_under_pressure_only_best_effort_pods_are_refused() -> None:
    best_effort = {"spec": {"containers": [{"name": "m"}]}}
    burstable = {"spec": {"containers": [{"name": "m", "resources": {"limits": {"memory": "8Mi"}}}]}}
    critical = {"spec": {"priority": eviction.SYSTEM_CRITICAL_PRIORITY, "containers": [{"name": "m"}]}}
    calm, pressed = Pressure(), Pressure()
    pressed.memory = True
    assert admission.refusal_under_pressure(best_effort, calm) is None
    assert admission.refusal_under_pressure(best_effort, pressed) == Rejection(
        "Evicted", "The node had condition: [MemoryPressure]. "
    )
    assert admission.refusal_under_pressure(burstable, pressed) is None
    assert admission.refusal_under_pressure(critical, pressed) is None


# --- the manager's cycle ------------------------------------------------------------------------


class World:
    """What the manager sees and does, all fake: memory, pods, time."""

    def __init__(self) -> None:
        self.available = 1 << 30
        self.pods = [usage("ns/hog", 700), usage("ns/calm", 10, request_mi=64)]
        self.evicted: list[tuple[str, str]] = []
        self.running: set[str] = {"ns/hog", "ns/calm"}
        self.now = 1000.0
        self.pressure = Pressure()

    def manager(self) -> EvictionManager:
        return EvictionManager(
            eviction.DEFAULT_THRESHOLD,
            usage=lambda: [p for p in self.pods if p.key in self.running],
            evict=lambda key, text: self.evicted.append((key, text)),
            gone=lambda key: key not in self.running,
            pressure=self.pressure,
            transition=300.0,
            observe=lambda: memory_stats.MemoryObservation(24 << 30, self.available),
            clock=lambda: self.now,
        )


def test_one_pod_per_cycle_and_none_until_the_last_ones_memory_is_back() -> None:
    world = World()
    manager = world.manager()
    assert manager.synchronize() is None and not world.pressure.memory
    world.available = 50 * MI
    assert manager.synchronize() == "ns/hog"
    assert world.pressure.memory
    assert world.evicted[0][1].startswith("The node was low on resource: memory. Threshold quantity: 100Mi")
    world.now += 1
    assert manager.synchronize() is None  # the hog's memory is not back yet: wait for it
    world.running.discard("ns/hog")
    world.now += 1
    assert manager.synchronize() == "ns/calm"  # still below: the next one
    world.running.clear()
    world.available = 10 << 30
    world.now += 1
    assert manager.synchronize() is None
    assert world.pressure.memory  # the condition stays for the transition period
    world.now += 300
    manager.synchronize()
    assert not world.pressure.memory
    assert [evicted[0] for evicted in world.evicted] == ["ns/hog", "ns/calm"]


def test_a_pod_that_never_lets_go_is_waited_for_at_most_the_cleanup_timeout() -> None:
    world = World()
    manager = world.manager()
    world.available = 50 * MI
    assert manager.synchronize() == "ns/hog"
    world.now += eviction.CLEANUP_TIMEOUT - 1
    assert manager.synchronize() is None
    world.now += 2
    assert manager.synchronize() == "ns/hog"  # still running and still first: asked again


def test_an_evicted_pod_fails_with_the_disruption_condition() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "hog", "namespace": "ns", "uid": "u1"},
        "spec": {"restartPolicy": "Always", "containers": [{"name": "main", "image": "r/m:v1"}]},
    }
    killed = lifecycle.Terminated(137, "Error", "2026-12-07T00:00:00Z", "2026-12-07T00:00:01Z")
    crun = ContainerRun("main", "r/m:v1", life=lifecycle.Container(state=killed, exited=killed))
    low = "The node was low on resource: memory. "
    run = PodRun(pod, {"main": crun}, stage=stages.Failed(Rejection("Evicted", low)))
    assert "DisruptionTarget" not in {c["type"] for c in pod_status(run, "127.0.0.2")["conditions"]}
    run.stage = stages.Failed(Rejection("Evicted", low), disrupted=True)
    status = pod_status(run, "127.0.0.2")
    assert (status["phase"], status["reason"]) == ("Failed", "Evicted")
    target = next(c for c in status["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"]) == ("True", "TerminationByKubelet")
    assert target["message"] == low
