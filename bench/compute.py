"""Figure 6: a CPU-bound module under wasmlet (a pod) vs the same module on bare wasmtime-py.

The module (bench/modules/compute.wat) prints "start", runs a deterministic xorshift64 and
multiply-accumulate loop, prints "checksum <hex>" and exits. Both sides are timed the same way:
from the moment the "start" line is written to the moment the checksum line is, i.e. the loop
alone. In the pod those moments are the CRI log timestamps the node's log writer put on the
lines (read back as ``kubectl logs --timestamps`` does, through the apiserver); on bare
wasmtime-py (plain Engine, Store, Linker with WASI, no epoch interruption, no wasmlet) they are
taken the same way in a stdout callback. The same loop is also run in-process on
:class:`wasmlet.runtime.engine.Runtime` to split the node's own cost from the rest.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

from bench.common import (
    Context,
    Figure,
    Outcome,
    PodWatcher,
    namespace,
    pod_manifest,
    push,
    running_node,
    start_func,
    summary,
    unique,
    wasm,
)
from wasmlet.logs.cri import parse_timestamp
from wasmlet.runtime.engine import RunSpec, Runtime


class _Lines:
    """A stdout callback that notes when each line was written (ns since the epoch)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, bytes]] = []

    def __call__(self, chunk: bytes) -> None:
        now = time.time_ns()
        self.lines.extend((now, line) for line in chunk.splitlines())

    def span(self) -> tuple[float, str]:
        """Seconds from the "start" line to the checksum line, and the checksum."""
        (t0, first), (t1, last) = self.lines[0], self.lines[-1]
        if first != b"start" or not last.startswith(b"checksum "):
            raise RuntimeError(f"unexpected output {self.lines[:3]!r}")
        return (t1 - t0) / 1e9, last.decode().split()[1]


def bare(module: bytes, *, epoch: bool = False) -> tuple[float, str]:
    """Run ``module`` on plain wasmtime-py; (loop seconds, checksum)."""
    config = wasmtime.Config()
    config.epoch_interruption = epoch
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    if epoch:
        store.set_epoch_deadline(1 << 40)
    lines = _Lines()
    wasi = wasmtime.WasiConfig()
    wasi.stdout_custom = lines
    store.set_wasi(wasi)
    instance = linker.instantiate(store, wasmtime.Module(engine, module))
    start = start_func(instance, store)
    start(store)
    del instance, start, store, linker, engine
    gc.collect()
    return lines.span()


def on_runtime(module: bytes, workdir: Path) -> tuple[float, str]:
    """Run ``module`` in-process on wasmlet's Runtime (what a pod gets, without the apiserver)."""
    source = workdir / "compute-runtime.wasm"
    source.write_bytes(module)
    runtime = Runtime(workdir / "compiled")
    lines = _Lines()
    try:
        spec = RunSpec(runtime.precompile(source), ["compute"], {}, lines, lines, name="bench/compute")
        status = runtime.start(spec, lambda _status: None).wait(600)
    finally:
        runtime.close()
    if status is None or status.exit_code != 0:
        raise RuntimeError(f"compute on the runtime: {status}")
    return lines.span()


def log_span(text: str) -> tuple[float, str]:
    """Seconds between the "start" and checksum lines of ``kubectl logs --timestamps`` output."""
    rows = [line.split(" ", 1) for line in text.splitlines() if line]
    (ts0, first), (ts1, last) = rows[0], rows[-1]
    if first != "start" or not last.startswith("checksum "):
        raise RuntimeError(f"unexpected pod log {text[:200]!r}")
    return (parse_timestamp(ts1) - parse_timestamp(ts0)) / 1e9, last.split()[1]


def _alternate(reps: int, *runs: Callable[[], tuple[float, str]]) -> list[list[tuple[float, str]]]:
    results: list[list[tuple[float, str]]] = [[] for _run in runs]
    for _rep in range(reps):
        for index, one in enumerate(runs):
            results[index].append(one())
    return results


def run(ctx: Context) -> Outcome:
    out = Outcome("compute")
    iterations = ctx.scale(2_000_000_000, 20_000_000)
    reps = ctx.scale(5, 1)
    module = wasm("compute", iterations=iterations)
    cluster = ctx.cluster()
    with cluster.admin() as admin, running_node(cluster, admin, ctx.workdir, "bench-compute") as node:
        image = push("compute", module, ctx.workdir)
        with namespace(admin, "bench-compute") as ns, PodWatcher(cluster, ns) as watcher:

            def pod() -> tuple[float, str]:
                name = unique("compute")
                watcher.mark_created(name)
                admin.post(
                    f"/api/v1/namespaces/{ns}/pods", pod_manifest(name, node.name, image, restart="Never")
                )
                watcher.wait(f"pod {name} to finish", watcher.reached("finished", name), 600)
                if watcher.times[name].phase != "Succeeded":
                    raise RuntimeError(f"pod {name}: {watcher.times[name].status}")
                text = admin.get(f"/api/v1/namespaces/{ns}/pods/{name}/log", {"timestamps": "true"})
                return log_span(str(text))

            pod()  # warm: pull and compile once, outside the measurement
            ctx.quiet()
            bare_runs, epoch_runs, runtime_runs, pod_runs = _alternate(
                reps,
                lambda: bare(module),
                lambda: bare(module, epoch=True),
                lambda: on_runtime(module, ctx.workdir),
                pod,
            )
    checksums = {c for runs in (bare_runs, epoch_runs, runtime_runs, pod_runs) for _s, c in runs}
    if len(checksums) != 1:
        raise RuntimeError(f"the runs disagree on the checksum: {checksums}")
    seconds = {
        "bare_wasmtime": [s for s, _c in bare_runs],
        "bare_wasmtime_epoch_interruption": [s for s, _c in epoch_runs],
        "wasmlet_runtime_in_process": [s for s, _c in runtime_runs],
        "wasmlet_pod": [s for s, _c in pod_runs],
    }
    medians = {k: summary(v)["p50"] for k, v in seconds.items()}
    out.data = {
        "iterations": iterations,
        "reps": reps,
        "checksum": checksums.pop(),
        "seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
        "median_s": medians,
    }
    ratio = medians["bare_wasmtime"] / medians["wasmlet_pod"]
    out.add(
        Figure(
            "6",
            "CPU-bound module: throughput under wasmlet (pod) / bare wasmtime-py",
            round(ratio, 3),
            "ratio",
            0.97,
            ">=",
            f"loop of {iterations:,} iterations: median {medians['wasmlet_pod']:.3f} s in a pod vs "
            f"{medians['bare_wasmtime']:.3f} s bare ({reps} runs each, interleaved); in-process Runtime "
            f"{medians['wasmlet_runtime_in_process']:.3f} s; bare with epoch interruption "
            f"{medians['bare_wasmtime_epoch_interruption']:.3f} s",
        )
    )
    return out
