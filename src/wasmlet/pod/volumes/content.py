"""configMap, secret, downwardAPI and projected volumes: the files they hold, with their modes.

:mod:`wasmlet.pod.volumes.atomic_writer` writes them; what each volume type holds: docs/volumes.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from wasmlet.kube.shapes import kind as _kind
from wasmlet.pod.downward import resource_value, volume_field_value
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.go_strings import utf8
from wasmlet.pod.volumes.atomic_writer import Payload, clean_path
from wasmlet.pod.volumes.spec import SHAPES, Volume, VolumeError, namespace_of
from wasmlet.pod.volumes.tokens import Tokens, TokenSource

DEFAULT_MODE = 0o644
_PROJECTIONS = ("configMap", "secret", "downwardAPI", "serviceAccountToken")
_UNSUPPORTED_PROJECTIONS = ("clusterTrustBundle", "podCertificate")


class VolumeSources(TokenSource, Protocol):
    """Where volume contents come from (the pod's namespace is passed in): ConfigMaps, Secrets, tokens.

    To fail for another reason than a missing object, raise :class:`~wasmlet.pod.env_error.EnvError`
    with the message the event should show (:class:`wasmlet.pod.sources.ApiSources` does).
    """

    def configmap_files(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The ConfigMap's ``data`` (UTF-8) and ``binaryData``, or None when there is no such ConfigMap."""

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The Secret's ``data``, base64-decoded, or None when there is no such Secret."""


class Contents:
    """The files of one pod's configMap, secret, downwardAPI and projected volumes, read for one sync.

    ``allocatable`` is the node's ``status.allocatable`` (for ``resourceFieldRef``).
    ``watches_objects`` becomes True once a volume reads a ConfigMap or Secret.
    """

    def __init__(
        self,
        pod: Mapping[str, Any],
        sources: VolumeSources,
        tokens: Tokens,
        *,
        allocatable: Mapping[str, Any],
    ) -> None:
        self.pod = pod
        self.sources = sources
        self.tokens = tokens
        self.allocatable = allocatable
        self.namespace = namespace_of(pod)
        self.watches_objects = False

    def payload(self, volume: Volume) -> Payload:
        """The files of ``volume`` (configMap, secret, downwardAPI or projected) by relative path."""
        source = volume.source
        default_mode = _mode(source.get("defaultMode"), "defaultMode", DEFAULT_MODE)
        if volume.kind == "configMap":
            return self._object_payload(source, "configMap", "name", default_mode)
        if volume.kind == "secret":
            return self._object_payload(source, "secret", "secretName", default_mode)
        if volume.kind == "downwardAPI":
            return self._downward_payload(source, "downwardAPI", default_mode)
        sources = source.get("sources")
        if sources is None:
            return {}
        if not isinstance(sources, list | tuple):
            raise VolumeError(f"projected.sources: expected a list, not {_kind(sources)}")
        payload: Payload = {}
        errors: list[str] = []
        for index, item in enumerate(sources):
            try:
                payload.update(self._projection(index, item, default_mode))
            except (VolumeError, EnvError) as exc:
                errors.append(str(exc))
        if errors:
            raise VolumeError(_aggregate(errors))
        return payload

    def _projection(self, index: int, item: object, default_mode: int) -> Payload:
        where = f"sources[{index}]"
        if not isinstance(item, Mapping):
            raise VolumeError(f"{where}: expected an object, not {_kind(item)}")
        kinds = [k for k, v in item.items() if v is not None]
        for kind in kinds:
            if kind in _UNSUPPORTED_PROJECTIONS:
                raise VolumeError(f"{where}: {kind} projections are not supported by wasmlet")
            if kind not in _PROJECTIONS:
                raise VolumeError(f"{where}: unknown projection {kind}")
        if len(kinds) != 1:
            raise VolumeError(f"{where}: must specify exactly one of {', '.join(_PROJECTIONS)}")
        kind = kinds[0]
        source = _object(item[kind], f"{where}.{kind}")
        if kind in ("configMap", "secret"):
            return self._object_payload(source, kind, "name", default_mode)
        if kind == "downwardAPI":
            return self._downward_payload(source, f"{where}.downwardAPI", default_mode)
        return self.tokens.payload(self.pod, source, f"{where}.serviceAccountToken")

    def _object_payload(self, source: Mapping[str, Any], kind: str, name_field: str, mode: int) -> Payload:
        name = _string(source, name_field, kind)
        if not name:
            raise VolumeError(f"{kind}.{name_field} is required")
        optional = _boolean(source, "optional", kind)
        secret = kind == "secret"
        self.watches_objects = True
        if secret:
            data = self.sources.secret(self.namespace, name)
        else:
            data = self.sources.configmap_files(self.namespace, name)
        if data is None:
            if optional:
                return {}
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        items = source.get("items")
        if items is not None and not isinstance(items, list | tuple):
            raise VolumeError(f"{kind}.items: expected a list, not {_kind(items)}")
        mask = 0o770 if secret else 0o777
        payload: Payload = {}
        if not items:
            for key, value in data.items():
                payload[clean_path(str(key), f"key {key}")] = (_bytes(value, key), mode & mask)
            return payload
        for index, item in enumerate(items):
            where = f"{kind}.items[{index}]"
            entry = _object(item, where)
            key, path = _string(entry, "key", where), _string(entry, "path", where)
            if not key or not path:
                raise VolumeError(f"{where}: key and path are required")
            item_mode = _mode(entry.get("mode"), f"{where}.mode", mode)
            if key not in data:
                if optional:
                    continue
                what = (
                    "secret references non-existent secret key"
                    if secret
                    else ("configmap references non-existent config key")
                )
                raise VolumeError(f"{what}: {key}")
            payload[clean_path(path, where)] = (_bytes(data[key], key), item_mode & mask)
        return payload

    def _downward_payload(self, source: Mapping[str, Any], where: str, mode: int) -> Payload:
        items = source.get("items")
        if items is None:
            return {}
        if not isinstance(items, list | tuple):
            raise VolumeError(f"{where}.items: expected a list, not {_kind(items)}")
        payload: Payload = {}
        errors: list[str] = []
        for index, item in enumerate(items):
            item_where = f"{where}.items[{index}]"
            try:
                entry = _object(item, item_where)
                path = clean_path(_string(entry, "path", item_where), item_where)
                item_mode = _mode(entry.get("mode"), f"{item_where}.mode", mode)
                payload[path] = (utf8(self._downward_value(entry, item_where)), item_mode)
            except (VolumeError, EnvError) as exc:
                errors.append(str(exc))
        if errors:
            raise VolumeError(_aggregate(errors))
        return payload

    def _downward_value(self, entry: Mapping[str, Any], where: str) -> str:
        refs = [k for k in ("fieldRef", "resourceFieldRef") if entry.get(k) is not None]
        if len(refs) != 1:
            raise VolumeError(f"{where}: must specify exactly one of fieldRef, resourceFieldRef")
        ref = _object(entry[refs[0]], f"{where}.{refs[0]}")
        if refs[0] == "fieldRef":
            _string(ref, "apiVersion", f"{where}.fieldRef")
            return volume_field_value(self.pod, _string(ref, "fieldPath", f"{where}.fieldRef"))
        return resource_value(
            self.pod,
            _string(ref, "containerName", f"{where}.resourceFieldRef"),
            _string(ref, "resource", f"{where}.resourceFieldRef"),
            divisor=ref.get("divisor"),
            allocatable=self.allocatable,
            where=f"{where}.resourceFieldRef",
        )


_object = SHAPES.object
_string = SHAPES.string
_boolean = SHAPES.boolean


def _mode(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise VolumeError(f"{where}: must be a number between 0 and 0777 (octal), both inclusive")
    return value


def _bytes(value: object, key: str) -> bytes:
    if isinstance(value, str):
        return utf8(value)
    if not isinstance(value, bytes | bytearray):
        raise VolumeError(f"key {key}: expected bytes, not {_kind(value)}")
    return bytes(value)


def _aggregate(errors: Sequence[str]) -> str:
    """apimachinery's NewAggregate(...).Error(): one message, or ``[a, b]``."""
    return errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
