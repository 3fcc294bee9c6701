"""Render a benchmark record (bench/results/<date>.json) as docs/performance.md and docs/img/*.png.

``python -m bench.report [RECORD.json]`` renders the newest record again (e.g. after editing the
hand-written analysis next to it, ``bench/results/<date>.notes.md``, which is included as is).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT

DOCS = ROOT / "docs" / "performance.md"
IMAGES = ROOT / "docs" / "img"

TITLES = {
    "runtime_start": "1. Start rate of a cached module (node level, no apiserver)",
    "pods_scale": "2, 4, 5. Many idle pods on one node: burst start, memory, idle CPU",
    "pod_latency": "3. One pod created → Running, one after another",
    "compute": "6. CPU-bound module: wasmlet vs bare wasmtime-py",
    "logs": "7. Logs: follow latency and the cost of logging",
    "cold_start": "8. Cold pull + compile + start vs warm start",
    "serving": (
        "9. Pods that serve: a WAGI handler and a wasi:http component (vs bare `wasmtime serve`) "
        "under load, created → first 200, idle memory"
    ),
    "make_up": "10. make up",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return (
            f"{value:,.3f}".rstrip("0").rstrip(".")
            if abs(value) < 100
            else f"{value:,.1f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _verdict(figure: dict[str, Any]) -> str:
    if figure["target"] is None:
        return "no target (reported)"
    if figure["value"] is None:
        return "**not measured**"
    return "met" if figure["met"] else "**not met**"


def _figure_key(figure: dict[str, Any]) -> tuple[int, str]:
    match = re.match(r"(\d+)(.*)", figure["id"])
    return (int(match[1]), match[2]) if match else (999, figure["id"])


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _column in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _run_section(record: dict[str, Any]) -> list[str]:
    m, v, cp = record["machine"], record["versions"], record.get("control_plane") or {}
    tuning = "; ".join(
        f"{key.removeprefix('control_plane_').removesuffix('_extra_args')}: "
        + " ".join(f"--{flag}={value}" for flag, value in flags.items())
        for key, flags in (cp.get("tuning") or {}).items()
    )
    rows = [
        (
            "date",
            record["date"]
            + (" (smoke run: tiny counts, numbers meaningless)" if record.get("smoke") else ""),
        ),
        (
            "machine",
            f"{m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
            f"Linux {m['kernel']} ({m['arch']})",
        ),
        ("Python", v.get("python")),
        ("wasmtime-py", v.get("wasmtime_py")),
        ("Kubernetes", f"{v.get('kubernetes_server')} (kubectl {v.get('kubectl')})"),
        ("wasmlet", f"{v.get('wasmlet')} (commit {v.get('wasmlet_commit')})"),
        (
            "control plane",
            f"{cp.get('kind')}: "
            + (
                "a control plane of the benchmarks' own (role control_plane, own state directory and ports, "
                f"the shared binaries), up in {_fmt(cp.get('bring_up_s'))} s"
                if cp.get("kind") == "bench"
                else "the main cluster in ~/.wasmlet"
            ),
        ),
        ("control plane tuning", tuning or "none (defaults)"),
    ]
    return ["## The run", "", *_table(("", ""), rows)]


def _summary_section(record: dict[str, Any]) -> list[str]:
    figures = sorted(
        (f for result in record["results"].values() for f in result["figures"]),
        key=_figure_key,
    )
    rows = [
        (
            f["id"],
            f["title"],
            f"{_fmt(f['value'])} {f['unit']}",
            f"{f['op']} {_fmt(f['target'])} {f['unit']}" if f["target"] is not None else "—",
            _verdict(f),
            f["detail"],
        )
        for f in figures
    ]
    return [
        "## Figures and targets",
        "",
        *_table(("#", "what", "measured", "target", "verdict", "details"), rows),
    ]


def _runtime_start(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    return [
        *_table(
            ("", "per round (starts/s)"),
            [
                ("sequential", ", ".join(map(_fmt, d["sequential_rates"]))),
                ("concurrent", ", ".join(map(_fmt, d["concurrent_rates"]))),
            ],
        ),
        f"{d['rounds']} rounds of {d['starts_per_round']} starts. Start → exit of one run, sequential: "
        + ", ".join(f"{k} {v} ms" for k, v in d["start_to_exit_ms"].items() if k != "n"),
        "",
    ]


def _pods_scale(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    rows = []
    for size, b in d["bursts"].items():
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(b["cpu"]["cpu_s"].items(), key=lambda kv: -kv[1]))
        rows.append(
            (
                size,
                b["create_s"],
                b["all_running_s"],
                f"{b['per_pod_ms'].get('p50')} / {b['per_pod_ms'].get('p99')}",
                f"{b['create_to_bound_ms'].get('p50')} / {b['create_to_bound_ms'].get('p99')}",
                f"{b['bound_to_running_ms'].get('p50')} / {b['bound_to_running_ms'].get('p99')}",
                f"{b['cpu']['elapsed_s']} s wall: {cpu}",
            )
        )
    lines = [
        "Bursts (times from the first POST; per-pod clocks start just before each pod's POST):",
        "",
        *_table(
            (
                "pods",
                "POSTs done (s)",
                "all Running (s)",
                "created → Running p50 / p99 (ms)",
                "created → bound p50 / p99 (ms)",
                "bound → Running p50 / p99 (ms)",
                "CPU seconds during the burst",
            ),
            rows,
        ),
    ]
    mem_rows = [
        (
            n,
            f"{int(rss) / 2**20:.1f} MB",
            f"{d['rss_per_pod_kib'][n]} KiB" if n in d["rss_per_pod_kib"] else "—",
            d["cpu_idle_pct_of_core"].get(n),
        )
        for n, rss in d["rss_bytes"].items()
    ]
    lines += [
        "Node memory and idle CPU (RSS after the pods settled; CPU from /proc/<pid>/stat):",
        "",
        *_table(("pods", "node RSS", "(RSS(N) - RSS(0)) / N", "idle CPU (% of a core)"), mem_rows),
        "Deleting all pods until the node's module threads were gone took "
        + ", ".join(f"{s} s ({n} pods)" for n, s in d["clear_s"].items())
        + ".",
        "",
    ]
    for experiment in d.get("experiments") or []:
        cpu = ", ".join(
            f"{k} {v}" for k, v in sorted(experiment["cpu"]["cpu_s"].items(), key=lambda kv: -kv[1])
        )
        lines += [
            f"Experiment, {experiment['experiment']} (not a shipped setting; the node's code patched at "
            f"start: {experiment['change']}): {experiment['pods']} pods all Running in "
            f"{_fmt(experiment['all_running_s'])} s (POSTs done in {experiment['create_s']} s); "
            f"per pod p50 / p99 {experiment['per_pod_ms'].get('p50')} / "
            f"{experiment['per_pod_ms'].get('p99')} ms; bound → Running p50 "
            f"{experiment['bound_to_running_ms'].get('p50')} ms; CPU seconds during the burst "
            f"({experiment['cpu']['elapsed_s']} s wall): {cpu}.",
            "",
        ]
    profiles = d.get("profiles") or {}
    if "burst" in profiles:
        lines += _burst_profile(profiles["burst"])
    if "burst_cpu" in profiles:
        lines += _cpu_profile(profiles["burst_cpu"])
    if "idle" in profiles:
        lines += _idle_profile(profiles["idle"])
    return lines


def _burst_profile(profiled: dict[str, Any]) -> list[str]:
    burst, profile = profiled["burst"], profiled["profile"]
    return [
        f"Profile of a burst: the {burst['pods']}-pod burst again under `py-spy record --idle --rate "
        f"{profiled['rate_hz']} --nonblocking` on the node (idle samples included, so a thread's samples are "
        f"its wall time): all Running in {_fmt(burst['all_running_s'])} s with the profiler attached; "
        f"{profile['samples']} samples, {profile['pod_worker_samples']} of them in the pod workers; "
        f"collapsed stacks in `{profiled.get('raw')}`.",
        "",
        *_table(
            ("what the pod workers' wall time went to", "% of pod-worker samples"),
            profile["pod_worker_purpose_pct_of_workers"],
        ),
        *_table(("thread kind", "% of all samples"), profile["by_thread_kind_pct"]),
        *_table(("hottest functions, self (all threads)", "% of all samples"), profile["top_self_pct"][:10]),
    ]


def _cpu_profile(profiled: dict[str, Any]) -> list[str]:
    burst, profile = profiled["burst"], profiled["profile"]
    node_cpu = burst["cpu"]["cpu_s"].get("wasmlet node")
    return [
        f"Profile of the node's CPU in a burst: the {burst['pods']}-pod burst once more under `py-spy record "
        f"--rate {profiled['rate_hz']} --nonblocking` (on-CPU samples only): all Running in "
        f"{_fmt(burst['all_running_s'])} s, the node used {node_cpu} CPU seconds; "
        f"{profile['samples']} samples; collapsed stacks in `{profiled.get('raw')}`.",
        "",
        *_table(("thread kind", "% of the node's CPU samples"), profile["by_thread_kind_pct"]),
        *_table(
            ("innermost wasmlet function (CPU under it, libraries included)", "% of samples"),
            profile["innermost_wasmlet_function_pct"][:12],
        ),
        *_table(("hottest functions, self", "% of samples"), profile["top_self_pct"][:12]),
    ]


def _idle_profile(profiled: dict[str, Any]) -> list[str]:
    profile = profiled["profile"]
    cpu = profiled["cpu"]
    pct = 100 * cpu["cpu_s"].get("node", 0) / max(cpu["elapsed_s"], 1e-9)
    return [
        f"Profile of the idle node with all the pods running: `py-spy record --rate 50 --nonblocking` for "
        f"{_fmt(profiled['seconds'])} s (on-CPU samples only; the node used {pct:.1f} % of a core meanwhile, "
        f"the profiler attached); {profile['samples']} samples; collapsed stacks in `{profiled.get('raw')}`.",
        "",
        *_table(
            ("innermost wasmlet function (CPU under it, libraries included)", "% of samples"),
            profile["innermost_wasmlet_function_pct"][:10],
        ),
        *_table(("thread kind", "% of samples"), profile["by_thread_kind_pct"]),
        *_table(("hottest functions, self", "% of samples"), profile["top_self_pct"][:10]),
    ]


def _pod_latency(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    rows = [
        (
            variant,
            d[variant]["create_to_running_ms"].get("p50"),
            d[variant]["create_to_running_ms"].get("p99"),
            d[variant]["create_to_running_ms"].get("max"),
            d[variant]["create_to_bound_ms"].get("p50"),
            d[variant]["bound_to_running_ms"].get("p50"),
        )
        for variant in ("scheduled", "bound")
        if variant in d
    ]
    return [
        *_table(
            (
                "variant",
                "created → Running p50 (ms)",
                "p99",
                "max",
                "created → bound p50",
                "bound → Running p50",
            ),
            rows,
        ),
        f"{d['pods']} pods per variant, one at a time (each deleted before the next).",
        "",
    ]


def _compute(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    base = d["median_s"]["bare_wasmtime"]
    rows = [
        (k.replace("_", " "), v, f"{base / v:.3f}", ", ".join(map(_fmt, d["seconds"][k])))
        for k, v in d["median_s"].items()
    ]
    return [
        *_table(("where", "median loop time (s)", "throughput vs bare", "runs (s)"), rows),
        f"{d['iterations']:,} iterations, checksum {d['checksum']}, the same in every run.",
        "",
    ]


def _logs(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    follow, tp = d["follow"], d["throughput"]
    base = tp["median_s"]["bare_devnull"]
    rows = [
        (k.replace("_", " "), v, tp["per_line_us"][k], f"{(v / base - 1) * 100:+.0f} %")
        for k, v in tp["median_s"].items()
    ]
    return [
        f"Follow latency over {follow['latency_ms']['n']} lines "
        f"(one every {_fmt(follow['interval_ms'])} ms): "
        + ", ".join(f"{k} {v} ms" for k, v in follow["latency_ms"].items() if k != "n"),
        "",
        f"Throughput: {tp['lines']:,} lines of {tp['line_bytes']} bytes, median of {tp['reps']} runs each:",
        "",
        *_table(("stdout goes to", "median (s)", "µs per line", "cost vs /dev/null"), rows),
        *(
            [f"(bare python callback: {tp['python_callback_lines']:,} lines, scaled to {tp['lines']:,}.)", ""]
            if tp.get("python_callback_lines")
            else []
        ),
        *_callback_threads(tp.get("callback_threads")),
    ]


def _callback_threads(threads: dict[str, Any] | None) -> list[str]:
    if not threads:
        return []
    where = ", ".join(f"{n} on {name}" for name, n in threads["threads"].items())
    return [
        f"Where wasmtime-py ran a `stdout_custom` callback ({threads['callbacks']} writes): {where}. "
        "Each write from the module is handed to a tokio worker thread, which takes the GIL to call Python.",
        "",
    ]


def _cold_start(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    med = d["node_level_median_ms"]
    steps = [
        f"{phase}_{step}"
        for phase in ("cold", "warm")
        for step in ("pull", "compile", "start_to_exit", "total")
    ]
    names = {"pull": "pull (warm: store lookup)", "compile": "compile (warm: load the compiled module)"}
    rows = []
    for key in [*steps, "hot_start_to_exit"]:
        phase, step = key.split("_", 1)
        label = f"{phase}: {names.get(step, step.replace('_', ' '))}"
        rows.append((label, med.get(key), ", ".join(map(_fmt, d["node_level_ms"].get(key, [])))))
    pods = d["pod_create_to_started_ms"]
    return [
        f"Module: fsprobe, {d['module_bytes']:,} bytes (Go, wasip1). Node level, ms (median, then each run):",
        "",
        *_table(("step", "median (ms)", "runs"), rows),
        *_table(
            ("pod, created → container started", "p50 (ms)", "max (ms)"),
            [(k, v.get("p50"), v.get("max")) for k, v in pods.items()],
        ),
    ]


def _make_up(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    if not d:
        return []
    return [
        *_table(
            ("run", "seconds", "PLAY RECAP"),
            [
                ("make down", d["make_down_s"], ""),
                ("make up", d["make_up_s"], d["recap_first"]),
                ("make up (rerun)", d["make_up_rerun_s"], d["recap_rerun"]),
            ],
        ),
        f"Binaries cached in {d['binaries_cached']['dir']}: {', '.join(d['binaries_cached']['files'])}.",
        "",
    ]


def _serving(result: dict[str, Any]) -> list[str]:
    d = result["data"]
    wagi = d["wagi_hello"]
    return [
        *_table(
            ("measure", "value"),
            [
                ("requests/s (fresh instance each)", wagi["requests_per_s"]),
                (
                    "latency p50 / p99 (ms)",
                    f"{wagi['latency_ms'].get('p50')} / {wagi['latency_ms'].get('p99')}",
                ),
                ("keep-alive clients, errors", f"{wagi['clients']}, {wagi['errors']}"),
                (
                    "created → first 200 p50 / p99 (ms)",
                    f"{d['create_to_first_200_ms'].get('p50')} / {d['create_to_first_200_ms'].get('p99')}",
                ),
                ("node RSS per idle handler (KiB)", round(d["idle_handler_rss_bytes"] / 1024, 1)),
            ],
        ),
        "",
        *_serving_wasi_http(d.get("wasi_http")),
    ]


def _over(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def _rss_pss(idle: dict[str, Any]) -> str:
    pss = idle.get("process_pss_bytes")
    return f"{round(idle['process_rss_bytes'] / 1024)} / {round(pss / 1024) if pss is not None else '—'}"


def _serving_wasi_http(d: dict[str, Any] | None) -> list[str]:
    """The wasi:http component (examples/http-hello) under wasmlet next to bare ``wasmtime serve``."""
    if not d:
        return []
    under, bare, idle = d["wasmlet"], d["bare"], d["idle"]
    lat_u, lat_b = under["latency_ms"], bare["latency_ms"]
    cpu_u, cpu_b = under.get("cpu_us_per_request") or {}, bare.get("cpu_us_per_request") or {}
    first, start = d["create_to_first_200_ms"], bare["start_to_first_200_ms"]
    bare_idle = bare.get("idle") or {}
    rows: list[tuple[Any, ...]] = [
        (
            "requests/s",
            under["requests_per_s"],
            bare["requests_per_s"],
            _over(under["requests_per_s"], bare["requests_per_s"]),
        ),
        *[
            (f"latency {key} (ms)", lat_u.get(key), lat_b.get(key), _over(lat_u.get(key), lat_b.get(key)))
            for key in ("p50", "p90", "p99", "max")
        ],
        (
            "keep-alive clients, errors",
            f"{under['clients']}, {under['errors']}",
            f"{bare['clients']}, {bare['errors']}",
            "",
        ),
        (
            "CPU per request, wasmtime serve (µs)",
            cpu_u.get("wasmtime"),
            cpu_b.get("wasmtime"),
            _over(cpu_u.get("wasmtime"), cpu_b.get("wasmtime")),
        ),
        ("CPU per request, wasmlet node (µs)", cpu_u.get("node"), "—", ""),
        (
            "pod created / process started → first 200, p50 / p99 (ms)",
            f"{first.get('p50')} / {first.get('p99')}",
            f"{start.get('p50')} / {start.get('p99')}",
            _over(first.get("p50"), start.get("p50")),
        ),
        (
            "idle: wasmtime serve RSS / PSS (KiB)",
            _rss_pss(idle),
            _rss_pss(bare_idle) if bare_idle else "—",
            "",
        ),
        (
            "idle: node RSS growth per pod (KiB)",
            round(idle["node_rss_growth_bytes_per_pod"] / 1024, 1),
            "—",
            "",
        ),
    ]
    return [
        f"wasi:http component ({d['component']}, {_fmt(d['component_bytes'])} bytes) served by "
        f"`{Path(d['cli']).name} serve` with `{' '.join(d['flags'])}`: one process per pod under wasmlet "
        "(its socket on the pod IP handed over), the same binary started bare on 127.0.0.1; the same "
        f"load against both. Idle memory: medians over {idle['pods']} idle pods (their PSS shares the "
        "binary's pages among them), bare: one process; each had answered one request.",
        "",
        *_table(("measure", "under wasmlet (pod IP)", "bare `wasmtime serve`", "wasmlet / bare"), rows),
    ]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "runtime_start": _runtime_start,
    "pods_scale": _pods_scale,
    "pod_latency": _pod_latency,
    "compute": _compute,
    "logs": _logs,
    "cold_start": _cold_start,
    "serving": _serving,
    "make_up": _make_up,
}


def _details(record: dict[str, Any], plots: dict[str, list[Path]], docs: Path) -> list[str]:
    lines = ["## Details", ""]
    order = list(TITLES)
    for name, result in sorted(record["results"].items(), key=lambda kv: order.index(kv[0])):
        lines += [f"### {TITLES.get(name, name)}", ""]
        if result.get("error"):
            lines += [f"**The benchmark failed:** `{result['error']}`", ""]
            continue
        lines += SECTIONS[name](result)
        lines += [f"- {note}" for note in result.get("notes", [])]
        if result.get("notes"):
            lines.append("")
        for image in plots.get(name, []):
            rel = image.relative_to(docs.parent) if image.is_relative_to(docs.parent) else image
            lines += [f"![{image.stem}]({rel.as_posix()})", ""]
        commit = f" at commit {result['commit']}" if result.get("commit") else ""
        lines.append(f"_Run time of this benchmark: {result['duration_s']:.0f} s{commit}._")
        lines.append("")
    return lines


def _not_measured(record: dict[str, Any]) -> list[str]:
    items = [f"{name}: {item}" for name, r in record["results"].items() for item in r.get("not_measured", [])]
    items += [f"{name}: failed ({r['error']})" for name, r in record["results"].items() if r.get("error")]
    return [
        "## Not measured",
        "",
        *([f"- {i}" for i in items] or ["- everything in the table above was measured"]),
        "",
    ]


def write(record: dict[str, Any], docs: Path, images: Path, notes: Path | None = None) -> None:
    """Write the Markdown report to ``docs`` and its plots into ``images``."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    from bench import plots

    made = plots.render(record, images)
    notes = notes or RESULTS_DIR / f"{record['date']}.notes.md"
    lines = [
        "# wasmlet performance",
        "",
        f"Measured {record['date']} by `make bench` (bench/, see bench/run.py); rendered from "
        f"`bench/results/{record['date']}.json` by bench/report.py. Numbers come from the runs recorded "
        "there, on the machine below; targets are the project's (issue 6).",
        "",
        *_run_section(record),
        *_summary_section(record),
    ]
    if notes.exists() and not record.get("smoke"):
        lines += [notes.read_text().rstrip(), ""]
    lines += _details(record, made, docs)
    observations = sorted(set(record.get("observations") or []))
    if observations:
        lines += ["## Observations", "", *[f"- {o}" for o in observations], ""]
    lines += _not_measured(record)
    docs.write_text("\n".join(lines).rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else max(RESULTS_DIR.glob("*.json"))
    write(json.loads(path.read_text()), DOCS, IMAGES, path.with_suffix(".notes.md"))
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
