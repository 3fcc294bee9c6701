"""Which host directories pods may mount as ``hostPath`` volumes: none unless the node says so.

A hostPath volume gives a pod the host's files with the node's own rights (a WASI module reads
and writes as the wasmlet process). So it is opt-in, as Pod Security's ``baseline`` level and
kubelet-hardening guides make it: ``--allowed-host-paths PREFIX,...`` lists the directories
pods may mount (a prefix covers what is below it); the default is none. The node's data dir and
the cluster's state dir (PKI, ``admin.kubeconfig``) are refused even when a prefix covers them,
and so is every directory that holds one of them, ``/`` first.

Paths are checked twice: as the pod spells them when the pod is admitted (a refused pod fails
at once, reason :data:`REASON`), and with every symlink resolved right before the directory is
opened (:meth:`HostPathPolicy.check_resolved`), so a symlink cannot lead out of an allowed prefix.
A ``DirectoryOrCreate`` path is created below its allowed prefix one component at a time without
following symlinks (:meth:`HostPathPolicy.make_directory`), so one swapped in meanwhile fails the
creation instead of moving it elsewhere.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmlet.held_dir import UnsafePathError, open_beneath

REASON = "HostPathNotAllowed"
FLAG = "--allowed-host-paths"


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


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents
