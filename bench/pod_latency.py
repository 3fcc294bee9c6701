"""Figure 3: one pod created → Running, module cached, one after another.

Each pod (an idle hello-world module, ``imagePullPolicy: IfNotPresent``, already pulled and
compiled by a warm-up pod) is created, watched until its phase is Running, then deleted; the
next one is created once the node has stopped the previous module. The clock starts just before
the POST and stops when the watch delivers the Running status. Two variants: scheduled by
kube-scheduler (a nodeSelector, as users write pods), and bound up front (``spec.nodeName``,
which takes the scheduler out and leaves the node and the apiserver).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.common import (
    Cluster,
    Context,
    Figure,
    Node,
    Outcome,
    PodWatcher,
    namespace,
    pod_manifest,
    push,
    running_node,
    settle_threads,
    summary,
    wait_threads,
    wasm,
)
from wasmlet.kube.client import Client


@dataclass
class _Bench:
    ctx: Context
    cluster: Cluster
    admin: Client
    node: Node
    image: str

    def one(self, ns: str, watcher: PodWatcher, name: str, *, bind: bool) -> None:
        watcher.mark_created(name)
        self.admin.post(
            f"/api/v1/namespaces/{ns}/pods", pod_manifest(name, self.node.name, self.image, bind=bind)
        )
        watcher.wait(f"pod {name} to run", watcher.reached("running", name), 60)

    def series(self, count: int, *, bind: bool) -> dict[str, Any]:
        """``count`` pods one after another; their timings."""
        pid = self.node.pid
        with namespace(self.admin, "bench-latency") as ns, PodWatcher(self.cluster, ns) as watcher:
            self.one(ns, watcher, "warm", bind=bind)  # pulls and compiles the module once
            self.admin.delete(f"/api/v1/namespaces/{ns}/pods/warm?gracePeriodSeconds=0")
            watcher.wait("pod warm to go", watcher.reached("deleted", "warm"), 30)
            idle_threads = settle_threads(pid)
            self.ctx.quiet()
            names = [f"pod-{index:04d}" for index in range(count)]
            for name in names:
                self.one(ns, watcher, name, bind=bind)
                self.admin.delete(f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0")
                watcher.wait(f"pod {name} to go", watcher.reached("deleted", name), 30)
                wait_threads(pid, idle_threads, 30)
            total = watcher.durations(names, "created", "running")
            return {
                "create_to_running_ms": summary(total, 1000, 1),
                "create_to_bound_ms": summary(watcher.durations(names, "created", "bound"), 1000, 1),
                "bound_to_running_ms": summary(watcher.durations(names, "bound", "running"), 1000, 1),
                "samples_ms": [round(x * 1000, 1) for x in total],
            }


def run(ctx: Context) -> Outcome:
    out = Outcome("pod_latency")
    count = ctx.scale(100, 3)
    cluster = ctx.cluster()
    results: dict[str, dict[str, Any]] = {}
    with cluster.admin() as admin, running_node(cluster, admin, ctx.workdir, "bench-latency") as node:
        bench = _Bench(ctx, cluster, admin, node, push("sleep", wasm("sleep_forever"), ctx.workdir))
        for variant, bind in (("scheduled", False), ("bound", True)):
            results[variant] = bench.series(count, bind=bind)
    out.data = {"pods": count, **results}
    sched, bound = results["scheduled"]["create_to_running_ms"], results["bound"]["create_to_running_ms"]
    detail = (
        f"{count} pods one after another; created → bound p50 "
        f"{results['scheduled']['create_to_bound_ms'].get('p50')} ms, bound → Running p50 "
        f"{results['scheduled']['bound_to_running_ms'].get('p50')} ms"
    )
    out.add(
        Figure(
            "3a", "one pod created → Running (cached module), p50", sched.get("p50"), "ms", 50, "<=", detail
        )
    )
    out.add(
        Figure(
            "3b", "one pod created → Running (cached module), p99", sched.get("p99"), "ms", 200, "<=", detail
        )
    )
    out.add(
        Figure(
            "3c",
            "the same with spec.nodeName set (scheduler excluded), p50",
            bound.get("p50"),
            "ms",
            50,
            "<=",
            f"p99 {bound.get('p99')} ms",
        )
    )
    return out
