"""Volume files written as kubelet's AtomicWriter writes them: a ``..data`` symlink swapped at once.

How and why: docs/volumes.md (Updates). Also where volume directories are made, never through a symlink.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from wasmlet.held_dir import UnsafePathError, open_beneath
from wasmlet.pod.volumes.spec import VolumeError, encodable

DIR_MODE = 0o755
DATA_DIR = "..data"
_MAX_PATH = 4096
_MAX_SEGMENT = 255

Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


def clean_path(path: str, where: str) -> str:
    """A payload path made relative and clean, or VolumeError (kubelet AtomicWriter's validatePath)."""
    if not path:
        raise VolumeError(f"{where}: path is required")
    if not encodable(path):
        raise VolumeError(f"{where}: invalid path: must be UTF-8 without NUL")
    if path.startswith("/"):
        raise VolumeError(f"{where}: invalid path: must be relative path: {path}")
    if len(path) > _MAX_PATH:
        raise VolumeError(f"{where}: invalid path: path too long")
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise VolumeError(f"{where}: invalid path: must not contain '..': {path}")
    if any(len(s.encode()) > _MAX_SEGMENT for s in segments):
        raise VolumeError(f"{where}: invalid path: a path segment is too long: {path}")
    clean = "/".join(segments)
    if not clean:
        raise VolumeError(f"{where}: invalid path: {path}")
    if clean.startswith(".."):
        raise VolumeError(f"{where}: invalid path: must not start with '..': {path}")
    return clean


def make_dirs(base: Path, relative: Path, mode: int = DIR_MODE) -> None:
    """Create ``base/relative`` one directory at a time with ``mode``, never through a symlink."""
    base.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        open_beneath(base, relative.as_posix(), create_mode=mode).close()
    except UnsafePathError as exc:
        raise VolumeError(str(exc.strerror)) from None


def write_payload(target: Path, payload: Payload, *, keep: set[Path]) -> bool:
    """Write ``payload`` under ``target`` as kubelet's AtomicWriter does; True when it changed.

    ``keep``: old ``..<timestamp>`` directories not to remove (pinned by a subPath preopen).
    """
    _check_conflicts(payload)
    data_link = target / DATA_DIR
    current = os.readlink(data_link) if data_link.is_symlink() else None
    tops = {path.split("/")[0] for path in payload}
    holds = current is not None and _holds(target / current, payload)
    if holds and _links_ok(target, tops):
        return False
    if current is None or not holds:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
        try:
            os.chmod(new_dir, DIR_MODE)
            for path, (data, mode) in sorted(payload.items()):
                make_dirs(new_dir, Path(path).parent)
                _write_file(new_dir / path, data, mode)
            tmp_link = target / f"{DATA_DIR}_tmp"
            if tmp_link.is_symlink() or tmp_link.exists():
                tmp_link.unlink()
            os.symlink(new_dir.name, tmp_link)
            os.replace(tmp_link, data_link)  # the swap: readers see the old set or the new one
        except BaseException:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        current = new_dir.name
    for top in sorted(tops):
        link = target / top
        want = f"{DATA_DIR}/{top}"
        if link.is_symlink() and os.readlink(link) == want:
            continue
        _remove(link)
        os.symlink(want, link)
    for entry in os.listdir(target):
        if entry in (DATA_DIR, current) or entry in tops or target / entry in keep:
            continue
        _remove(target / entry)  # old ..<timestamp> directories, user-visible links of removed paths
    return True


def _check_conflicts(payload: Payload) -> None:
    for path in payload:
        parts = path.split("/")
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            if prefix in payload:
                raise VolumeError(
                    f'paths "{prefix}" and "{path}" conflict: one would be a file and a directory'
                )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask applied at creation; only ever narrower than mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _holds(directory: Path, payload: Payload) -> bool:
    """Whether ``directory`` holds exactly ``payload`` (contents and modes)."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    found: set[str] = set()
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(parent) / name
            relative = path.relative_to(directory).as_posix()
            expected = payload.get(relative)
            if expected is None or path.is_symlink():
                return False
            if stat.S_IMODE(path.lstat().st_mode) != expected[1] or path.read_bytes() != expected[0]:
                return False
            found.add(relative)
    return found == set(payload)


def _links_ok(target: Path, tops: set[str]) -> bool:
    for entry in os.listdir(target):
        if entry.startswith(".."):
            continue
        if entry not in tops:
            return False
    for top in tops:
        link = target / top
        if not link.is_symlink() or os.readlink(link) != f"{DATA_DIR}/{top}":
            return False
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
