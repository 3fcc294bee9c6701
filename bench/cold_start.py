"""Figure 8: cold pull + compile + start vs warm start of a ~2.8 MB module.

The module is tests/modules/fsprobe built with Go for wasip1 (``fsprobe`` with no arguments
prints its usage and exits 2, so a run is start → exit). Each repetition pushes it with a fresh
custom section (same code, other bytes: neither the node's module store nor its compiled cache
has it) to a new repository.

Node level (no apiserver), in-process: ``ModuleStore.ensure`` (pull), ``Runtime.precompile``
(compile and serialize), start → exit on a new Runtime; then warm: the same three on the same
store and a new Runtime (store hit, compiled-cache hit: deserialize), and hot (same Runtime).

Pod level: a pod with the new image on a wasmlet node, created → its container seen started
(running or already terminated) by a watch; then a second pod with the same image (warm).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from bench.common import (
    REGISTRY,
    ROOT,
    BenchError,
    Context,
    Figure,
    Outcome,
    PodWatcher,
    namespace,
    pod_manifest,
    push,
    running_node,
    summary,
    unique,
    with_nonce,
)
from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.store import ModuleStore
from wasmlet.runtime.engine import RunSpec, Runtime

FSPROBE = ROOT / "tests" / "modules" / "fsprobe"


def fsprobe() -> bytes:
    """fsprobe.wasm, built once per source version (cached under ~/.cache/wasmlet/bench)."""
    sources = [*sorted(FSPROBE.glob("*.go")), FSPROBE / "go.mod"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    target = Path.home() / ".cache" / "wasmlet" / "bench" / f"fsprobe-{digest}.wasm"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        go = next((g for g in ("/usr/local/go/bin/go", "/usr/bin/go") if Path(g).exists()), "go")
        env = {**os.environ, "GOOS": "wasip1", "GOARCH": "wasm", "CGO_ENABLED": "0"}
        proc = subprocess.run(
            [go, "build", "-o", str(target), "."],
            cwd=FSPROBE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if proc.returncode != 0:
            raise BenchError(f"go build fsprobe failed: {proc.stderr[-2000:]}")
    return target.read_bytes()


def _run_to_exit(runtime: Runtime, module: Path) -> float:
    def drop(_chunk: bytes) -> None:
        return None

    t0 = time.perf_counter()
    status = runtime.start(
        RunSpec(module, ["fsprobe"], {}, drop, drop, name="bench/fsprobe"), drop_status
    ).wait(60)
    took = time.perf_counter() - t0
    if status is None or status.exit_code != 2:  # usage: exit 2
        raise BenchError(f"fsprobe did not print its usage and exit 2: {status}")
    return took


def drop_status(_status: object) -> None:
    return None


def node_level(ref: str, workdir: Path) -> dict[str, float]:
    """Seconds of each step, cold then warm then hot."""
    options = RegistryOptions(insecure_registries=frozenset({REGISTRY}))
    store = ModuleStore(workdir / unique("store"))
    compiled = workdir / unique("compiled")
    steps: dict[str, float] = {}
    for phase in ("cold", "warm"):
        runtime = Runtime(compiled)
        try:
            t0 = time.perf_counter()
            pulled = store.ensure(ref, "IfNotPresent", options=options)
            t1 = time.perf_counter()
            module = runtime.precompile(pulled.path)
            t2 = time.perf_counter()
            steps[f"{phase}_pull"] = t1 - t0
            steps[f"{phase}_compile"] = t2 - t1
            steps[f"{phase}_start_to_exit"] = _run_to_exit(runtime, module)
            steps[f"{phase}_total"] = time.perf_counter() - t0
            if phase == "warm":
                steps["hot_start_to_exit"] = _run_to_exit(runtime, module)
        finally:
            runtime.close()
    return steps


def run(ctx: Context) -> Outcome:
    out = Outcome("cold_start")
    reps = ctx.scale(5, 1)
    base = fsprobe()
    cluster = ctx.cluster()
    steps: list[dict[str, float]] = []
    cold_pod: list[float] = []
    warm_pod: list[float] = []
    with (
        cluster.admin() as admin,
        running_node(cluster, admin, ctx.workdir, "bench-cold") as node,
        namespace(admin, "bench-cold") as ns,
        PodWatcher(cluster, ns) as watcher,
    ):
        ctx.quiet()
        for rep in range(reps):
            image = push("fsprobe", with_nonce(base, f"{rep}-{unique('n')}"), ctx.workdir)
            steps.append(node_level(image, ctx.workdir))
            for label, into in (("cold", cold_pod), ("warm", warm_pod)):
                name = f"{label}-{rep}"
                watcher.mark_created(name)
                manifest = pod_manifest(name, node.name, image, restart="Never")
                admin.post(f"/api/v1/namespaces/{ns}/pods", manifest)
                watcher.wait(f"pod {name} to start", watcher.reached("started", name), 120)
                into.append(watcher.durations([name], "created", "started")[0])
    keys = sorted(steps[0])
    medians = {k: summary([s[k] for s in steps], 1000, 1)["p50"] for k in keys}
    out.data = {
        "module_bytes": len(base),
        "reps": reps,
        "node_level_ms": {k: [round(s[k] * 1000, 1) for s in steps] for k in keys},
        "node_level_median_ms": medians,
        "pod_create_to_started_ms": {"cold": summary(cold_pod, 1000, 1), "warm": summary(warm_pod, 1000, 1)},
    }
    mb = len(base) / 1e6
    out.add(
        Figure(
            "8a",
            f"cold pull + compile + start → exit of a {mb:.1f} MB module (node level)",
            medians["cold_total"],
            "ms",
            detail=f"pull {medians['cold_pull']} ms, compile {medians['cold_compile']} ms, "
            f"start → exit {medians['cold_start_to_exit']} ms (median of {reps})",
        )
    )
    out.add(
        Figure(
            "8b",
            "warm start → exit (module stored and compiled; new Runtime)",
            medians["warm_total"],
            "ms",
            detail=f"store lookup {medians['warm_pull']} ms, load compiled {medians['warm_compile']} ms, "
            f"start → exit {medians['warm_start_to_exit']} ms; with the module already loaded "
            f"{medians['hot_start_to_exit']} ms",
        )
    )
    pods = out.data["pod_create_to_started_ms"]
    out.add(
        Figure(
            "8c",
            "pod created → container started, cold module (through the apiserver)",
            pods["cold"].get("p50"),
            "ms",
            detail=f"median of {reps}",
        )
    )
    out.add(
        Figure(
            "8d",
            "pod created → container started, warm module (through the apiserver)",
            pods["warm"].get("p50"),
            "ms",
            detail=f"median of {reps}",
        )
    )
    return out
