"""Figure 7: container logs.

Latency: a pod prints "tick" every 73 ms; a ``kubectl logs -f --timestamps``-style streaming
request through the apiserver (GET .../log?follow=true&timestamps=true) receives the lines. The
latency of a line is the moment it arrived here minus its CRI timestamp (taken by the node's log
writer when the module wrote it; same host, same clock).

Throughput cost: a module prints "start" and then N lines of 48 bytes as fast as it can (one
``fd_write`` each). In a pod its time is the span between the first and last lines' log
timestamps; on bare wasmtime-py with stdout to /dev/null it is the whole ``_start``. In between:
bare wasmtime-py with a Python callback that drops the output (how wasmlet logged before it used
pipes), wasmlet's Runtime in-process with its real log writer (no apiserver), bare wasmtime-py
writing into a regular file, and into a pipe emptied by a thread that discards: the kernel's cost
of a write into a pipe, below which no stored output can go (figure 7d excludes it).
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import wasmtime

from bench.common import (
    Cluster,
    Context,
    Figure,
    Outcome,
    PodWatcher,
    http_client,
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
from wasmlet.logs.writer import ContainerLogWriter
from wasmlet.runtime import outputs
from wasmlet.runtime.engine import RunSpec, Runtime

LINE = 48  # bytes per line of logspam.wat
START = 6  # "start\n"


def _bare(
    module: bytes, configure: Callable[[wasmtime.WasiConfig], None], after: Callable[[], None] | None = None
) -> float:
    """Seconds ``_start`` took (and ``after``, e.g. draining the output), setup excluded."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    configure(wasi)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, wasmtime.Module(engine, module))
    start = start_func(instance, store)
    t0 = time.perf_counter()
    start(store)
    if after is not None:
        after()
    took = time.perf_counter() - t0
    del instance, start, store, linker, engine
    gc.collect()
    return took


def bare_devnull(module: bytes) -> float:
    def configure(wasi: wasmtime.WasiConfig) -> None:
        wasi.stdout_file = os.devnull

    return _bare(module, configure)


def bare_callback(module: bytes) -> float:
    def drop(_chunk: bytes) -> None:
        return None

    def configure(wasi: wasmtime.WasiConfig) -> None:
        wasi.stdout_custom = drop

    return _bare(module, configure)


def callback_threads(module: bytes) -> dict[str, Any]:
    """Which threads wasmtime-py runs a ``stdout_custom`` callback on (evidence for its cost)."""
    seen: Counter[str] = Counter()
    caller = threading.get_ident()
    others: dict[int, str] = {}

    def note(_chunk: bytes) -> None:
        ident = threading.get_ident()
        if ident == caller:
            seen["the thread running the module"] += 1
        else:
            seen[others.setdefault(ident, f"other thread #{len(others) + 1}")] += 1

    def configure(wasi: wasmtime.WasiConfig) -> None:
        wasi.stdout_custom = note

    _bare(module, configure)
    return {"callbacks": sum(seen.values()), "threads": dict(seen)}


def bare_pipe(module: bytes, lines: int) -> float:
    """The kernel's floor for stored output: WASI stdout into a 1 MiB pipe that a thread empties
    every 2 ms and discards (no epoll, no log format): what a write into a pipe costs the module."""
    expected = START + lines * LINE
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, outputs.BUSY_PIPE_SIZE)
    drained = threading.Event()

    def reader() -> None:
        seen = 0
        while seen < expected:
            chunk = os.read(read_fd, outputs.CHUNK)
            if not chunk:
                break
            seen += len(chunk)
            if len(chunk) < outputs.CHUNK:
                time.sleep(outputs.COALESCE)
        drained.set()

    def configure(wasi: wasmtime.WasiConfig) -> None:
        wasi.stdout_file = f"/proc/self/fd/{write_fd}"

    def drain() -> None:
        if not drained.wait(120):
            raise RuntimeError("the pipe reader did not get all the output")

    thread = threading.Thread(target=reader, name="bench-pipe-reader", daemon=True)
    thread.start()
    took = _bare(module, configure, drain)
    os.close(write_fd)
    thread.join(5)
    os.close(read_fd)
    return took


def bare_file(module: bytes, workdir: Path) -> float:
    """WASI stdout into a regular file (``wasmtime run m.wasm > out``)."""
    target = workdir / unique("bare-file")

    def configure(wasi: wasmtime.WasiConfig) -> None:
        wasi.stdout_file = str(target)

    took = _bare(module, configure)
    target.unlink()
    return took


def runtime_writer(module: bytes, workdir: Path) -> float:
    """wasmlet's Runtime in-process, stdout into its CRI log writer; seconds start → exit."""
    source = workdir / "logspam.wasm"
    source.write_bytes(module)
    runtime = Runtime(workdir / "compiled")
    writer = ContainerLogWriter(workdir / unique("runtime") / "0.log")
    try:
        spec = RunSpec(
            runtime.precompile(source), ["logspam"], {}, writer.stdout, writer.stderr, name="bench/logs"
        )
        status = runtime.start(spec, lambda _status: None).wait(600)
    finally:
        runtime.close()
        writer.close()
    if status is None or status.exit_code != 0:
        raise RuntimeError(f"logspam on the runtime: {status}")
    return (status.finished_at - status.started_at).total_seconds()


def follow_latencies(cluster: Cluster, path: str, count: int, timeout: float) -> list[float]:
    """Stream ``path`` (follow, timestamps) and return the latency of ``count`` new lines."""
    latencies: list[float] = []
    opened = time.time_ns()
    deadline = time.monotonic() + timeout
    params = {"follow": "true", "timestamps": "true"}
    with (
        http_client(cluster, httpx.Timeout(10.0, read=timeout)) as client,
        client.stream("GET", path, params=params) as resp,
    ):
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:300]}")
        for line in resp.iter_lines():
            arrived = time.time_ns()
            stamp, _space, _text = line.partition(" ")
            if not stamp:
                continue
            written = parse_timestamp(stamp)
            if written >= opened:  # lines from before the request came all at once: not latency
                latencies.append((arrived - written) / 1e9)
            if len(latencies) >= count or time.monotonic() > deadline:
                break
    return latencies


def pod_log_span(admin_get: Callable[[str, dict[str, str]], object], path: str) -> tuple[float, int]:
    text = str(admin_get(path, {"timestamps": "true"}))
    rows = [line.split(" ", 1) for line in text.splitlines() if line]
    if rows[0][1] != "start":
        raise RuntimeError(f"unexpected pod log start {rows[0]!r}")
    return (parse_timestamp(rows[-1][0]) - parse_timestamp(rows[0][0])) / 1e9, len(rows) - 1


def run(ctx: Context) -> Outcome:
    out = Outcome("logs")
    samples = ctx.scale(200, 10)
    lines = ctx.scale(1_000_000, 2_000)
    callback_lines = ctx.scale(100_000, 2_000)  # ~40 µs a line: fewer, it is reported per line
    reps = ctx.scale(5, 1)
    # Not a multiple of the node's 50 ms follow poll, so that lines land at every phase of it.
    interval_ns = 73_000_000
    spam = wasm("logspam", lines=lines)
    slow_spam = wasm("logspam", lines=callback_lines)
    cluster = ctx.cluster()
    # The throughput cost is read from the pod's log, first line to last: no rotation may drop the
    # first ("start") of the ~90 MB a full run writes (the default --container-log-max-size is 10Mi).
    keep_all = ("--container-log-max-size", "1Gi")
    with (
        cluster.admin() as admin,
        running_node(cluster, admin, ctx.workdir, "bench-logs", flags=keep_all) as node,
    ):
        ticker = push("ticker", wasm("ticker", interval_ns=interval_ns), ctx.workdir)
        spam_image = push("logspam", spam, ctx.workdir)
        with namespace(admin, "bench-logs") as ns, PodWatcher(cluster, ns) as watcher:
            admin.post(f"/api/v1/namespaces/{ns}/pods", pod_manifest("ticker", node.name, ticker))
            watcher.wait("the ticker pod to run", watcher.reached("running", "ticker"), 120)
            ctx.quiet()
            latencies = follow_latencies(
                cluster, f"/api/v1/namespaces/{ns}/pods/ticker/log", samples, samples * interval_ns / 1e9 + 30
            )
            admin.delete(f"/api/v1/namespaces/{ns}/pods/ticker")

            def pod() -> float:
                name = unique("logspam")
                admin.post(
                    f"/api/v1/namespaces/{ns}/pods",
                    pod_manifest(name, node.name, spam_image, restart="Never"),
                )
                watcher.wait(f"pod {name} to finish", watcher.reached("finished", name), 900)
                span, printed = pod_log_span(admin.get, f"/api/v1/namespaces/{ns}/pods/{name}/log")
                if printed != lines:
                    raise RuntimeError(f"pod {name} logged {printed} lines, not {lines}")
                return span

            pod()  # warm: pull and compile once
            ctx.quiet()
            runs: dict[str, list[float]] = {
                "bare_devnull": [],
                "bare_pipe": [],
                "bare_file": [],
                "bare_python_callback": [],
                "wasmlet_runtime_writer": [],
                "wasmlet_pod": [],
            }
            for _rep in range(reps):
                runs["bare_devnull"].append(bare_devnull(spam))
                runs["bare_pipe"].append(bare_pipe(spam, lines))
                runs["bare_file"].append(bare_file(spam, ctx.workdir))
                runs["bare_python_callback"].append(bare_callback(slow_spam) * lines / callback_lines)
                runs["wasmlet_runtime_writer"].append(runtime_writer(spam, ctx.workdir))
                runs["wasmlet_pod"].append(pod())
    threads = callback_threads(wasm("logspam", lines=1000))
    medians = {k: summary(v, digits=4)["p50"] for k, v in runs.items()}
    per_line_us = {k: round(v / lines * 1e6, 3) for k, v in medians.items()}
    lat = summary(latencies, 1000, 1)
    out.data = {
        "follow": {
            "interval_ms": interval_ns / 1e6,
            "latency_ms": lat,
            "samples_ms": [round(x * 1000, 1) for x in latencies],
        },
        "throughput": {
            "lines": lines,
            "python_callback_lines": callback_lines,
            "note": "bare_python_callback ran python_callback_lines lines, scaled to lines",
            "line_bytes": LINE,
            "reps": reps,
            "seconds": runs,
            "median_s": medians,
            "per_line_us": per_line_us,
            "callback_threads": threads,
        },
    }
    out.add(
        Figure(
            "7a",
            "log line written → received by a follow request through the apiserver, p50",
            lat.get("p50"),
            "ms",
            100,
            "<=",
            f"{lat['n']} lines, one every {interval_ns / 1e6:.0f} ms",
        )
    )
    out.add(
        Figure(
            "7b",
            "log line written → received by a follow request through the apiserver, p99",
            lat.get("p99"),
            "ms",
            100,
            "<=",
            f"max {lat.get('max')} ms",
        )
    )
    cost = medians["wasmlet_pod"] / medians["bare_devnull"] - 1
    us = per_line_us
    out.add(
        Figure(
            "7c",
            "throughput cost of logging: a module printing as fast as it can, in a pod (log writer) "
            "vs on bare wasmtime-py to /dev/null",
            round(cost * 100, 1),
            "%",
            10,
            "<=",
            f"{lines:,} lines of {LINE} B: {us['wasmlet_pod']} µs/line in a pod vs {us['bare_devnull']} "
            f"µs/line to /dev/null; bare into a pipe {us['bare_pipe']}, into a file {us['bare_file']}; "
            f"with a Python callback per write (wasmlet before pipes) {us['bare_python_callback']} µs/line",
        )
    )
    beyond = medians["wasmlet_pod"] / medians["bare_pipe"] - 1
    out.add(
        Figure(
            "7d",
            "the same, the kernel's pipe write excluded: in a pod vs bare wasmtime-py into a pipe "
            "emptied by a thread that discards",
            round(beyond * 100, 1),
            "%",
            10,
            "<=",
            f"{us['wasmlet_pod']} vs {us['bare_pipe']} µs/line; /dev/null is no storage: a write into a pipe "
            f"costs the module {round((us['bare_pipe'] - us['bare_devnull']) * 1000)} ns more, into a "
            f"regular file {round((us['bare_file'] - us['bare_devnull']) * 1000)} ns more",
        )
    )
    return out
