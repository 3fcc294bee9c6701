"""emptyDir volumes: a directory, mode 0777, and its ``sizeLimit`` as kubelet's eviction manager checks it."""

from __future__ import annotations

import os
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path

from wasmlet.kube.quantity import parse_quantity
from wasmlet.kube.shapes import kind as _kind
from wasmlet.pod.volumes.atomic_writer import make_dirs
from wasmlet.pod.volumes.spec import SHAPES, Volume, VolumeError, volume_dir

EMPTY_DIR_MODE = 0o777


def set_up_empty_dir(root: Path, volume: Volume, *, warned: Collection[str]) -> str | None:
    """Make the emptyDir's directory under ``root`` (kept when it is there).

    Returns the warning to give about it, unless its volume is in ``warned``: ``medium: Memory``
    is a directory on disk. HugePages media are refused.
    """
    medium = SHAPES.string(volume.source, "medium", "emptyDir")
    if medium.startswith("HugePages"):
        raise VolumeError(f"emptyDir medium {medium} is not supported by wasmlet")
    if medium not in ("", "Memory"):
        raise VolumeError(f'unknown emptyDir medium "{medium}"')
    if volume.source.get("sizeLimit") is not None:
        _quantity(volume.source["sizeLimit"], "emptyDir.sizeLimit")
    path = volume_dir(root, volume)
    make_dirs(root, path.parent.relative_to(root))
    if path.is_symlink() or not path.is_dir():
        path.mkdir()
        os.chmod(path, EMPTY_DIR_MODE)  # mkdir's mode went through the umask
    if medium == "Memory" and volume.name not in warned:
        return f'volume "{volume.name}": emptyDir medium Memory is a directory on disk under wasmlet'
    return None


def size_limit_exceeded(root: Path, volume: Volume) -> str | None:
    """kubelet's eviction message when the emptyDir's disk usage is over its sizeLimit, else None.

    Usage counts allocated blocks.
    """
    text = volume.source.get("sizeLimit")
    try:
        limit = _quantity(text)
    except VolumeError:
        return None
    if limit > 0 and _disk_usage(volume_dir(root, volume)) > limit:
        return f'Usage of EmptyDir volume "{volume.name}" exceeds the limit "{text}". '
    return None


def _quantity(value: object, where: str = "quantity") -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise VolumeError(f"{where}: expected a quantity, not {_kind(value)}")
    try:
        return parse_quantity(value if isinstance(value, str) else str(value))
    except ValueError as exc:
        raise VolumeError(f"{where}: {exc}") from None


def _disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du``), symlinks not followed."""
    try:
        total = path.lstat().st_blocks * 512
    except OSError:
        return 0
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                continue
    return total
