"""From a pod's container spec to what the runtime needs: argv and environment.

:func:`expand` is kubelet's ``$(VAR)`` expansion; :func:`resolve_environment` builds a
container's whole environment as kubelet's ``makeEnvironmentVariables`` does, with kubelet's
messages (:class:`~wasmlet.pod.env_error.EnvError`). The downward API is :mod:`wasmlet.pod.downward`.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from wasmlet.kube.shapes import Shapes
from wasmlet.kube.shapes import kind as _kind
from wasmlet.kube.validation import is_env_var_name
from wasmlet.pod.downward import field_value, resource_value
from wasmlet.pod.env_error import EnvError, strings


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` expansion as kubelet's (third_party/forked/golang/expansion).

    ``$(VAR)`` is replaced by VAR's value when VAR is defined, left as written when it is not,
    and ``$$`` is an escaped ``$`` (so ``$$(VAR)`` yields the literal ``$(VAR)``).
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:  # unclosed: kubelet keeps "$(" and reads on (a later "$$" still escapes)
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            if name in env:
                out.append(env[name])
            else:
                out.append(text[i : close + 1])
            i = close + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


def environment(container: Mapping[str, Any]) -> dict[str, str]:
    """Literal ``env`` entries, each expanded against the ones before it (as kubelet does).

    Skips ``valueFrom`` entries; :func:`resolve_environment` is the whole of kubelet's environment.
    """
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; argv[0] is the container name without a command."""
    command: Sequence[str] = container.get("command") or []
    args: Sequence[str] = container.get("args") or []
    expanded = [expand(str(a), env) for a in (*command, *args)]
    return expanded if command else [str(container.get("name", "main")), *expanded]


# --- the whole environment, as kubelet's makeEnvironmentVariables builds it --------------------


class Sources(Protocol):
    """Where ConfigMaps and Secrets come from (the pod's namespace is passed in)."""

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """The ConfigMap's ``data``, or None when there is no such ConfigMap.

        Only ``data``: kubelet reads neither ``envFrom`` nor ``configMapKeyRef`` from
        ``binaryData``. To fail for another reason (kubelet: ``failed to sync configmap cache``),
        raise :class:`EnvError` with the message the container should show.
        """

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The Secret's ``data``, base64-decoded, or None when there is no such Secret."""


@dataclass(frozen=True)
class SkippedKeys:
    """``envFrom`` keys left out as invalid variable names; kubelet records a Warning event."""

    kind: Literal["configMap", "secret"]
    namespace: str
    name: str
    keys: tuple[str, ...]

    reason: ClassVar[str] = "InvalidEnvironmentVariableNames"

    @property
    def message(self) -> str:
        return (
            f"Keys [{', '.join(self.keys)}] from the EnvFrom {self.kind} {self.namespace}/{self.name} "
            "were skipped since they are considered invalid environment variable names."
        )


@dataclass(frozen=True)
class ResolvedEnvironment:
    env: dict[str, str]
    skipped: tuple[SkippedKeys, ...] = ()


VALUE_SOURCES = ("configMapKeyRef", "fieldRef", "resourceFieldRef", "secretKeyRef")
"""The ``valueFrom`` sources resolve_environment resolves (``fileKeyRef`` is refused)."""


def resolve_environment(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    sources: Sources,
    *,
    host_ips: Sequence[str] = (),
    pod_ips: Sequence[str] = (),
    allocatable: Mapping[str, Any] | None = None,
    service_env: Mapping[str, str] | None = None,
    strict_env_names: bool = False,
) -> ResolvedEnvironment:
    """The environment of ``container`` (an entry of ``pod``'s containers or initContainers).

    As kubelet's ``makeEnvironmentVariables`` (pkg/kubelet/kubelet_pods.go): ``envFrom`` sources
    first, in order, then ``env`` entries in order, each literal ``value`` expanded against
    everything set so far (then the service variables), each ``valueFrom`` resolved from a
    ConfigMap, a Secret, the pod's fields (downward API) or the container's resources.

    ``host_ips`` are the node's addresses (``status.hostIP`` is the first, and its family orders
    ``pod_ips`` as kubelet's sortPodIPs does); ``allocatable`` is the node's
    ``status.allocatable`` (what an unset cpu, memory or ephemeral-storage limit reads as);
    ``service_env`` the service link variables (looked up after the container's own when
    expanding, and added where the container sets no variable of that name).
    ``strict_env_names`` skips ``envFrom`` keys by the pre-1.30 rule instead of the relaxed one.

    Raises :class:`~wasmlet.pod.env_error.EnvError`, whose message is kubelet's (see the class).
    """
    resolver = _Resolver(
        pod=_object(pod, "pod"),
        container=_object(container, "container"),
        sources=sources,
        host_ips=strings(host_ips, "host_ips"),
        pod_ips=strings(pod_ips, "pod_ips"),
        allocatable=allocatable or {},
        strict_env_names=strict_env_names,
    )
    return resolver.resolve(dict(service_env or {}))


class _Resolver:
    def __init__(
        self,
        *,
        pod: Mapping[str, Any],
        container: Mapping[str, Any],
        sources: Sources,
        host_ips: list[str],
        pod_ips: list[str],
        allocatable: Mapping[str, Any],
        strict_env_names: bool,
    ) -> None:
        self.pod = pod
        self.container = container
        self.sources = sources
        self.metadata = _object(pod.get("metadata"), "pod metadata", missing_ok=True)
        self.namespace = _string(self.metadata, "namespace", "pod metadata") or "default"
        self.host_ips = host_ips
        self.raw_pod_ips = pod_ips
        self.allocatable = allocatable
        self.strict_env_names = strict_env_names
        self.configmaps: dict[str, Mapping[str, str] | None] = {}
        self.secrets: dict[str, Mapping[str, bytes] | None] = {}

    # -- lookups, once per name as kubelet does --

    def configmap(self, name: str) -> Mapping[str, str] | None:
        if name not in self.configmaps:
            self.configmaps[name] = self.sources.configmap(self.namespace, name)
        return self.configmaps[name]

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        if name not in self.secrets:
            self.secrets[name] = self.sources.secret(self.namespace, name)
        return self.secrets[name]

    def configmap_value(self, name: str, key: str, value: object) -> str:
        if not isinstance(value, str):
            raise EnvError(f"key {key} in ConfigMap {self.namespace}/{name} is not a string")
        return value

    def secret_value(self, name: str, key: str, value: object) -> str:
        if not isinstance(value, bytes | bytearray):
            raise EnvError(f"key {key} in Secret {self.namespace}/{name} is not bytes")
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise EnvError(f"key {key} in Secret {self.namespace}/{name} is not valid UTF-8") from None

    # -- the environment --

    def resolve(self, service_env: dict[str, str]) -> ResolvedEnvironment:
        env: dict[str, str] = {}
        skipped = [s for s in (self.env_from(i, item, env) for i, item in self._items("envFrom")) if s]
        mapping = ChainMap(env, service_env)  # a live view: later entries see earlier ones
        for i, item in self._items("env"):
            entry = _object(item, f"env[{i}]")
            name = self.env_name(i, entry)
            value = self.env_value(f'env "{name}"', entry, mapping)
            if value is not None:
                env[name] = value
        for name, value in service_env.items():
            env.setdefault(name, value)
        return ResolvedEnvironment(env=env, skipped=tuple(skipped))

    def _items(self, field: str) -> list[tuple[int, Any]]:
        items = self.container.get(field)
        if items is None:
            return []
        if not isinstance(items, list | tuple):
            raise EnvError(f"{field}: expected a list, not {_kind(items)}")
        return list(enumerate(items))

    def env_from(self, index: int, item: Any, env: dict[str, str]) -> SkippedKeys | None:
        where = f"envFrom[{index}]"
        entry = _object(item, where)
        prefix = _string(entry, "prefix", where)
        refs = [k for k in ("configMapRef", "secretRef") if entry.get(k) is not None]
        if len(refs) != 1:
            raise EnvError(f"{where}: must specify exactly one of configMapRef, secretRef")
        field = refs[0]
        ref = _object(entry[field], f"{where}.{field}")
        name = _required(ref, "name", f"{where}.{field}")
        optional = _boolean(ref, "optional", f"{where}.{field}")
        values: dict[str, str]
        if field == "configMapRef":
            kind: Literal["configMap", "secret"] = "configMap"
            data = self.configmap(name)
            if data is None:
                if optional:
                    return None
                raise EnvError(f'configmap "{name}" not found')
            values = {k: self.configmap_value(name, k, v) for k, v in data.items()}
        else:
            kind = "secret"
            secret = self.secret(name)
            if secret is None:
                if optional:
                    return None
                raise EnvError(f'secret "{name}" not found')
            values = {k: self.secret_value(name, k, v) for k, v in secret.items()}
        invalid = []
        for key, value in values.items():
            var = prefix + str(key)
            if not is_env_var_name(var, strict=self.strict_env_names):
                invalid.append(var)
                continue
            env[var] = value
        return SkippedKeys(kind, self.namespace, name, tuple(sorted(invalid))) if invalid else None

    def env_name(self, index: int, entry: Mapping[str, Any]) -> str:
        name = _required(entry, "name", f"env[{index}]")
        if not is_env_var_name(name):
            raise EnvError(
                f'env[{index}]: invalid environment variable name "{name}": it must consist of '
                "printable ASCII characters except '='"
            )
        return name

    def env_value(self, where: str, entry: Mapping[str, Any], mapping: Mapping[str, str]) -> str | None:
        """The variable's value, or None when an optional source leaves it unset."""
        value = _string(entry, "value", where)
        value_from = entry.get("valueFrom")
        if value:
            if value_from is not None:
                raise EnvError(f"{where}: valueFrom may not be specified when value is not empty")
            return expand(value, mapping)
        if value_from is None:
            return ""
        source = _object(value_from, f"{where}: valueFrom")
        if source.get("fileKeyRef") is not None:
            raise EnvError(f"{where}: valueFrom.fileKeyRef is not supported by wasmlet")
        present = [k for k in VALUE_SOURCES if source.get(k) is not None]
        if len(present) != 1:
            given = f" (it specifies {', '.join(present)})" if present else ""
            raise EnvError(
                f"{where}: valueFrom must specify exactly one of {', '.join(VALUE_SOURCES)}{given}"
            )
        field = present[0]
        ref = _object(source[field], f"{where}: valueFrom.{field}")
        where = f"{where}: valueFrom.{field}"
        if field == "configMapKeyRef":
            return self.configmap_key(ref, where)
        if field == "secretKeyRef":
            return self.secret_key(ref, where)
        if field == "fieldRef":
            return self.field(ref, where)
        return self.resource_field(ref, where)

    def configmap_key(self, ref: Mapping[str, Any], where: str) -> str | None:
        name, key = _required(ref, "name", where), _required(ref, "key", where)
        optional = _boolean(ref, "optional", where)
        data = self.configmap(name)
        if data is None:
            if optional:
                return None
            raise EnvError(f'configmap "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise EnvError(f"couldn't find key {key} in ConfigMap {self.namespace}/{name}")
        return self.configmap_value(name, key, data[key])

    def secret_key(self, ref: Mapping[str, Any], where: str) -> str | None:
        name, key = _required(ref, "name", where), _required(ref, "key", where)
        optional = _boolean(ref, "optional", where)
        data = self.secret(name)
        if data is None:
            if optional:
                return None
            raise EnvError(f'secret "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise EnvError(f"couldn't find key {key} in Secret {self.namespace}/{name}")
        return self.secret_value(name, key, data[key])

    # -- downward API (wasmlet.pod.downward) --

    def field(self, ref: Mapping[str, Any], where: str) -> str:
        path = _required(ref, "fieldPath", where)
        version = _string(ref, "apiVersion", where) or "v1"
        return field_value(
            self.pod, path, api_version=version, host_ips=self.host_ips, pod_ips=self.raw_pod_ips
        )

    def resource_field(self, ref: Mapping[str, Any], where: str) -> str:
        resource = _required(ref, "resource", where)
        container_name = _string(ref, "containerName", where)
        return resource_value(
            self.pod,
            container_name,
            resource,
            divisor=ref.get("divisor"),
            allocatable=self.allocatable,
            container=None if container_name else self.container,
            where=where,
        )


_SHAPES = Shapes(EnvError)
_object = _SHAPES.object
_string = _SHAPES.string
_required = _SHAPES.required
_boolean = _SHAPES.boolean
