"""Where wasmlet keeps its files on a host (``~/.wasmlet``, or ``$WASMLET_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The wasmlet state directory: ``$WASMLET_HOME`` if set, else ``~/.wasmlet``."""
    override = os.environ.get("WASMLET_HOME")
    return Path(override).expanduser() if override else Path.home() / ".wasmlet"


def cluster_dir() -> Path:
    return home() / "cluster"


def admin_kubeconfig() -> Path:
    return cluster_dir() / "admin.kubeconfig"


def bin_dir(version: str) -> Path:
    return home() / "bin" / version
