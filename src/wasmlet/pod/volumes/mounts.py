"""A container's ``volumeMounts`` as WASI preopens, ``subPath`` and ``subPathExpr`` included.

Every directory is opened without following symlinks and held open; why: docs/volumes.md (Mounts).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from wasmlet.held_dir import HeldDir, UnsafePathError, open_beneath
from wasmlet.kube.shapes import kind as _kind
from wasmlet.pod.env import expand
from wasmlet.pod.volumes.host_paths import HostPathPolicy, host_path_name
from wasmlet.pod.volumes.spec import CONTENT_KINDS, SHAPES, Volume, VolumeError, encodable, volume_dir

Preopen = tuple[HeldDir, str, bool]
"""(host dir, held open; guest path; read_only): a preopen of a :class:`~wasmlet.runtime.engine.RunSpec`."""

_string = SHAPES.string
_boolean = SHAPES.boolean


def container_preopens(
    container: Mapping[str, Any],
    volumes: Mapping[str, Volume],
    env: Mapping[str, str],
    *,
    root: Path,
    host_paths: HostPathPolicy,
    pinned: set[Path],
) -> list[Preopen]:
    """The preopens of ``container``'s ``volumeMounts``, in their order (see ``PodVolumes.preopens``).

    ``root`` is where the pod's volumes live; ``pinned`` gets the ``..<timestamp>`` directories
    a subPath into a content volume points into (to keep until cleanup).
    """
    if not isinstance(container, Mapping):
        raise VolumeError(f"container: expected an object, not {_kind(container)}")
    mounts = container.get("volumeMounts")
    if mounts is None:
        return []
    if not isinstance(mounts, list | tuple):
        raise VolumeError(f"volumeMounts: expected a list, not {_kind(mounts)}")
    result: list[Preopen] = []
    try:
        for index, mount in enumerate(mounts):
            preopen = _mount(index, mount, volumes, env, root=root, host_paths=host_paths, pinned=pinned)
            result.append(preopen)
            if any(other[1] == preopen[1] for other in result[:-1]):
                raise VolumeError(f'volumeMounts[{index}]: mountPath "{preopen[1]}" must be unique')
    except BaseException:
        close_preopens(result)
        raise
    return result


def close_preopens(preopens: Sequence[Preopen]) -> None:
    """Close the directories of ``preopens`` (once the module's store holds its own, or on failure)."""
    for held, _guest, _read_only in preopens:
        held.close()


def _mount(
    index: int,
    mount: object,
    volumes: Mapping[str, Volume],
    env: Mapping[str, str],
    *,
    root: Path,
    host_paths: HostPathPolicy,
    pinned: set[Path],
) -> Preopen:
    if not isinstance(mount, Mapping):
        raise VolumeError(f"volumeMounts[{index}]: expected an object, not {_kind(mount)}")
    name = _string(mount, "name", f"volumeMounts[{index}]")
    if not name:
        raise VolumeError(f"volumeMounts[{index}]: name is required")
    where = f'volumeMount "{name}"'
    mount_path = _string(mount, "mountPath", where)
    if not mount_path or not encodable(mount_path):
        raise VolumeError(f"{where}: mountPath is required (a path without NUL, in UTF-8)", volumes=[name])
    read_only = _boolean(mount, "readOnly", where)
    volume = volumes.get(name)
    if volume is None:
        raise VolumeError(f'{where}: no volume named "{name}"', volumes=[name])
    sub_path = _sub_path(mount, env, where)
    host_path = volume.kind == "hostPath"
    try:
        if host_path:
            base = Path(host_path_name(volume.source))
        else:
            base = volume_dir(root, volume)
            if base.is_symlink() or not base.is_dir():
                raise VolumeError(f'{where}: volume "{name}" is not set up', volumes=[name])
        held = _resolve(
            base,
            sub_path,
            where,
            create=volume.kind in ("emptyDir", "hostPath"),
            host_paths=host_paths,
            host_path=host_path,
        )
    except VolumeError as exc:
        raise VolumeError(*exc.messages, volumes=[name]) from exc
    except OSError as exc:
        raise VolumeError(f"{where}: {exc.strerror or exc}", volumes=[name]) from exc
    if volume.kind in CONTENT_KINDS and sub_path:
        _pin(pinned, base, held.path)
    return held, mount_path, read_only or volume.kind in CONTENT_KINDS


def _resolve(
    base: Path,
    sub_path: str,
    where: str,
    *,
    create: bool,
    host_paths: HostPathPolicy,
    host_path: bool = False,
) -> HeldDir:
    """Resolve ``base/sub_path`` once, check it, and open it without following symlinks.

    The path is resolved (symlinks inside the volume are allowed, as kubelet allows them),
    checked to be inside the volume (and, for a hostPath, allowed by the node), then opened
    component by component from the volume's own directory (from ``/`` for a hostPath) with
    ``O_NOFOLLOW``: what changed in between fails the open and is never followed.
    """
    what = f'subPath "{sub_path}"' if sub_path else str(base)
    try:
        real_base = Path(os.path.realpath(base))
        target = Path(os.path.realpath(real_base / sub_path)) if sub_path else real_base
    except OSError as exc:  # a symlink on the way was replaced while it was read
        raise VolumeError(f"{where}: {what} changed while it was mounted: {exc.strerror}") from None
    if not _inside(target, real_base):
        raise VolumeError(f"{where}: {what} resolves outside the volume")
    if host_path:
        refusal = host_paths.refusal(str(target))
        if refusal:
            raise VolumeError(f"{where}: hostPath {refusal}")
    if not sub_path and not target.exists():
        raise VolumeError(f"{where}: {base} does not exist")
    top = Path("/") if host_path else real_base
    mode = stat.S_IMODE(real_base.stat().st_mode) if create and sub_path else None
    try:
        return open_beneath(top, target.relative_to(top), create_mode=mode)
    except FileNotFoundError:
        raise VolumeError(f"{where}: {what} does not exist in the volume") from None
    except UnsafePathError as exc:
        if target.is_file():
            raise VolumeError(
                f"{where}: {what} is not a directory: a WASI module can only mount directories "
                "(preopens), not files"
            ) from None
        raise VolumeError(f"{where}: {what} changed while it was mounted: {exc.strerror}") from None


def _pin(pinned: set[Path], base: Path, host: Path) -> None:
    """Keep the ``..<timestamp>`` directory a subPath preopen points into (docs/volumes.md)."""
    parts = host.relative_to(os.path.realpath(base)).parts
    if parts and parts[0].startswith(".."):
        pinned.add(base / parts[0])  # as write_payload lists it: base is the volume's target


def _sub_path(mount: Mapping[str, Any], env: Mapping[str, str], where: str) -> str:
    """The mount's subPath, or its subPathExpr expanded (kubelet's ExpandContainerVolumeMounts)."""
    sub_path = _string(mount, "subPath", where)
    expression = _string(mount, "subPathExpr", where)
    if sub_path and expression:
        raise VolumeError(f"{where}: subPath and subPathExpr are mutually exclusive")
    if expression:
        lookup = _Lookup(env)
        sub_path = expand(expression, lookup)
        if lookup.missing:
            raise VolumeError(f"{where}: subPathExpr: missing value for {', '.join(sorted(lookup.missing))}")
    if not sub_path:
        return ""
    if not encodable(sub_path):
        raise VolumeError(f"{where}: subPath must be UTF-8 without NUL")
    if sub_path.startswith("/"):
        raise VolumeError(f'{where}: subPath "{sub_path}" must not be an absolute path')
    if ".." in sub_path.split("/"):
        raise VolumeError(f"{where}: subPath \"{sub_path}\" must not contain '..'")
    return sub_path


class _Lookup(Mapping[str, str]):
    """Every name is "in" it; a name without a non-empty value is recorded as missing."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.missing: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        value = self.env.get(key, "")
        if not value:
            self.missing.add(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents
