"""wasmlet.fsutil.write_atomic: change detection, modes and directory creation."""

from __future__ import annotations

import os
from pathlib import Path

from wasmlet.fsutil import PUBLIC_MODE, SECRET_MODE, write_atomic


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_write_atomic_creates_missing_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    assert write_atomic(target, b"data", SECRET_MODE) is True
    assert target.read_bytes() == b"data"
    assert _mode(target) == SECRET_MODE


def test_write_atomic_returns_false_when_content_and_mode_are_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert write_atomic(target, b"same", PUBLIC_MODE) is True
    inode = target.stat().st_ino
    assert write_atomic(target, b"same", PUBLIC_MODE) is False
    assert target.stat().st_ino == inode  # not even replaced


def test_write_atomic_returns_true_and_applies_mode_when_only_mode_differs(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"same", PUBLIC_MODE)
    assert write_atomic(target, b"same", SECRET_MODE) is True
    assert _mode(target) == SECRET_MODE
    assert target.read_bytes() == b"same"


def test_write_atomic_returns_true_when_content_differs(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old", PUBLIC_MODE)
    assert write_atomic(target, b"new", PUBLIC_MODE) is True
    assert target.read_bytes() == b"new"


def test_write_atomic_mode_is_exact_regardless_of_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "pub", b"x", PUBLIC_MODE)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "pub") == PUBLIC_MODE


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f", b"1")
    write_atomic(tmp_path / "f", b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
