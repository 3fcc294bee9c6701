"""Summaries of ``py-spy record --format raw`` profiles (collapsed stacks) of a wasmlet node."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import collapsed_stacks

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Thread kinds, by a (function, file) near the root of the stack.
_THREAD_KINDS = [
    ("work", "wasmlet/pod/controller.py", "pod workers"),
    ("run", "wasmlet/pod/watch.py", "pod watch"),
    ("_work", "wasmlet/pod/image.py", "image pulls"),
    ("_run", "wasmlet/runtime/engine.py", "module threads"),
    ("_run", "wasmlet/runtime/outputs.py", "module output pump"),
    ("_run", "wasmlet/kube/events.py", "event recorder"),
    ("_run_timers", "wasmlet/kube/workqueue.py", "work queue timer"),
    ("run", "wasmlet/node/status.py", "node heartbeat"),
    ("serve_forever", "socketserver.py", "kubelet API"),
    ("process_request_thread", "socketserver.py", "kubelet API"),
]


@dataclass(frozen=True)
class Frame:
    func: str  # qualified name, e.g. PodController.sync
    file: str  # wasmlet/pod/controller.py for wasmlet's own files, else as py-spy printed it

    @property
    def short(self) -> str:
        return self.func.rsplit(".", 1)[-1]

    @property
    def wasmlet(self) -> bool:
        return self.file.startswith("wasmlet/")

    def __str__(self) -> str:
        return f"{self.func} ({self.file})"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if not match:
        return Frame(text, "")
    file = match["file"]
    if "wasmlet/" in file:
        file = "wasmlet/" + file.rsplit("wasmlet/", 1)[1]
    return Frame(match["func"], file)


def thread_kind(frames: list[Frame]) -> str:
    for frame in frames:
        for func, file, kind in _THREAD_KINDS:
            if frame.short == func and frame.file.endswith(file):
                return kind
    return "other"


def worker_step(frames: list[Frame]) -> str:
    """The pod controller step a pod-worker sample is in: the wasmlet call right under ``sync``
    (and, under ``_sync_container``, the one below that)."""
    for index, frame in enumerate(frames):
        if frame.short == "sync" and frame.file == "wasmlet/pod/controller.py":
            below = [f for f in frames[index + 1 :] if f.wasmlet]
            if not below:
                return "sync itself"
            step = below[0].func
            if below[0].short == "_sync_container" and len(below) > 1:
                step = f"{step} → {below[1].func}"
            return step
    return "outside sync (waiting for work, queue)"


def worker_purpose(frames: list[Frame]) -> str:
    """What a pod-worker sample is for: its innermost wasmlet function outside the API client
    (the caller of an apiserver request), or waiting for work."""
    ours = [f for f in frames if f.wasmlet and f.file != "wasmlet/kube/client.py"]
    if not ours:
        return "(no wasmlet frame)"
    inner = ours[-1]
    if inner.file == "wasmlet/kube/workqueue.py" or inner.short == "work":
        return "waiting for work (WorkQueue.get)"
    api = any(f.file == "wasmlet/kube/client.py" for f in frames)
    return f"{inner}{' → apiserver request' if api else ''}"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of the samples: per thread kind, per pod-worker step, hottest functions."""
    stacks = collapsed_stacks(path)
    total = sum(count for _frames, count in stacks) or 1
    kinds: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    wasmlet_leaf: Counter[str] = Counter()
    purposes: Counter[str] = Counter()  # pod workers: the wasmlet function the time is spent for
    for texts, count in stacks:
        frames = [parse_frame(t) for t in texts]
        kind = thread_kind(frames)
        kinds[kind] += count
        self_time[str(frames[-1])] += count
        for name in {str(f) for f in frames}:
            inclusive[name] += count
        ours = [f for f in frames if f.wasmlet]
        wasmlet_leaf[str(ours[-1]) if ours else "(no wasmlet frame)"] += count
        if kind == "pod workers":
            steps[worker_step(frames)] += count
            purposes[worker_purpose(frames)] += count

    def share(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    workers = kinds["pod workers"] or 1
    return {
        "samples": total,
        "pod_worker_samples": kinds["pod workers"],
        "pod_worker_purpose_pct_of_workers": [
            (name, round(100 * n / workers, 1)) for name, n in purposes.most_common(15)
        ],
        "by_thread_kind_pct": share(kinds, 10),
        "pod_worker_steps_pct": share(steps, 12),
        "innermost_wasmlet_function_pct": share(wasmlet_leaf, top),
        "top_self_pct": share(self_time, top),
        "top_inclusive_pct": share(inclusive, top),
    }
