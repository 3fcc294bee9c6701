"""Figure 9d-9g: a ``wasi:http`` component (examples/http-hello, built with cargo for
wasm32-wasip2) served by ``wasmtime serve`` under wasmlet (one supervised process per container,
on the pod IP) side by side with the same CLI binary started bare on 127.0.0.1 with the same flags:
requests/s and latency of both under the same load; pod created → first 200 with the component
cached; what one idle component pod costs (its process's RSS and PSS, and the node's RSS growth).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    BenchError,
    Context,
    CpuMeter,
    Figure,
    Node,
    Outcome,
    PodWatcher,
    pids_where,
    pod_manifest,
    rss_bytes,
    summary,
    wait_for,
)
from bench.http_load import (
    CLIENTS,
    PORT,
    create_to_first_200,
    first_200,
    free_port,
    load,
    measured,
    pod_ip,
    running_count,
)
from wasmlet import paths
from wasmlet.config import DEFAULT_MEMORY_LIMIT
from wasmlet.kube.client import Client
from wasmlet.runtime.engine import RunSpec
from wasmlet.serve import wasi_http
from wasmlet.serve.wasi_http import WasiHttpContainer, WasiHttpServing

HTTP_HELLO = ROOT / "examples" / "http-hello"
RUST_TARGET = "wasm32-wasip2"


def component_manifest(name: str, node: str, image: str) -> dict[str, Any]:
    """A pod of a wasi:http component: containerPort 8080, no WAGI annotation."""
    manifest = pod_manifest(name, node, image, bind=True)
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": PORT}]
    return manifest


def wasmtime_cli() -> Path:
    """The wasmtime CLI wasmlet serves components with (the node role builds it)."""
    cli = wasi_http.default_cli()
    if not os.access(cli, os.X_OK):
        raise BenchError(
            f"no wasmtime CLI at {cli}: the node role builds it (roles/node/files/build-wasmtime-cli.sh "
            f"{wasi_http.WASMTIME_VERSION} <rust toolchain> {cli.parent})"
        )
    return cli


def build_http_hello(log: Callable[[str], None]) -> Path:
    """examples/http-hello built with rustup's cargo for wasm32-wasip2 (incremental: a warm
    build is a no-op); the component's path."""
    cargo_bin = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin"
    cargo, rustup = cargo_bin / "cargo", cargo_bin / "rustup"
    for tool in (cargo, rustup):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"no {tool.name} at {tool}: building examples/http-hello needs rustup's Rust")
    env = {**os.environ, "RUSTUP_AUTO_INSTALL": "0"}
    installed = subprocess.run(
        [str(rustup), "target", "list", "--installed"],
        cwd=HTTP_HELLO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if RUST_TARGET not in installed.stdout.split():
        raise BenchError(
            f"rustup's Rust has no {RUST_TARGET} target (`rustup target add {RUST_TARGET}`): "
            f"{(installed.stdout + installed.stderr).strip()[-500:]}"
        )
    target_dir = paths.home() / "build" / "http-hello-bench"
    log(f"building examples/http-hello for {RUST_TARGET} into {target_dir}")
    proc = subprocess.run(
        [
            "nice",
            str(cargo),
            "build",
            "--release",
            "--locked",
            f"--target={RUST_TARGET}",
            f"--target-dir={target_dir}",
        ],
        cwd=HTTP_HELLO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    component = target_dir / RUST_TARGET / "release" / "http_hello.wasm"
    if proc.returncode != 0 or not component.exists():
        raise BenchError(
            f"cargo build of examples/http-hello failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return component


def _discard(_data: bytes) -> None:
    pass


def wasmlet_serve_argv(cli: Path, component: Path, workdir: Path) -> list[str]:
    """The argv wasmlet gives ``wasmtime serve`` for a container of ``component`` with no
    limits.memory, no variables and no volumes (the node's defaults), from wasmlet's own code, so
    that the bare process gets the same flags; its compilation cache in ``workdir``."""
    serving = WasiHttpServing(cli, workdir)
    try:
        spec = RunSpec(
            module=component,
            argv=[component.name],
            env={},
            stdout=_discard,
            stderr=_discard,
            memory_limit_bytes=DEFAULT_MEMORY_LIMIT,
        )
        return WasiHttpContainer(serving, spec, lambda _status: None)._argv([])
    finally:
        serving.close()


@contextlib.contextmanager
def bare_serve(argv: list[str], workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """``argv`` (wasmlet's, see :func:`wasmlet_serve_argv`) listening on 127.0.0.1:<free port>
    itself instead of the handed-over socket: (process, port, seconds from start to its first 200).
    Stopped as wasmlet stops it: SIGINT, then SIGKILL after 10 s."""
    port = free_port()
    if "--systemd-listenfd" not in argv:
        raise BenchError(f"wasmlet's wasmtime serve argv has no --systemd-listenfd to replace: {argv}")
    argv = [f"--addr=127.0.0.1:{port}" if arg == "--systemd-listenfd" else arg for arg in argv]
    output = workdir / "bare-serve.out"
    with output.open("ab") as out:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = started + 120  # the first start compiles the component
        while True:
            try:
                up = first_200("127.0.0.1", min(deadline, time.monotonic() + 0.5), port)
                break
            except TimeoutError:
                tail = output.read_text(errors="replace")[-1500:]
                if process.poll() is not None:
                    raise BenchError(f"bare wasmtime serve exited ({process.returncode}): {tail}") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"bare wasmtime serve did not answer 200 in 120 s: {tail}") from None
        yield process, port, up - started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def parent_pid(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


def serving_processes(node: Node, cli: Path) -> list[int]:
    """The node's ``wasmtime serve`` children."""
    found = []
    for pid in pids_where(lambda argv: argv[:2] == [str(cli), "serve"]):
        with contextlib.suppress(OSError, ValueError):
            if parent_pid(pid) == node.pid:
                found.append(pid)
    return found


def pss_bytes(pid: int) -> int | None:
    """``pid``'s proportional set size (/proc/<pid>/smaps_rollup), None if not readable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def wasi_http_bare(ctx: Context, argv: list[str]) -> dict[str, Any]:
    """The component under bare ``wasmtime serve``: the load, then start → first 200 samples."""
    with bare_serve(argv, ctx.workdir) as (process, port, _compiled):  # compiles into its cache
        ctx.quiet()
        cpu = CpuMeter({"wasmtime": process.pid}).start()
        rate, latencies, errors = load("127.0.0.1", ctx.seconds(10, 1), ctx.scale(40000, 400), port)
        cpu.stop()
    bare = measured(rate, latencies, errors, cpu)
    starts = []
    for _index in range(ctx.scale(10, 2)):
        with bare_serve(argv, ctx.workdir) as (_process, _port, seconds):
            starts.append(seconds)
    bare["start_to_first_200_ms"] = summary(starts, 1000, 1)
    with bare_serve(argv, ctx.workdir) as (process, _port, _seconds):
        time.sleep(2)  # idle after its first answer, as the idle pods are measured
        bare["idle"] = {
            "process_rss_bytes": rss_bytes(process.pid),
            "process_pss_bytes": pss_bytes(process.pid),
        }
    return bare


def wasi_http_wasmlet(
    ctx: Context, cli: Path, admin: Client, node: Node, watcher: PodWatcher, *, ns: str, image: str
) -> dict[str, Any]:
    """The component as pods on ``node``: the load, created → first 200, idle pods' memory."""
    path = f"/api/v1/namespaces/{ns}/pods"
    found: dict[str, Any] = {}
    admin.post(path, component_manifest("component-warm", node.name, image))  # pulls and compiles once
    ip = wait_for("the warm component pod", lambda: pod_ip(admin, ns, "component-warm"), 120)
    try:
        first_200(ip, time.monotonic() + 120)
    except TimeoutError as exc:
        status = admin.get(f"{path}/component-warm").get("status") or {}
        raise BenchError(f"{exc}: its containers {status.get('containerStatuses')}") from exc
    pids = serving_processes(node, cli)
    if len(pids) != 1:
        raise BenchError(f"expected one wasmtime serve child of the node, found {pids}")
    ctx.quiet()
    cpu = CpuMeter({"wasmtime": pids[0], "node": node.pid}).start()
    rate, latencies, errors = load(ip, ctx.seconds(10, 1), ctx.scale(40000, 400))
    cpu.stop()
    found["load"] = measured(rate, latencies, errors, cpu)
    admin.delete(f"{path}/component-warm?gracePeriodSeconds=0")

    names = [f"component-first-{index:03d}" for index in range(ctx.scale(10, 2))]
    manifests = [component_manifest(name, node.name, image) for name in names]
    to_200 = [create_to_first_200(admin, watcher, path, manifest) for manifest in manifests]
    found["create_to_first_200_ms"] = summary(to_200, 1000, 1)

    wait_for("the component pods' processes to end", lambda: not serving_processes(node, cli), 60, 0.2)
    idle = ctx.scale(10, 2)
    time.sleep(2)
    before = rss_bytes(node.pid)
    names = [f"component-idle-{index:03d}" for index in range(idle)]
    for name in names:
        admin.post(path, component_manifest(name, node.name, image))
    wait_for(
        f"{idle} idle component pods Running",
        lambda: running_count(admin, path, "component-idle-") == idle or None,
        300,
    )
    for name in names:  # each has answered once (as a readiness probe would)
        ip = wait_for(f"pod {name}'s IP", lambda n=name: pod_ip(admin, ns, n), 60)  # type: ignore[misc]
        first_200(ip, time.monotonic() + 60)
    time.sleep(2)
    node_growth = (rss_bytes(node.pid) - before) / idle
    pids = serving_processes(node, cli)
    if len(pids) != idle:
        raise BenchError(f"expected {idle} wasmtime serve children of the node, found {len(pids)}")
    rss = [rss_bytes(pid) for pid in pids]
    pss = [p for p in (pss_bytes(pid) for pid in pids) if p is not None]
    found["idle"] = {
        "pods": idle,
        "process_rss_bytes": round(statistics.median(rss)),
        "process_pss_bytes": round(statistics.median(pss)) if pss else None,
        "node_rss_growth_bytes_per_pod": round(node_growth),
    }
    for name in names:
        admin.delete(f"{path}/{name}?gracePeriodSeconds=0")
    wait_for("the idle component pods' processes to end", lambda: not serving_processes(node, cli), 60, 0.2)
    return found


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def add_wasi_http_figures(out: Outcome, d: dict[str, Any]) -> None:
    bare, under = d["bare"], d["wasmlet"]
    bare_ms, under_ms = bare["latency_ms"], under["latency_ms"]
    out.add(
        Figure(
            "9d",
            "wasi:http component: requests/s under wasmlet (pod) / bare `wasmtime serve`",
            _ratio(under["requests_per_s"], bare["requests_per_s"]),
            "ratio",
            0.5,
            ">=",
            f"examples/http-hello; wasmlet {under['requests_per_s']} req/s on the pod IP vs bare "
            f"`wasmtime serve` {bare['requests_per_s']} req/s on 127.0.0.1 (same CLI binary and limits); "
            f"{CLIENTS} keep-alive clients on this machine; errors {under['errors']} / {bare['errors']}; "
            f"CPU per request: wasmtime {under['cpu_us_per_request'].get('wasmtime')} / "
            f"{bare['cpu_us_per_request'].get('wasmtime')} µs, wasmlet node "
            f"{under['cpu_us_per_request'].get('node')} µs",
        )
    )
    out.add(
        Figure(
            "9e",
            "wasi:http component: latency p99 under wasmlet (pod) / bare `wasmtime serve`",
            _ratio(under_ms.get("p99"), bare_ms.get("p99")),
            "ratio",
            2,
            "<=",
            f"p99 {under_ms.get('p99')} ms under wasmlet vs {bare_ms.get('p99')} ms bare; "
            f"p50 {under_ms.get('p50')} vs {bare_ms.get('p50')} ms",
        )
    )
    first, bare_start = d["create_to_first_200_ms"], bare["start_to_first_200_ms"]
    out.add(
        Figure(
            "9f",
            "wasi:http component pod created → first 200 (component cached), p50",
            first.get("p50"),
            "ms",
            100,
            "<=",
            f"{first.get('n')} pods one after another; p99 {first.get('p99')} ms. The pod's path (as 9b's) "
            "plus a new `wasmtime serve` process per pod: process start + compilation-cache load, which "
            f"bare (start → first 200) takes {bare_start.get('p50')} ms p50",
        )
    )
    idle = d["idle"]
    pss = idle["process_pss_bytes"]
    growth = idle["node_rss_growth_bytes_per_pod"]
    out.add(
        Figure(
            "9g",
            "memory per idle wasi:http component pod (its wasmtime serve process + node growth)",
            round((idle["process_rss_bytes"] + growth) / 1024, 1),
            "KiB",
            1024,
            "<=",
            f"a separate process per pod: RSS {round(idle['process_rss_bytes'] / 1024)} KiB"
            + (f", PSS {round(pss / 1024)} KiB" if pss is not None else "")
            + f" (medians over {idle['pods']} idle pods, each having answered once), plus the wasmlet "
            f"process's RSS growth {round(growth / 1024, 1)} KiB per pod; a bare `wasmtime serve` of it: "
            f"RSS {round(bare['idle']['process_rss_bytes'] / 1024)} KiB",
        )
    )
