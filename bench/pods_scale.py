"""Figures 2, 4 and 5: many idle pods on one node.

One ``wasmlet`` node with ``--max-pods 1100``; an idle hello-world module (prints a line, then
sleeps an hour at a time, forever), already pulled and compiled by a warm-up pod.

- Figure 2: N pods created at once (16 client threads POSTing) → all Running, as observed by a
  watch; per pod, creation (just before its POST) → Running. The CPU seconds every process
  spent during the burst (node, apiserver, etcd, scheduler, controller-manager, this client)
  show where the time went. A second burst runs under ``py-spy record`` (full runs).
- Figure 4: the node's RSS with 0, 100 and 1000 such pods; (RSS(N) - RSS(0)) / N.
- Figure 5: the node's CPU with 1000 idle pods, from /proc/<pid>/stat over 30 s.

Between bursts every pod is deleted and the node's module threads are waited for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profile
from bench.common import (
    ROOT,
    BenchError,
    Cluster,
    Context,
    CpuMeter,
    Figure,
    Node,
    Outcome,
    PodWatcher,
    Profiler,
    create_pods,
    delete_pods,
    namespace,
    pod_manifest,
    push,
    py_spy,
    rss_bytes,
    running_node,
    settle_threads,
    summary,
    wait_threads,
    wasm,
)
from wasmlet.kube.client import Client

MB = 1024 * 1024


@dataclass
class Burst:
    pods: int
    create_s: float  # first POST → last POST returned
    all_running_s: float | None  # first POST → last pod seen Running
    running: int
    per_pod_ms: dict[str, float]
    bound_to_running_ms: dict[str, float]
    create_to_bound_ms: dict[str, float]
    cpu: dict[str, Any]
    timeline: dict[str, list[float]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Scale:
    ctx: Context
    cluster: Cluster
    admin: Client
    node: Node
    image: str
    ns: str
    watcher: PodWatcher

    def pids(self) -> dict[str, int]:
        return {"wasmlet node": self.node.pid, **self.cluster.component_pids(), "bench client": os.getpid()}

    def burst(self, prefix: str, count: int, timeout: float) -> Burst:
        names = [f"{prefix}-{index:04d}" for index in range(count)]
        manifests = [pod_manifest(name, self.node.name, self.image) for name in names]
        meter = CpuMeter(self.pids()).start()
        t0 = time.monotonic()
        create_s = create_pods(self.cluster, self.ns, manifests, self.watcher)
        with contextlib.suppress(BenchError):  # a timeout is reported as fewer pods Running
            self.watcher.wait(
                f"{count} pods to run", lambda: self.watcher.count("running", names) == count, timeout
            )
        meter.stop()
        running = self.watcher.count("running", names)
        ends = [t.running for n in names if (t := self.watcher.times[n]).running is not None]
        timeline = {
            step: sorted(
                round(v - t0, 4) for n in names if (v := getattr(self.watcher.times[n], step)) is not None
            )
            for step in ("created", "bound", "running")
        }
        return Burst(
            pods=count,
            create_s=round(create_s, 3),
            all_running_s=round(max(ends) - t0, 3) if running == count else None,
            running=running,
            per_pod_ms=summary(self.watcher.durations(names, "created", "running"), 1000, 1),
            bound_to_running_ms=summary(self.watcher.durations(names, "bound", "running"), 1000, 1),
            create_to_bound_ms=summary(self.watcher.durations(names, "created", "bound"), 1000, 1),
            cpu=meter.as_dict(),
            timeline=timeline,
        )

    def clear(self, idle_threads: int) -> float:
        """Delete every pod; seconds until the node's module threads are gone."""
        t0 = time.monotonic()
        delete_pods(self.admin, self.ns)
        wait_threads(self.node.pid, idle_threads + 2, 300)
        return time.monotonic() - t0


def _settled_rss(pid: int, seconds: float) -> int:
    """The node's RSS after ``seconds`` of quiet (status patches and events done)."""
    time.sleep(seconds)
    return rss_bytes(pid)


def _idle_cpu(pid: int, seconds: float) -> float:
    meter = CpuMeter({"node": pid}).start()
    time.sleep(seconds)
    return 100 * meter.stop()["node"] / meter.elapsed


def _keep(ctx: Context, path: Path) -> str:
    """Keep a raw profile next to the run's JSON (full runs); its path, relative to the checkout
    when it is in it."""
    if ctx.smoke:
        return str(path)
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    kept = ctx.results_dir / f"{dt.date.today().isoformat()}-{path.name}"
    shutil.copyfile(path, kept)
    return str(kept.relative_to(ROOT)) if kept.is_relative_to(ROOT) else str(kept)


def _fresh(scale: _Scale) -> int:
    """Run one pod (pulls and compiles the module), delete it; the node's idle thread count."""
    scale.burst("warm", 1, 60)
    delete_pods(scale.admin, scale.ns)
    scale.watcher.wait("the warm pod to go", scale.watcher.reached("deleted", "warm-0000"), 60)
    return settle_threads(scale.node.pid)


@contextlib.contextmanager
def _scale_node(ctx: Context, cluster: Cluster, image: str, patch: str | None = None) -> Iterator[_Scale]:
    prefix = "bench-scale" if patch is None else "bench-experiment"
    with (
        cluster.admin() as admin,
        running_node(cluster, admin, ctx.workdir, prefix, max_pods=1100, patch=patch) as node,
        namespace(admin, prefix) as ns,
        PodWatcher(cluster, ns) as watcher,
    ):
        yield _Scale(ctx, cluster, admin, node, image, ns, watcher)


def run(ctx: Context) -> Outcome:
    out = Outcome("pods_scale")
    sizes = [ctx.scale(100, 5), ctx.scale(1000, 20)]
    settle = ctx.seconds(15, 1)
    idle_window = ctx.seconds(30, 3)
    timeout = ctx.seconds(300, 60)
    cluster = ctx.cluster()
    image = push("sleep", wasm("sleep_forever"), ctx.workdir)
    profiling = ctx.profile and py_spy() is not None
    if ctx.profile and not profiling:
        out.not_measured.append("no profiles of the node: py-spy is not installed (the bench extra)")
    profiles: dict[str, Any] = {}
    with _scale_node(ctx, cluster, image) as scale:
        pid = scale.node.pid
        idle_threads = _fresh(scale)
        ctx.quiet()
        rss = {0: _settled_rss(pid, settle)}
        cpu_idle = {0: round(_idle_cpu(pid, min(idle_window, 10)), 3)}
        bursts: dict[int, Burst] = {}
        cleared: dict[int, float] = {}
        repeats: dict[int, list[float | None]] = {}
        for size in sizes:
            runs = []
            for index in range(ctx.scale(3, 2) if size == sizes[-1] else 1):
                ctx.quiet()
                runs.append(scale.burst(f"b{size}r{index}", size, timeout))
                if index == 0:  # memory and idle CPU with the first burst's pods
                    rss[size] = _settled_rss(pid, settle)
                    if size == sizes[-1]:
                        cpu_idle[size] = round(_idle_cpu(pid, idle_window), 3)
                        if profiling:
                            profiles["idle"] = _idle_profile(scale, ctx.seconds(20, 2))
                cleared[size] = round(scale.clear(idle_threads), 1)
            runs.sort(key=lambda b: float("inf") if b.all_running_s is None else b.all_running_s)
            bursts[size] = runs[(len(runs) - 1) // 2]  # the median burst (the slower one of two)
            repeats[size] = [b.all_running_s for b in runs]
        if profiling:
            profiles["burst"] = _profiled_burst(
                scale, "prof", sizes[-1], timeout, idle_threads=idle_threads, idle=True
            )
            profiles["burst_cpu"] = _profiled_burst(
                scale, "cpu", sizes[-1], timeout, idle_threads=idle_threads, idle=False
            )
    _report(
        out, sizes=sizes, bursts=bursts, rss=rss, cpu_idle=cpu_idle, cleared=cleared, idle_window=idle_window
    )
    out.data["all_running_s_of_each_burst"] = {str(k): v for k, v in repeats.items()}
    out.figures[0].detail = f"median of {len(repeats[sizes[-1]])} bursts ({repeats[sizes[-1]]} s); " + (
        out.figures[0].detail
    )
    out.data["profiles"] = profiles
    out.data["experiments"] = [
        _experiment(ctx, cluster, image, sizes[-1], timeout=timeout, name=name) for name in EXPERIMENTS
    ]
    for fig, experiment in zip(("2d", "2e"), out.data["experiments"], strict=False):
        _experiment_figure(out, fig, experiment)
    return out


# Experiments: the same burst on a node whose code is patched at start (not shipped settings).
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "16 pod workers": (
        "wasmlet.pod.controller.WORKERS = 16",
        "wasmlet.pod.controller.WORKERS = 16 (wasmlet ships 4)",
    ),
}


def _experiment(
    ctx: Context, cluster: Cluster, image: str, size: int, *, timeout: float, name: str
) -> dict[str, Any]:
    """The burst on a node started with one of :data:`EXPERIMENTS` applied."""
    patch, what = EXPERIMENTS[name]
    with _scale_node(ctx, cluster, image, patch=patch) as scale:
        idle_threads = _fresh(scale)
        ctx.quiet()
        burst = scale.burst("x", size, timeout)
        scale.clear(idle_threads)
    return {"experiment": name, "change": what, **burst.as_dict()}


def _experiment_figure(out: Outcome, fig: str, experiment: dict[str, Any]) -> None:
    cpu = experiment["cpu"]["cpu_s"]
    busiest = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    out.add(
        Figure(
            fig,
            f"experiment, {experiment['experiment']}: the same {experiment['pods']}-pod burst "
            f"({experiment['change']})",
            experiment["all_running_s"],
            "s",
            detail=f"per pod p50 {experiment['per_pod_ms'].get('p50')} ms, p99 "
            f"{experiment['per_pod_ms'].get('p99')} ms; CPU in the burst ({experiment['cpu']['elapsed_s']} s "
            f"wall): {busiest}",
        )
    )


def _idle_profile(scale: _Scale, seconds: float) -> dict[str, Any]:
    """Where the node's idle CPU goes with all the pods running (on-CPU samples only)."""
    path = scale.ctx.workdir / "node-idle.pyspy.txt"
    profiler = Profiler(scale.node.pid, path, rate=50)
    meter = CpuMeter({"node": scale.node.pid}).start()
    time.sleep(seconds)
    meter.stop()
    profiler.stop()
    return {
        "seconds": seconds,
        "cpu": meter.as_dict(),
        "profile": profile.summarize(path),
        "raw": _keep(scale.ctx, path),
    }


def _profiled_burst(
    scale: _Scale, prefix: str, size: int, timeout: float, *, idle_threads: int, idle: bool
) -> dict[str, Any]:
    """The burst again under py-spy: with idle samples (``idle``: the pod workers' wall time, by
    purpose; 10 Hz, as the node runs ~1000 threads), or on-CPU samples only (50 Hz)."""
    scale.ctx.quiet()
    path = scale.ctx.workdir / f"node-burst{'' if idle else '-cpu'}.pyspy.txt"
    rate = 10 if idle else 50
    profiler = Profiler(scale.node.pid, path, rate=rate, idle=idle)
    time.sleep(1)
    burst = scale.burst(prefix, size, timeout)
    profiler.stop()
    scale.clear(idle_threads)
    return {
        "rate_hz": rate,
        "idle_samples": idle,
        "burst": {k: v for k, v in burst.as_dict().items() if k != "timeline"},
        "profile": profile.summarize(path),
        "raw": _keep(scale.ctx, path),
    }


def _report(
    out: Outcome,
    *,
    sizes: list[int],
    bursts: dict[int, Burst],
    rss: dict[int, int],
    cpu_idle: dict[int, float],
    cleared: dict[int, float],
    idle_window: float,
) -> None:
    big = bursts[sizes[-1]]
    out.data = {
        "bursts": {str(k): v.as_dict() for k, v in bursts.items()},
        "rss_bytes": {str(k): v for k, v in rss.items()},
        "rss_per_pod_kib": {str(k): round((rss[k] - rss[0]) / k / 1024, 1) for k in sizes},
        "cpu_idle_pct_of_core": {str(k): v for k, v in cpu_idle.items()},
        "idle_window_s": idle_window,
        "clear_s": {str(k): v for k, v in cleared.items()},
    }
    cpu = big.cpu["cpu_s"]
    busiest = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    out.add(
        Figure(
            "2a",
            f"{big.pods} pods created at once → all Running (watch-observed)",
            big.all_running_s,
            "s",
            15,
            "<=",
            f"{big.running}/{big.pods} Running; POSTs took {big.create_s} s; CPU in the burst "
            f"({big.cpu['elapsed_s']} s wall, 2 cores): {busiest}",
        )
    )
    out.add(Figure("2b", "per pod, created → Running, p50", big.per_pod_ms.get("p50"), "ms"))
    out.add(
        Figure(
            "2c",
            "per pod, created → Running, p99",
            big.per_pod_ms.get("p99"),
            "ms",
            detail=f"bound → Running p50 {big.bound_to_running_ms.get('p50')} ms, "
            f"p99 {big.bound_to_running_ms.get('p99')} ms",
        )
    )
    for size, fig in zip(sizes, ("4a", "4b"), strict=True):
        per_pod = (rss[size] - rss[0]) / size / MB
        out.add(
            Figure(
                fig,
                f"node RSS per idle pod at {size} pods: (RSS({size}) - RSS(0)) / {size}",
                round(per_pod, 3),
                "MB",
                1,
                "<=",
                f"RSS {rss[0] / MB:.1f} MB with 0 pods, {rss[size] / MB:.1f} MB with {size}",
            )
        )
    out.add(
        Figure(
            "5",
            f"node CPU with {sizes[-1]} idle pods, over {idle_window:.0f} s",
            cpu_idle[sizes[-1]],
            "% of a core",
            5,
            "<=",
            f"with 0 pods: {cpu_idle[0]} %",
        )
    )
