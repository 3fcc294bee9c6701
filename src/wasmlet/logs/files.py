"""Where container logs live: one file per container run in the kubelet's ``/var/log/pods`` layout.

Also their removal: runs before the previous one, a deleted pod's directory, and the directories
of pods deleted while the node was down. See docs/logs.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)

LOG_FILE_MODE = 0o640
LOG_DIR_MODE = 0o750


def _component(kind: str, value: str) -> str:
    if not value or value in {".", ".."} or "/" in value or "\0" in value:
        raise ValueError(f"invalid {kind} name {value!r} for a container log path")
    return value


# The signatures follow the kubelet layout, outermost first; the parent session asked for positionals.
def log_path(  # noqa: PLR0917
    root: Path, namespace: str, pod: str, uid: str, container: str, restart_count: int
) -> Path:
    """The log file of one run of a container, in the kubelet's ``/var/log/pods`` layout."""
    if restart_count < 0:
        raise ValueError(f"restart count must be >= 0, got {restart_count}")
    return (
        pod_log_dir(root, namespace, pod, uid) / _component("container", container) / f"{restart_count}.log"
    )


def pod_log_dir(root: Path, namespace: str, pod: str, uid: str) -> Path:
    """``<root>/<namespace>_<pod>_<uid>``: every log of one pod (the kubelet's ``/var/log/pods`` entry)."""
    return (
        root / f"{_component('namespace', namespace)}_{_component('pod', pod)}_{_component('pod uid', uid)}"
    )


def previous_log_path(  # noqa: PLR0917
    root: Path, namespace: str, pod: str, uid: str, container: str, restart_count: int
) -> Path:
    """The log of the run before ``restart_count`` (``kubectl logs --previous``).

    Raises ValueError, with the kubelet's message, when the container never restarted.
    """
    if restart_count < 1:
        raise ValueError(f'previous terminated container "{container}" in pod "{pod}" not found')
    return log_path(root, namespace, pod, uid, container, restart_count - 1)


def _run_number(name: str) -> int | None:
    """The restart count of a run's log file name (``3.log``, ``3.log.<timestamp>``), or None."""
    head, sep, _rest = name.partition(".log")
    return int(head) if sep and head.isdigit() else None


def remove_runs_before(container_dir: Path, restart_count: int) -> None:
    """Delete the log files of runs before ``restart_count`` (the kubelet keeps one dead run)."""
    try:
        with os.scandir(container_dir) as entries:
            old = [
                e.name for e in entries if (run := _run_number(e.name)) is not None and run < restart_count
            ]
    except FileNotFoundError:
        return
    for name in old:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(container_dir / name)


def remove_pod_logs(pod_dir: Path) -> None:
    """Delete a pod's log directory; a second pass catches a file created during the first."""
    for _attempt in range(3):
        shutil.rmtree(pod_dir, ignore_errors=True)
        if not pod_dir.exists():
            return
    log.warning("cannot remove the container logs of a deleted pod in %s; check its permissions", pod_dir)


def remove_orphan_pod_logs(root: Path, live_uids: Collection[str]) -> list[str]:
    """Delete the log directories of pods whose uid is not in ``live_uids``; their names.

    Only ``<namespace>_<pod>_<uid>`` directories are touched: anything else under ``root``
    is not a pod's and stays.
    """
    try:
        with os.scandir(root) as entries:
            dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name.count("_") == 2]
    except FileNotFoundError:
        return []
    removed = [name for name in dirs if name.rsplit("_", 1)[1] not in live_uids]
    for name in removed:
        remove_pod_logs(root / name)
    return removed
