"""hostPath volumes: which host directories pods may mount (none unless the node says so), and
kubelet's type check of a hostPath volume. Why and how: docs/volumes.md (hostPath)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmlet.held_dir import UnsafePathError, open_beneath
from wasmlet.pod.volumes.atomic_writer import DIR_MODE
from wasmlet.pod.volumes.spec import SHAPES, Volume, VolumeError, encodable

REASON = "HostPathNotAllowed"
FLAG = "--allowed-host-paths"
_HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory")
_FILE_HOST_PATH_TYPES = ("File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice")


@dataclass(frozen=True)
class HostPathPolicy:
    allowed: tuple[Path, ...] = ()  # resolved prefixes pods may mount
    protected: tuple[Path, ...] = ()  # resolved directories no pod may mount, nor any that holds them

    @classmethod
    def of(cls, allowed: Iterable[Path | str], protected: Iterable[Path | str]) -> HostPathPolicy:
        return cls(tuple(map(_real, allowed)), tuple(map(_real, protected)))

    def refusal(self, path: str) -> str | None:
        """Why ``path`` may not be mounted, or None when it may; ``path`` as given or resolved."""
        real = _real(path)
        for protected in self.protected:
            if _within(real, protected) or _within(protected, real):
                return f"{path} holds or is inside the node's state ({protected}): never mounted"
        if not any(_within(real, prefix) for prefix in self.allowed):
            allowed = ", ".join(map(str, self.allowed)) or "none"
            return f"{path} is not under a directory this node allows ({FLAG}: {allowed})"
        return None

    def make_directory(self, path: str, mode: int) -> None:
        """Create ``path`` and its missing parents below the allowed prefix that holds it.

        The path is resolved once and checked; then every component below the prefix is opened
        (or made, with ``mode``) with ``O_NOFOLLOW`` from the one before. Raises
        :class:`~wasmlet.held_dir.UnsafePathError` when a component is, or has become, a symlink.
        """
        real = _real(path)
        base = next((prefix for prefix in self.allowed if _within(real, prefix)), None)
        refusal = self.refusal(str(real))
        if base is None or refusal:
            raise UnsafePathError(errno.EACCES, refusal or f"{path} is not under an allowed directory")
        open_beneath(base, real.relative_to(base), create_mode=mode).close()

    def pod_refusal(self, pod: Mapping[str, Any]) -> str | None:
        """The message refusing the first hostPath volume of ``pod`` this policy does not allow."""
        for index, volume in enumerate(((pod.get("spec") or {}).get("volumes")) or []):
            source = volume.get("hostPath") if isinstance(volume, Mapping) else None
            if source is None:
                continue
            path = source.get("path") if isinstance(source, Mapping) else None
            problem = (
                self.refusal(path)
                if isinstance(path, str) and path.startswith("/")
                else "not an absolute path"
            )
            if problem:
                return f"spec.volumes[{index}].hostPath.path: {problem}"
        return None


def host_path_name(source: Mapping[str, Any]) -> str:
    """The hostPath volume's ``path``: absolute, without ``..``, UTF-8 without NUL."""
    path = SHAPES.string(source, "path", "hostPath")
    if not path.startswith("/") or not encodable(path):
        raise VolumeError(f'hostPath.path "{path}" must be an absolute path (without NUL, in UTF-8)')
    if ".." in path.split("/"):
        raise VolumeError(f"hostPath.path \"{path}\" must not contain '..'")
    return path


def check_host_path(volume: Volume, policy: HostPathPolicy) -> None:
    """hostPath's type check (kubelet's checkType), after refusing what the node does not allow
    and what cannot be a preopen."""
    path = host_path_name(volume.source)
    refusal = policy.refusal(path)
    if refusal:
        raise VolumeError(f"hostPath {refusal}")
    kind = SHAPES.string(volume.source, "type", "hostPath")
    if kind in _FILE_HOST_PATH_TYPES:
        raise VolumeError(
            f"hostPath type {kind} cannot be mounted: a WASI module can only mount directories (preopens)"
        )
    if kind not in _HOST_PATH_TYPES:
        raise VolumeError(f"{kind} is an invalid volume type")
    if kind != "Directory" and not os.path.exists(path):
        try:
            policy.make_directory(path, DIR_MODE)
        except OSError as exc:  # UnsafePathError too: a component is not a real directory
            raise VolumeError(f"hostPath {path} cannot be created: {exc.strerror or exc}") from exc
    if kind and not os.path.isdir(path):
        raise VolumeError(f"hostPath type check failed: {path} is not a directory")


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents
