"""The downward API: a pod's fields and a container's resources, for env and downwardAPI volumes.

:func:`field_value` is an env ``fieldRef``, :func:`volume_field_value` a volume file's
``fieldRef`` (metadata only, whole label/annotation maps rendered by
:func:`~wasmlet.pod.go_strings.format_map`), :func:`resource_value` a ``resourceFieldRef``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from wasmlet.kube.quantity import ceil_ratio, parse_quantity
from wasmlet.kube.shapes import Shapes
from wasmlet.kube.shapes import kind as _kind
from wasmlet.kube.validation import qualified_name_errors
from wasmlet.pod.env_error import EnvError, strings
from wasmlet.pod.go_strings import format_map

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


def field_value(
    pod: Mapping[str, Any],
    field_path: str,
    *,
    api_version: str = "v1",
    host_ips: Sequence[str] = (),
    pod_ips: Sequence[str] = (),
) -> str:
    """A pod field as an env ``fieldRef`` reads it (kubelet's podFieldSelectorRuntimeValue).

    ``host_ips`` and ``pod_ips`` as for :func:`~wasmlet.pod.env.resolve_environment`. Whole
    label/annotation maps are refused (the API server refuses them for env);
    :func:`volume_field_value` renders them. Raises :class:`EnvError` with kubelet's message.
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
    hosts = strings(host_ips, "host_ips")
    if path in ("status.hostIP", "status.hostIPs") and not hosts:
        raise EnvError("host IP unknown; known addresses: []")
    given_pod_ips = strings(pod_ips, "pod_ips")
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
    (``metadata.labels['k']``; "" when unset) or the whole map (:func:`~wasmlet.pod.go_strings.format_map`).
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


def _quantity(value: object, where: str) -> Decimal:
    """A quantity as the API carries it: a string, or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise EnvError(f"{where}: expected a quantity, not {_kind(value)}")
    try:  # str() of a huge int raises ValueError too
        return parse_quantity(value if isinstance(value, str) else str(value))
    except ValueError as exc:
        raise EnvError(f"{where}: {exc}") from None
