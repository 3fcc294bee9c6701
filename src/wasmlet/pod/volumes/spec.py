"""A pod's ``spec.volumes`` as wasmlet reads them: :class:`VolumeError`, each :class:`Volume`, where it lives.

Anything but emptyDir, configMap, secret, downwardAPI, projected and hostPath is refused here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmlet.kube.shapes import Shapes
from wasmlet.kube.shapes import kind as _kind

PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
CONTENT_KINDS = ("configMap", "secret", "downwardAPI", "projected")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class VolumeError(Exception):
    """A volume cannot be set up or mounted.

    ``messages`` holds one message per failing volume (kubelet records one ``FailedMount`` event
    each); ``volumes`` the names of the volumes (or volumeMounts) concerned. ``str(error)`` is
    the messages joined with ``"; "``.
    """

    def __init__(self, *messages: str, volumes: Sequence[str] = ()) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages
        self.volumes = tuple(volumes)


SHAPES = Shapes(VolumeError)
"""Type checks on volume fields that raise :class:`VolumeError`."""


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str
    source: Mapping[str, Any]


def volumes_of(pod: object) -> dict[str, Volume]:
    """The pod's volumes by name; :class:`VolumeError` for a malformed or unsupported one."""
    if not isinstance(pod, Mapping):
        raise VolumeError(f"pod: expected an object, not {_kind(pod)}")
    spec = pod.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise VolumeError(f"pod spec: expected an object, not {_kind(spec)}")
    items = spec.get("volumes")
    if items is None:
        return {}
    if not isinstance(items, list | tuple):
        raise VolumeError(f"volumes: expected a list, not {_kind(items)}")
    volumes: dict[str, Volume] = {}
    for index, item in enumerate(items):
        volume = _parse_volume(index, item)
        if volume.name in volumes:
            raise VolumeError(f'volume "{volume.name}": the name is used twice', volumes=[volume.name])
        volumes[volume.name] = volume
    return volumes


def volume_dir(root: Path, volume: Volume) -> Path:
    """Where a volume other than hostPath lives: ``<root>/<plugin>/<name>``, as kubelet lays it out."""
    return root / PLUGIN_DIRS[volume.kind] / volume.name


def namespace_of(pod: object) -> str:
    """The pod's namespace ("default" when it has none)."""
    metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
    value = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) and value else "default"


def encodable(text: str) -> bool:
    """Whether ``text`` can be a path: UTF-8 without NUL."""
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_volume(index: int, item: object) -> Volume:
    if not isinstance(item, Mapping):
        raise VolumeError(f"volumes[{index}]: expected an object, not {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise VolumeError(f"volumes[{index}]: name is required")
    if len(name) > 63 or _DNS1123_LABEL.fullmatch(name) is None:
        raise VolumeError(
            f'volume "{name}": the name must be a lowercase RFC 1123 label (at most 63 characters: '
            "a-z, 0-9 and '-', starting and ending with a letter or digit)",
            volumes=[name],
        )
    where = f'volume "{name}"'
    kinds = [k for k, v in item.items() if k != "name" and v is not None]
    if not kinds:
        raise VolumeError(f"{where}: must specify a volume type", volumes=[name])
    if len(kinds) > 1:
        raise VolumeError(
            f"{where}: may not specify more than 1 volume type (it specifies {', '.join(map(str, kinds))})",
            volumes=[name],
        )
    kind = str(kinds[0])
    if kind not in PLUGIN_DIRS and kind != "hostPath":
        raise VolumeError(f"{where}: {kind} volumes are not supported by wasmlet", volumes=[name])
    source = item[kind]
    if not isinstance(source, Mapping):
        raise VolumeError(f"{where}: {kind}: expected an object, not {_kind(source)}", volumes=[name])
    return Volume(name, kind, source)
