"""Figure 1: node-level start rate of a cached module, no apiserver.

:class:`wasmlet.runtime.engine.Runtime` (what the pod controller calls), a precompiled hello module that
prints one line and exits at once; N starts one after another (each waits for the exit) and N
started at once (then all waited for). Output goes to a callback that drops it.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Context, Figure, Outcome, summary, wasm
from wasmlet.runtime.engine import ExitStatus, RunSpec, Runtime

# Published, not measured here: runwasi's stress test, 1000 tasks on its wasmtime containerd shim,
# "throuput: 329.85 tasks/s" (https://github.com/containerd/runwasi/issues/613, 2025-02-18).
RUNWASI_REFERENCE = 330.0
RUNWASI_SOURCE = "https://github.com/containerd/runwasi/issues/613"


def _spec(module: Path, index: int) -> RunSpec:
    def drop(_chunk: bytes) -> None:
        return None

    return RunSpec(
        module=module, argv=["hello"], env={}, stdout=drop, stderr=drop, name=f"bench/hello-{index}"
    )


def _sequential(runtime: Runtime, module: Path, count: int) -> tuple[float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for index in range(count):
        t0 = time.perf_counter()
        status = runtime.start(_spec(module, index), _ignore).wait(10)
        latencies.append(time.perf_counter() - t0)
        if status is None or status.exit_code != 0:
            raise RuntimeError(f"hello run {index} did not exit 0: {status}")
    return time.perf_counter() - started, latencies


def _concurrent(runtime: Runtime, module: Path, count: int) -> float:
    started = time.perf_counter()
    executions = [runtime.start(_spec(module, index), _ignore) for index in range(count)]
    for execution in executions:
        status = execution.wait(30)
        if status is None or status.exit_code != 0:
            raise RuntimeError(f"hello run did not exit 0: {status}")
    return time.perf_counter() - started


def _ignore(_status: ExitStatus) -> None:
    return None


def run(ctx: Context) -> Outcome:
    out = Outcome("runtime_start")
    count = ctx.scale(2000, 50)
    rounds = ctx.scale(5, 1)
    source = ctx.workdir / "hello.wasm"
    source.write_bytes(wasm("hello"))
    runtime = Runtime(ctx.workdir / "compiled")
    try:
        module = runtime.precompile(source)
        _sequential(runtime, module, 20)  # warm: the first run loads the module into the cache
        ctx.quiet()
        seq_rates, conc_rates, latencies = [], [], []
        for _round in range(rounds):
            elapsed, lat = _sequential(runtime, module, count)
            seq_rates.append(count / elapsed)
            latencies += lat
            conc_rates.append(count / _concurrent(runtime, module, count))
    finally:
        runtime.close()
    best_seq, best_conc = max(seq_rates), max(conc_rates)
    out.data = {
        "starts_per_round": count,
        "rounds": rounds,
        "sequential_rates": [round(r, 1) for r in seq_rates],
        "concurrent_rates": [round(r, 1) for r in conc_rates],
        "start_to_exit_ms": summary(latencies, 1000),
        "runwasi_reference_tasks_per_s": RUNWASI_REFERENCE,
    }
    median = sorted(seq_rates)[len(seq_rates) // 2]
    out.add(
        Figure(
            "1a",
            "cached module starts, sequential (start → exit, one after another)",
            round(median, 0),
            "starts/s",
            1000,
            ">=",
            f"median of {rounds} rounds of {count} (best {best_seq:.0f}/s); start→exit p50 "
            f"{out.data['start_to_exit_ms'].get('p50')} ms, p99 {out.data['start_to_exit_ms'].get('p99')} ms",
        )
    )
    median_conc = sorted(conc_rates)[len(conc_rates) // 2]
    out.add(
        Figure(
            "1b",
            "cached module starts, concurrent (N started at once, all exited)",
            round(median_conc, 0),
            "starts/s",
            1000,
            ">=",
            f"median of {rounds} rounds of {count} (best {best_conc:.0f}/s)",
        )
    )
    out.notes.append(
        f"Reference, published and not measured here: runwasi's wasmtime containerd shim ran 1000 tasks at "
        f"{RUNWASI_REFERENCE:.0f} tasks/s in its stress test ({RUNWASI_SOURCE}); its tasks go through "
        "containerd's task API and a shim, which this node-level figure does not include."
    )
    return out
