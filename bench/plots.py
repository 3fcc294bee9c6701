"""The plots of docs/performance.md (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "bench-"


def _pods_scale(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    data = result["data"]
    size, burst = max(((int(k), v) for k, v in data["bursts"].items()), key=lambda kv: kv[0])
    fig, ax = plt.subplots(figsize=(7, 4))
    for step, label in (
        ("created", "POSTed"),
        ("bound", "bound by the scheduler"),
        ("running", "Running (watch)"),
    ):
        times = burst["timeline"][step]
        ax.step(times, range(1, len(times) + 1), where="post", label=label)
    ax.set_xlabel("seconds since the first POST")
    ax.set_ylabel("pods")
    ax.set_title(f"{size} pods created at once on one wasmlet node")
    ax.axvline(15, color="grey", linestyle=":", label="target: all Running by 15 s")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    timeline = images / f"{PREFIX}burst-timeline.png"
    fig.tight_layout()
    fig.savefig(timeline, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    counts = [int(k) for k in data["rss_bytes"]]
    ax.plot(counts, [v / 2**20 for v in data["rss_bytes"].values()], marker="o", label="node RSS")
    base = data["rss_bytes"]["0"] / 2**20
    ax.plot(counts, [base + n for n in counts], linestyle=":", color="grey", label="target: +1 MB per pod")
    ax.set_xlabel("idle pods on the node")
    ax.set_ylabel("MB")
    ax.set_title("wasmlet node memory (RSS) per idle pod")
    ax.legend()
    ax.grid(alpha=0.3)
    rss = images / f"{PREFIX}node-rss.png"
    fig.tight_layout()
    fig.savefig(rss, dpi=100)
    plt.close(fig)
    return [timeline, rss]


def _cdf(ax: Any, samples: list[float], label: str) -> None:
    ordered = sorted(samples)
    ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=label)


def _pod_latency(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    data = result["data"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for variant, label in (("scheduled", "scheduled by kube-scheduler"), ("bound", "spec.nodeName set")):
        if data.get(variant, {}).get("samples_ms"):
            _cdf(ax, data[variant]["samples_ms"], label)
    ax.axvline(50, color="grey", linestyle=":", label="p50 target 50 ms")
    ax.axvline(200, color="grey", linestyle="--", label="p99 target 200 ms")
    ax.set_xscale("log")
    ax.set_xlabel("pod created → Running (ms, log scale)")
    ax.set_ylabel("fraction of pods")
    ax.set_title("One pod at a time, cached module")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    path = images / f"{PREFIX}pod-latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _bars(
    plt: Any, path: Path, title: str, *, xlabel: str, values: dict[str, float], log: bool = False
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(values)))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for index, name in enumerate(names):
        ax.text(values[name], index, f" {values[name]:.3g}", va="center", fontsize="small")
    if log:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _compute(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    medians = {k.replace("_", " "): v for k, v in result["data"]["median_s"].items()}
    return [
        _bars(
            plt, images / f"{PREFIX}compute.png", "CPU-bound loop (median)", xlabel="seconds", values=medians
        )
    ]


def _logs(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    data = result["data"]
    per_line = {k.replace("_", " "): v for k, v in data["throughput"]["per_line_us"].items()}
    bars = _bars(
        plt,
        images / f"{PREFIX}log-throughput.png",
        "Printing as fast as possible",
        xlabel="µs per line (log)",
        values=per_line,
        log=True,
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(data["follow"]["samples_ms"], bins=40, color="tab:blue")
    ax.axvline(100, color="grey", linestyle=":", label="target 100 ms")
    ax.set_xlabel("line written → received through the apiserver (ms)")
    ax.set_ylabel("lines")
    ax.set_title("kubectl logs -f latency")
    ax.legend()
    hist = images / f"{PREFIX}log-latency.png"
    fig.tight_layout()
    fig.savefig(hist, dpi=100)
    plt.close(fig)
    return [hist, bars]


def _runtime_start(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    data = result["data"]
    values = {
        "wasmlet Runtime, sequential (median)": sorted(data["sequential_rates"])[
            len(data["sequential_rates"]) // 2
        ],
        "wasmlet Runtime, concurrent (median)": sorted(data["concurrent_rates"])[
            len(data["concurrent_rates"]) // 2
        ],
        "target": 1000.0,
        "runwasi wasmtime shim (published)": data["runwasi_reference_tasks_per_s"],
    }
    return [
        _bars(
            plt,
            images / f"{PREFIX}start-rate.png",
            "Starts of a cached module",
            xlabel="starts per second",
            values=values,
        )
    ]


def _cold_start(plt: Any, result: dict[str, Any], images: Path) -> list[Path]:
    med = result["data"]["node_level_median_ms"]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    rows = ["cold", "warm"]
    for index, key in enumerate(rows):
        left = 0.0
        for step, color in (("pull", "tab:orange"), ("compile", "tab:red"), ("start_to_exit", "tab:blue")):
            width = med[f"{key}_{step}"]
            ax.barh(
                index, width, left=left, color=color, label=step.replace("_", " ") if index == 0 else None
            )
            left += width
        ax.text(left, index, f" {left:.0f} ms", va="center")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel("ms (median)")
    ax.set_title(f"fsprobe, {result['data']['module_bytes'] / 1e6:.1f} MB: cold vs warm start")
    ax.legend(loc="lower right")
    path = images / f"{PREFIX}cold-start.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


PLOTS: dict[str, Callable[[Any, dict[str, Any], Path], list[Path]]] = {
    "runtime_start": _runtime_start,
    "pods_scale": _pods_scale,
    "pod_latency": _pod_latency,
    "compute": _compute,
    "logs": _logs,
    "cold_start": _cold_start,
}


def render(record: dict[str, Any], images: Path) -> dict[str, list[Path]]:
    """Draw every plot the record has data for; {benchmark: [png, ...]}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    images.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Path]] = {}
    for name, result in record["results"].items():
        if name in PLOTS and not result.get("error") and result.get("data"):
            made[name] = PLOTS[name](plt, result, images)
    return made
