"""From a pod's container spec to what the runtime needs: argv and environment.

``$(VAR)`` expansion follows kubelet's (third_party/forked/golang/expansion): ``$(VAR)`` is
replaced by VAR's value when VAR is defined, left as written when it is not, and ``$$`` is
an escaped ``$`` (so ``$$(VAR)`` yields the literal ``$(VAR)``).

:func:`resolve_environment` builds a container's environment the way kubelet's
``makeEnvironmentVariables`` (pkg/kubelet/kubelet_pods.go) does: ``envFrom`` sources first, in
order, then ``env`` entries in order, each literal ``value`` expanded against everything set so
far (then the service variables), each ``valueFrom`` resolved from a ConfigMap, a Secret, the
pod's fields (downward API) or the container's resources. Its :class:`EnvError` messages are
kubelet's, so they can be the container's ``CreateContainerConfigError`` message as they are.

The downward API is shared with downwardAPI volumes (:mod:`wasmlet.pod.volumes`): :func:`field_value`
(an env ``fieldRef``), :func:`volume_field_value` (a volume file's ``fieldRef``: metadata only,
whole label/annotation maps rendered by :func:`format_map`) and :func:`resource_value` (a
``resourceFieldRef``).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal, Protocol

from wasmlet.kube.quantity import ceil_ratio, parse_quantity
from wasmlet.kube.shapes import Shapes
from wasmlet.kube.shapes import kind as _kind


def expand(text: str, env: Mapping[str, str]) -> str:
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


class EnvError(Exception):
    """The container's environment cannot be built.

    ``str(error)`` is kubelet's wording where kubelet has one (``configmap "cfg" not found``,
    ``couldn't find key k in Secret default/s``, ``unsupported fieldPath: x``, ...); for a
    malformed spec it names the entry (``env "FOO": ...``, ``envFrom[0]: ...``) and the cause.
    """


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

# ConvertDownwardAPIFieldLabel (pkg/apis/core/pods/helpers.go): the pod field labels kubelet knows.
_FIELD_LABELS = frozenset(
    {
        "metadata.annotations",
        "metadata.labels",
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.serviceAccountName",
        "spec.schedulerName",
        "status.phase",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    }
)
_RESOURCE_FIELDS = {
    "limits.cpu": ("limits", "cpu"),
    "limits.memory": ("limits", "memory"),
    "limits.ephemeral-storage": ("limits", "ephemeral-storage"),
    "requests.cpu": ("requests", "cpu"),
    "requests.memory": ("requests", "memory"),
    "requests.ephemeral-storage": ("requests", "ephemeral-storage"),
}
# MergeContainerResourceLimits: an unset (or zero) limit of these becomes the node's allocatable.
_DEFAULTED_LIMITS = ("cpu", "memory", "ephemeral-storage")
# ... or the pod-level limit, for the resources pod-level resources support.
_POD_LEVEL_RESOURCES = ("cpu", "memory")
_HUGEPAGES_PREFIX = "hugepages-"

_STRICT_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_DNS1123_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def is_env_var_name(name: str, *, strict: bool = False) -> bool:
    """Whether ``name`` may name a variable.

    Relaxed (Kubernetes >= 1.30, the API server's rule since 1.34): printable ASCII but ``=``.
    Strict (before): ``[-._a-zA-Z][-._a-zA-Z0-9]*``.
    """
    if strict:
        return _STRICT_ENV_NAME.fullmatch(name) is not None
    return bool(name) and "=" not in name and all(" " <= ch <= "~" for ch in name)


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

    ``host_ips`` are the node's addresses (``status.hostIP`` is the first, and its family orders
    ``pod_ips`` as kubelet's sortPodIPs does); ``allocatable`` is the node's
    ``status.allocatable`` (what an unset cpu, memory or ephemeral-storage limit reads as);
    ``service_env`` the service link variables (looked up after the container's own when
    expanding, and added where the container sets no variable of that name).
    ``strict_env_names`` skips ``envFrom`` keys by the pre-1.30 rule instead of the relaxed one.

    Raises :class:`EnvError`, whose message is kubelet's (see the class).
    """
    resolver = _Resolver(
        pod=_object(pod, "pod"),
        container=_object(container, "container"),
        sources=sources,
        host_ips=_strings(host_ips, "host_ips"),
        pod_ips=_strings(pod_ips, "pod_ips"),
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

    # -- downward API (the shared logic is in the module's public functions) --

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


# --- downward API: pod fields and container resources, for env and downwardAPI volumes ---------


def field_value(
    pod: Mapping[str, Any],
    field_path: str,
    *,
    api_version: str = "v1",
    host_ips: Sequence[str] = (),
    pod_ips: Sequence[str] = (),
) -> str:
    """A pod field as an env ``fieldRef`` reads it (kubelet's podFieldSelectorRuntimeValue).

    ``host_ips`` and ``pod_ips`` as for :func:`resolve_environment`. Whole label/annotation maps
    are refused (the API server refuses them for env); :func:`volume_field_value` renders them.
    Raises :class:`EnvError` with kubelet's message.
    """
    if api_version != "v1":
        raise EnvError(f"unsupported pod version: {api_version}")
    metadata = _object(_object(pod, "pod").get("metadata"), "pod metadata", missing_ok=True)
    spec = _object(pod.get("spec"), "pod spec", missing_ok=True)
    subscripted = split_subscripted_path(field_path)
    if subscripted is not None:
        if subscripted[0] not in ("metadata.annotations", "metadata.labels"):
            raise EnvError(f"field label does not support subscript: {field_path}")
        return volume_field_value(pod, field_path)
    path = "spec.nodeName" if field_path == "spec.host" else field_path  # old v1 clients' name
    if path not in _FIELD_LABELS:
        raise EnvError(f"field label not supported: {path}")
    hosts = _strings(host_ips, "host_ips")
    if path in ("status.hostIP", "status.hostIPs") and not hosts:
        raise EnvError("host IP unknown; known addresses: []")
    given_pod_ips = _strings(pod_ips, "pod_ips")
    sorted_pod_ips = _sort_pod_ips(given_pod_ips, hosts)
    pod_ip = sorted_pod_ips[0] if sorted_pod_ips else (given_pod_ips[0] if given_pod_ips else "")
    fields = {
        "spec.nodeName": lambda: _string(spec, "nodeName", "pod spec"),
        "spec.serviceAccountName": lambda: _string(spec, "serviceAccountName", "pod spec"),
        "status.hostIP": lambda: hosts[0],
        "status.hostIPs": lambda: ",".join(hosts),
        "status.podIP": lambda: pod_ip,
        "status.podIPs": lambda: ",".join(sorted_pod_ips),
        "metadata.name": lambda: _string(metadata, "name", "pod metadata"),
        "metadata.namespace": lambda: _string(metadata, "namespace", "pod metadata") or "default",
        "metadata.uid": lambda: _string(metadata, "uid", "pod metadata"),
    }
    if path not in fields:
        # Whole label/annotation maps are for downwardAPI volumes (the API server refuses them
        # for env); spec.restartPolicy, spec.schedulerName and status.phase for selectors only.
        raise EnvError(f"unsupported fieldPath: {path}")
    return fields[path]()


def volume_field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A pod field as a downwardAPI volume file holds it (fieldpath.ExtractFieldPathAsString).

    Only metadata: ``name``, ``namespace``, ``uid``, one label or annotation
    (``metadata.labels['k']``; "" when unset) or the whole map (:func:`format_map`).
    Raises :class:`EnvError` with kubelet's message.
    """
    metadata = _object(_object(pod, "pod").get("metadata"), "pod metadata", missing_ok=True)
    subscripted = split_subscripted_path(field_path)
    if subscripted is not None:
        base, key = subscripted
        if base not in ("metadata.annotations", "metadata.labels"):
            raise EnvError(f'fieldPath "{field_path}" does not support subscript')
        errors = qualified_name_errors(key.lower() if base == "metadata.annotations" else key)
        if errors:
            raise EnvError(f"invalid key subscript in {field_path}: {';'.join(errors)}")
        values = _object(metadata.get(base.split(".")[1]), f"pod {base}", missing_ok=True)
        return _string(values, key, f"pod {base}")
    if field_path in ("metadata.annotations", "metadata.labels"):
        values = _object(metadata.get(field_path.split(".")[1]), f"pod {field_path}", missing_ok=True)
        return format_map({str(k): _string(values, k, f"pod {field_path}") for k in values})
    if field_path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return _string(metadata, field_path.split(".")[1], "pod metadata")
    raise EnvError(f"unsupported fieldPath: {field_path}")


def format_map(values: Mapping[str, str]) -> str:
    """apimachinery's FormatMap: ``key="value"`` lines sorted by key, values Go-quoted, no final newline."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Go's strconv.Quote: a double-quoted literal, printable runes kept, the others escaped.

    A lone surrogate (JSON can carry one; Go decodes it as U+FFFD) is written as U+FFFD.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        elif ch == " " or (code > 0x20 and code != 0x7F and _printable(ch)):
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """``text`` in UTF-8 as Go has it: a lone surrogate (JSON can carry one) is U+FFFD."""
    return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _printable(ch: str) -> bool:
    """Go's unicode.IsPrint but for the space: letters, marks, numbers, punctuation, symbols."""
    return unicodedata.category(ch)[0] in "LMNPS"


def resource_value(
    pod: Mapping[str, Any],
    container_name: str,
    resource: str,
    *,
    divisor: object = None,
    allocatable: Mapping[str, Any] | None = None,
    container: Mapping[str, Any] | None = None,
    where: str = "resourceFieldRef",
) -> str:
    """A container's resource as the downward API reads it (containerResourceRuntimeValue).

    ``container_name`` names a container or init container of ``pod``; ``container`` (when
    given) is used instead of looking it up. ``divisor`` is a quantity (unset or zero: 1);
    ``allocatable`` is the node's (what an unset cpu, memory or ephemeral-storage limit of a
    regular container reads as, after the pod-level limit). The value is rounded up, as kubelet
    does. Raises :class:`EnvError` with kubelet's message (``where`` prefixes a bad divisor's).
    """
    spec = _object(_object(pod, "pod").get("spec"), "pod spec", missing_ok=True)
    parsed = Decimal(0) if divisor is None else _quantity(divisor, f"{where}.divisor")
    if parsed == 0:
        parsed = Decimal(1)
    if container is not None:
        target, defaulted = _object(container, "container"), True
    else:
        target, defaulted = _find_container(spec, container_name)
    if resource in _RESOURCE_FIELDS:
        kind, name = _RESOURCE_FIELDS[resource]
    else:
        kind, _dot, name = resource.partition(".")
        if kind not in ("limits", "requests") or not name.startswith(_HUGEPAGES_PREFIX):
            raise EnvError(f"unsupported container resource : {resource}")
    value = _container_resource(spec, allocatable or {}, target, kind=kind, name=name, defaulted=defaulted)
    return str(ceil_ratio(value, parsed))


def _find_container(spec: Mapping[str, Any], name: str) -> tuple[Mapping[str, Any], bool]:
    """The named container, and whether kubelet defaults its limits (not for init containers)."""
    for field, defaulted in (("containers", True), ("initContainers", False)):
        items = spec.get(field) or []
        if not isinstance(items, list | tuple):
            raise EnvError(f"pod spec: {field} must be a list, not {_kind(items)}")
        for item in items:
            if isinstance(item, Mapping) and item.get("name") == name:
                return item, defaulted
    raise EnvError(f"container {name} not found")


def _container_resource(
    spec: Mapping[str, Any],
    allocatable: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    kind: str,
    name: str,
    defaulted: bool,
) -> Decimal:
    cname = container.get("name")
    where = f"container {cname} resources"
    resources = _object(container.get("resources"), where, missing_ok=True)
    limits = _object(resources.get("limits"), f"{where}.limits", missing_ok=True)
    limit = _quantity(limits[name], f"{where}.limits.{name}") if limits.get(name) is not None else None
    if kind == "requests":
        requests = _object(resources.get("requests"), f"{where}.requests", missing_ok=True)
        if requests.get(name) is not None:
            return _quantity(requests[name], f"{where}.requests.{name}")
        # The API server defaults an unset request to the limit (before any node defaulting).
        return limit if limit is not None else Decimal(0)
    if (limit is None or limit == 0) and defaulted and name in _DEFAULTED_LIMITS:
        fallback = _default_limit(spec, allocatable, name)
        if fallback is not None:
            return fallback
    return limit if limit is not None else Decimal(0)


def _default_limit(spec: Mapping[str, Any], allocatable: Mapping[str, Any], name: str) -> Decimal | None:
    """defaultPodLimitsForDownwardAPI: the pod-level limit, else the node's allocatable."""
    if allocatable.get(name) is None:
        return None
    if name in _POD_LEVEL_RESOURCES:
        resources = _object(spec.get("resources"), "pod spec resources", missing_ok=True)
        limits = _object(resources.get("limits"), "pod spec resources.limits", missing_ok=True)
        if limits.get(name) is not None:
            pod_limit = _quantity(limits[name], f"pod spec resources.limits.{name}")
            if pod_limit != 0:
                return pod_limit
    return _quantity(allocatable[name], f"node allocatable {name}")


def split_subscripted_path(path: str) -> tuple[str, str] | None:
    """``metadata.labels['k']`` → ``("metadata.labels", "k")``; None when not subscripted."""
    if not path.endswith("']"):
        return None
    base, sep, key = path[:-2].partition("['")
    if not sep or not base:
        return None
    return base, key


def qualified_name_errors(value: str) -> list[str]:
    """Why ``value`` is not a qualified name (a label key): apimachinery's IsQualifiedName."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errors.append("prefix part must be no more than 253 characters")
            if _DNS1123_SUBDOMAIN.fullmatch(prefix) is None:
                errors.append(f"prefix part {_DNS1123_MSG}")
    else:
        return [
            f"a qualified name {_QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if _QUALIFIED_NAME.fullmatch(name) is None:
        errors.append(f"name part {_QUALIFIED_NAME_MSG}")
    return errors


def _sort_pod_ips(pod_ips: list[str], host_ips: list[str]) -> list[str]:
    """kubelet's sortPodIPs: the first IP of the node's family, then the first of the other."""
    primary_v6 = bool(host_ips) and _ip_family(host_ips[0]) == 6
    ordered = []
    for family in (6, 4) if primary_v6 else (4, 6):
        first = next((ip for ip in pod_ips if _ip_family(ip) == family), None)
        if first is not None:
            ordered.append(first)
    return ordered


def _ip_family(text: str) -> int | None:
    if "%" in text:  # Go's ParseIP takes no zone
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return 4  # Go counts ::ffff:a.b.c.d as IPv4
    return address.version


_SHAPES = Shapes(EnvError)
_object = _SHAPES.object
_string = _SHAPES.string
_required = _SHAPES.required
_boolean = _SHAPES.boolean


def _strings(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise EnvError(f"{what} must be a list of strings")
    return list(values)


def _quantity(value: object, where: str) -> Decimal:
    """A quantity as the API carries it: a string, or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise EnvError(f"{where}: expected a quantity, not {_kind(value)}")
    try:  # str() of a huge int raises ValueError too
        return parse_quantity(value if isinstance(value, str) else str(value))
    except ValueError as exc:
        raise EnvError(f"{where}: {exc}") from None
