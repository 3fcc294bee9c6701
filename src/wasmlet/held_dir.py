"""Directories resolved once and held by their file descriptor (the kubelet's CVE-2017-1002101 fix).

A path string given to wasmtime would be resolved again when the module starts; a module sharing
the volume could swap a directory on that path for a symlink in between and get the host's ``/``
as its preopen. So a volume path is opened here one component at a time, each with
``O_NOFOLLOW`` relative to the one before (the kubelet's ``safeOpenSubPath``), and wasmtime is
handed ``/proc/self/fd/N``: the kernel's link to exactly the directory we opened, whatever its
path says by then. A component that is a symlink when we open it (it changed after it was
resolved) fails the open instead of being followed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePath, PurePosixPath

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A component of a path is not a directory, or became a symlink after it was resolved."""


class HeldDir:
    """An open directory; ``path`` is where it was when opened (for messages only).

    :attr:`proc_path` names the directory itself, not a path to it, for as long as it is held.
    Close it once the directory has been handed over (wasmtime opens its own descriptor).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"HeldDir({str(self.path)!r}, fd={self.fd})"


def open_beneath(base: Path, relative: PurePath | str = "", *, create_mode: int | None = None) -> HeldDir:
    """Open ``base/relative`` without following any symlink below ``base``.

    ``base`` is trusted (a directory of the node's own, or a host path already checked); it is
    opened as it is. Each component of ``relative`` (no ``..``, no absolute path) is opened with
    ``O_NOFOLLOW`` from the one before; a missing one is created with ``create_mode`` when given
    (its mode set on the descriptor: the umask does not narrow it). Raises
    :class:`UnsafePathError` (or another OSError) naming the component.
    """
    parts = [part for part in PurePosixPath(relative).parts if part not in ("", ".")]
    if PurePosixPath(relative).is_absolute() or ".." in parts:
        raise UnsafePathError(f"{relative}: must be a relative path without '..'")
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        fd = _step(fd, part, create_mode, base / relative)  # closes the parent, even when it fails
    return HeldDir(fd, base.joinpath(*parts))


def _step(parent: int, part: str, create_mode: int | None, whole: Path) -> int:
    """Open ``part`` in ``parent`` (closing ``parent``); creates it when allowed and missing."""
    created = False
    try:
        if create_mode is not None:
            try:
                os.mkdir(part, create_mode, dir_fd=parent)
                created = True
            except FileExistsError:
                pass  # there already (or made meanwhile): open what is there, without following
        child = os.open(part, _OPEN_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{part} in {whole} does not exist") from None
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file. Either way not a directory to enter.
        raise UnsafePathError(exc.errno, f"{part} in {whole} is not a directory ({exc.strerror})") from None
    finally:
        os.close(parent)
    if created and create_mode is not None:
        os.fchmod(child, create_mode)  # mkdir's mode went through the umask
    return child
