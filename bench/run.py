"""Run the benchmarks: ``python -m bench.run [--smoke] [--only NAME,...]``.

A full run (``make bench``) starts a control plane of its own (tuned, own ports and state, the
shared Kubernetes binaries), runs every benchmark against it with real ``wasmlet`` nodes, removes
it, writes ``bench/results/<date>.json`` (merged with an earlier run of the same day, benchmark by
benchmark) and renders docs/performance.md and docs/img/*.png from it.

``--smoke`` (``make bench-smoke``) runs every benchmark with tiny counts against the main cluster
(~/.wasmlet, brought up if needed) and writes the JSON and the report into a scratch directory:
it checks that the scripts work, not the numbers. The exit status is non-zero when a benchmark
fails to run; a missed target is a result, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Cluster, Context, Outcome
from wasmlet import paths

# name: (module, what it needs). Order matters: the make_up benchmark restarts the main cluster.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "runtime_start": ("bench.runtime_start", "runtime"),
    "compute": ("bench.compute", "cluster"),
    "logs": ("bench.logs", "cluster"),
    "cold_start": ("bench.cold_start", "cluster"),
    "pod_latency": ("bench.pod_latency", "cluster"),
    "pods_scale": ("bench.pods_scale", "cluster"),
    "serving": ("bench.serving", "cluster"),
    "make_up": ("bench.make_up", "make"),
}
DOCS = common.ROOT / "docs" / "performance.md"
IMAGES = common.ROOT / "docs" / "img"


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} bench: {message}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts; results into a scratch directory")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument(
        "--cluster",
        choices=["bench", "main"],
        help="bench: a tuned control plane of its own (default); main: the one in ~/.wasmlet (smoke default)",
    )
    parser.add_argument(
        "--keep-control-plane", action="store_true", help="leave the bench control plane running"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles of the node")
    parser.add_argument("--output", type=Path, help="directory for the JSON (default bench/results)")
    parser.add_argument("--docs", type=Path, help="Markdown report to write (default docs/performance.md)")
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    skip = {n for n in args.skip.split(",") if n}
    unknown = [n for n in [*names, *skip] if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    args.names = [n for n in BENCHMARKS if n in names and n not in skip]
    args.cluster = args.cluster or ("main" if args.smoke else "bench")
    return args


def _run_one(name: str, ctx: Context) -> Outcome:
    module_name, _needs = BENCHMARKS[name]
    _log(f"{name}: start")
    started = time.monotonic()
    commit = common.git_commit()
    try:
        run: Callable[[Context], Outcome] = importlib.import_module(module_name).run
        outcome = run(ctx)
    except Exception as exc:
        traceback.print_exc()
        outcome = Outcome(name, error=f"{type(exc).__name__}: {exc}")
    outcome.duration_s = time.monotonic() - started
    outcome.commit = commit
    for figure in outcome.figures:
        verdict = {True: "met", False: "NOT MET", None: "-"}[figure.met]
        target = f"target {figure.op} {figure.target}: {verdict}"
        _log(f"{name}: [{figure.id}] {figure.title}: {figure.value} {figure.unit} ({target})")
    _log(f"{name}: {'FAILED: ' + outcome.error if outcome.error else 'done'} in {outcome.duration_s:.0f}s")
    return outcome


def _record(args: argparse.Namespace, outcomes: list[Outcome], cluster: Cluster | None) -> dict[str, Any]:
    return {
        "date": dt.date.today().isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": common.machine(),
        "versions": common.versions(cluster),
        "control_plane": {
            "kind": cluster.kind if cluster else None,
            "tuning": cluster.tuning if cluster else {},
            "bring_up_s": round(cluster.bring_up_s, 1) if cluster and cluster.bring_up_s else None,
        },
        "results": {o.name: o.as_dict() for o in outcomes},
        "observations": common.OBSERVATIONS,
    }


def _merge(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """An earlier record of the same day keeps the benchmarks this run did not repeat."""
    if not path.exists():
        return record
    earlier = json.loads(path.read_text())
    results = {**earlier.get("results", {}), **record["results"]}
    ordered = {n: results[n] for n in BENCHMARKS if n in results}
    control_plane = (
        record["control_plane"] if record["control_plane"]["kind"] else earlier.get("control_plane")
    )
    return {**record, "control_plane": control_plane, "results": ordered}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    scratch = Path(tempfile.mkdtemp(prefix="wasmlet-bench-"))
    _log(f"{'smoke' if args.smoke else 'full'} run of {', '.join(args.names)}; scratch {scratch}")
    outcomes: list[Outcome] = []
    kinds = {name: BENCHMARKS[name][1] for name in args.names}
    with contextlib.ExitStack() as stack:

        def cluster_factory() -> Cluster:
            if args.cluster == "main":
                return common.main_cluster(_log)
            return stack.enter_context(common.bench_control_plane(_log, keep=args.keep_control_plane))

        ctx = Context(
            args.smoke,
            scratch,
            _log,
            cluster_factory,
            profile=not args.no_profile,
            results_dir=args.output or common.RESULTS_DIR,
        )
        # On a quiet machine first, then against the control plane.
        outcomes += [_run_one(name, ctx) for name in args.names if kinds[name] == "runtime"]
        if "cluster" in kinds.values():  # each of them pushes its modules to the local registry
            common.ensure_registry(_log)
        outcomes += [_run_one(name, ctx) for name in args.names if kinds[name] == "cluster"]
        cluster = ctx._cluster
        record_versions_cluster = cluster if cluster is None or cluster.healthy() else None
        record = _record(args, [], record_versions_cluster)
    # After the bench control plane is gone: make up restarts the main cluster.
    outcomes += [_run_one(name, ctx) for name in args.names if kinds[name] == "make"]
    if record["versions"].get("kubernetes_server") is None:
        main = Cluster("main", paths.cluster_dir(), paths.bin_dir(common.kubernetes_version()) / "kubectl")
        record["versions"] = common.versions(main if main.healthy() else None)
    record["results"] = {
        o.name: o.as_dict() for o in sorted(outcomes, key=lambda o: list(BENCHMARKS).index(o.name))
    }
    out_dir = args.output or (scratch if args.smoke else common.RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['date']}.json"
    if not args.smoke:
        record = _merge(path, record)
    path.write_text(json.dumps(record, indent=1) + "\n")
    _log(f"wrote {path}")
    failed = [o.name for o in outcomes if o.error]
    if not args.no_report:
        import bench.report

        docs = args.docs or (scratch / "performance.md" if args.smoke else DOCS)
        images = docs.parent / "img" if args.docs or args.smoke else IMAGES
        try:
            bench.report.write(record, docs, images)
            _log(f"wrote {docs}")
        except Exception:
            traceback.print_exc()
            failed.append("report")
    if failed:
        _log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
