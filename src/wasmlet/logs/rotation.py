"""When a container log is rotated (:class:`LogRotation`), and the rotated files of a log.

The writer rotates (:mod:`wasmlet.logs.writer`); a follower goes on into the next rotated file
(:mod:`wasmlet.logs.reader`). See docs/logs.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
"""The kubelet's ``--container-log-max-size`` default (10Mi)."""
DEFAULT_MAX_FILES = 5
"""The kubelet's ``--container-log-max-files`` default: the current file and 4 rotated ones."""


@dataclass(frozen=True, slots=True)
class LogRotation:
    """When a container log is rotated (the kubelet's ``LogRotatePolicy``)."""

    max_size: int = DEFAULT_MAX_SIZE
    """Bytes a log file may reach before the write that would pass it goes to a new file."""
    max_files: int = DEFAULT_MAX_FILES
    """Files kept per container run, the current one included (at least 2, as in the kubelet)."""

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"container log max size must be > 0 bytes, got {self.max_size}")
        if self.max_files < 2:
            raise ValueError(f"container log max files must be >= 2, got {self.max_files}")


def rotated_logs(path: Path) -> list[Path]:
    """The rotated files of the log ``path`` (``<path>.<timestamp>``), oldest first."""
    return [path.parent / name for name in rotated_names(path)]


def rotated_names(path: Path) -> list[str]:
    """The names of the rotated files of the log ``path``, oldest first (no directory: empty)."""
    prefix = path.name + "."
    try:
        with os.scandir(path.parent) as entries:
            return sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    except FileNotFoundError:
        return []
