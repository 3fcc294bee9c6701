"""resolve_environment: kubelet's makeEnvironmentVariables, against a fake ConfigMap/Secret store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmlet.pod import env as pod_env
from wasmlet.pod.downward import split_subscripted_path
from wasmlet.pod.env import ResolvedEnvironment, SkippedKeys, resolve_environment
from wasmlet.pod.env_error import EnvError


class FakeSources:
    def __init__(
        self,
        configmaps: Mapping[str, Mapping[str, str]] | None = None,
        secrets: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        self.configmaps = dict(configmaps or {})
        self.secrets = dict(secrets or {})
        self.calls: list[tuple[str, str, str]] = []

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.calls.append(("configmap", namespace, name))
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        self.calls.append(("secret", namespace, name))
        return self.secrets.get(name)


CONFIGMAPS = {"cfg": {"A": "from-cfg", "B": "b", "URL": "http://$(HOST)"}, "other": {"A": "from-other"}}
SECRETS = {"s": {"PASSWORD": b"hunter2", "TOKEN": b"t0k"}}


def make_pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "1234-abcd",
            "labels": {"app": "web", "example.com/tier": "front"},
            "annotations": {"note": "hello", "Example.com/Owner": "ops"},
        },
        "spec": {"nodeName": "node-1", "serviceAccountName": "robot", "containers": [container], **spec},
    }


def resolve(container: dict[str, Any], sources: FakeSources | None = None, **kwargs: Any) -> dict[str, str]:
    pod = kwargs.pop("pod", None) or make_pod(container)
    result = resolve_environment(pod, container, sources or FakeSources(CONFIGMAPS, SECRETS), **kwargs)
    return result.env


def env_error(container: dict[str, Any], sources: FakeSources | None = None, **kwargs: Any) -> str:
    with pytest.raises(EnvError) as info:
        resolve(container, sources, **kwargs)
    return str(info.value)


def field_ref(path: str, **extra: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path, **extra}}}


def resource_ref(resource: str, **extra: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"resourceFieldRef": {"resource": resource, **extra}}}


# --- envFrom ----------------------------------------------------------------------------------


def test_env_from_configmap_and_secret_in_order_with_prefix() -> None:
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}},
            {"configMapRef": {"name": "other"}},  # later sources override earlier ones
            {"secretRef": {"name": "s"}, "prefix": "S_"},
        ],
    }
    assert resolve(container) == {
        "A": "from-other",
        "B": "b",
        "URL": "http://$(HOST)",  # envFrom values are never expanded
        "S_PASSWORD": "hunter2",
        "S_TOKEN": "t0k",
    }


def test_env_from_missing_sources_fail_unless_optional() -> None:
    assert env_error({"envFrom": [{"configMapRef": {"name": "nope"}}]}) == 'configmap "nope" not found'
    assert env_error({"envFrom": [{"secretRef": {"name": "nope"}}]}) == 'secret "nope" not found'
    optional = {
        "envFrom": [
            {"configMapRef": {"name": "nope", "optional": True}},
            {"secretRef": {"name": "nope", "optional": True}},
            {"configMapRef": {"name": "other", "optional": True}},
        ]
    }
    assert resolve(optional) == {"A": "from-other"}


def test_env_from_looks_up_in_the_pods_namespace_once_per_name() -> None:
    sources = FakeSources(CONFIGMAPS, SECRETS)
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"configMapRef": {"name": "cfg"}, "prefix": "X_"}],
        "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "B"}}}],
    }
    resolve(container, sources)
    assert sources.calls == [("configmap", "shop", "cfg")]


def test_env_from_skips_invalid_names_and_reports_them_like_kubelet() -> None:
    sources = FakeSources({"cfg": {"1badkey": "1", "2alsobad": "2", "good": "g", "a=b": "x", "tab\t": "t"}})
    container = {"envFrom": [{"configMapRef": {"name": "cfg"}}]}
    relaxed = resolve_environment(make_pod(container), container, sources)
    assert relaxed.env == {"1badkey": "1", "2alsobad": "2", "good": "g"}
    assert relaxed.skipped == (SkippedKeys("configMap", "shop", "cfg", ("a=b", "tab\t")),)

    strict = resolve_environment(make_pod(container), container, sources, strict_env_names=True)
    assert strict.env == {"good": "g"}
    (skipped,) = strict.skipped
    assert skipped.reason == "InvalidEnvironmentVariableNames"
    assert skipped.keys == ("1badkey", "2alsobad", "a=b", "tab\t")
    assert skipped.message == (
        "Keys [1badkey, 2alsobad, a=b, tab\t] from the EnvFrom configMap shop/cfg were skipped "
        "since they are considered invalid environment variable names."
    )


def test_env_from_secret_skipped_keys_name_the_secret_and_count_the_prefix() -> None:
    sources = FakeSources(secrets={"s": {"key": b"v", "-dash": b"d"}})
    container = {"envFrom": [{"secretRef": {"name": "s"}, "prefix": "9"}]}
    result = resolve_environment(make_pod(container), container, sources, strict_env_names=True)
    assert result.env == {}
    assert result.skipped[0].message.startswith("Keys [9-dash, 9key] from the EnvFrom secret shop/s were")


def test_secret_values_must_be_utf8() -> None:
    sources = FakeSources(secrets={"s": {"BIN": b"\xff\xfe"}})
    message = env_error({"envFrom": [{"secretRef": {"name": "s"}}]}, sources)
    assert message == "key BIN in Secret shop/s is not valid UTF-8"


@pytest.mark.parametrize(
    ("env_from", "message"),
    [
        ("cfg", "envFrom: expected a list, not a string"),
        (["cfg"], "envFrom[0]: expected an object, not a string"),
        ([{}], "envFrom[0]: must specify exactly one of configMapRef, secretRef"),
        (
            [{"configMapRef": {"name": "cfg"}, "secretRef": {"name": "s"}}],
            "envFrom[0]: must specify exactly one of configMapRef, secretRef",
        ),
        ([{"configMapRef": {}}], "envFrom[0].configMapRef: name is required"),
        ([{"secretRef": "s"}], "envFrom[0].secretRef: expected an object, not a string"),
        ([{"configMapRef": {"name": 3}}], "envFrom[0].configMapRef: name must be a string, not a number"),
        (
            [{"configMapRef": {"name": "cfg", "optional": "yes"}}],
            "envFrom[0].configMapRef: optional must be a boolean, not a string",
        ),
        (
            [{"configMapRef": {"name": "cfg"}, "prefix": 1}],
            "envFrom[0]: prefix must be a string, not a number",
        ),
    ],
)
def test_malformed_env_from(env_from: Any, message: str) -> None:
    assert env_error({"envFrom": env_from}) == message


# --- env: literal values and expansion ---------------------------------------------------------


def test_env_expands_against_env_from_and_earlier_entries_only() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
        "env": [
            {"name": "X", "value": "$(A)-$(Y)"},  # Y is not defined yet: kept as written
            {"name": "Y", "value": "y"},
            {"name": "Z", "value": "$$(A) $(B)$(MISSING)"},
            {"name": "B", "value": "override"},  # env overrides envFrom
            {"name": "EMPTY", "value": ""},
            {"name": "NULL", "value": None},
            {"name": "BARE"},
        ],
    }
    env = resolve(container)
    assert env["X"] == "from-cfg-$(Y)"
    assert env["Z"] == "$(A) b$(MISSING)"
    assert env["B"] == "override"
    assert env["EMPTY"] == env["NULL"] == env["BARE"] == ""


def test_later_env_entries_override_earlier_ones() -> None:
    container = {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "$(A)2"}]}
    assert resolve(container) == {"A": "12"}


def test_service_env_is_looked_up_after_the_containers_and_fills_in() -> None:
    container = {"env": [{"name": "URL", "value": "$(SVC_HOST):$(PORT)"}, {"name": "PORT", "value": "1"}]}
    service_env = {"SVC_HOST": "10.0.0.1", "PORT": "80", "KUBERNETES_SERVICE_HOST": "10.0.0.2"}
    env = resolve(container, service_env=service_env)
    assert env == {
        "URL": "10.0.0.1:80",
        "PORT": "1",
        "SVC_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_HOST": "10.0.0.2",
    }


# --- env: configMapKeyRef / secretKeyRef -------------------------------------------------------


def cm_key(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"configMapKeyRef": {"name": name, "key": key, **extra}}}


def secret_key(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"secretKeyRef": {"name": name, "key": key, **extra}}}


def test_key_refs_resolve_without_expansion() -> None:
    container = {"env": [cm_key("cfg", "URL"), {**secret_key("s", "PASSWORD"), "name": "P"}]}
    assert resolve(container) == {"V": "http://$(HOST)", "P": "hunter2"}


def test_key_ref_errors_are_kubelets() -> None:
    assert env_error({"env": [cm_key("nope", "k")]}) == 'configmap "nope" not found'
    assert env_error({"env": [cm_key("cfg", "missing")]}) == "couldn't find key missing in ConfigMap shop/cfg"
    assert env_error({"env": [secret_key("nope", "k")]}) == 'secret "nope" not found'
    assert env_error({"env": [secret_key("s", "k")]}) == "couldn't find key k in Secret shop/s"


def test_optional_key_refs_leave_the_variable_unset() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "other"}, "prefix": "V"}],  # sets VA
        "env": [
            {
                "name": "VA",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": True}},
            },
            cm_key("nope", "k", optional=True),
            secret_key("nope", "k", optional=True),
            secret_key("s", "nope", optional=True),
        ],
    }
    assert resolve(container) == {"VA": "from-other"}  # an unset optional keeps what was there


def test_namespace_defaults_when_the_pod_has_none() -> None:
    container = {"env": [cm_key("cfg", "missing")]}
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [container]}}
    assert env_error(container, pod=pod) == "couldn't find key missing in ConfigMap default/cfg"


# --- env: fieldRef (downward API) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "web"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "1234-abcd"),
        ("metadata.labels['app']", "web"),
        ("metadata.labels['example.com/tier']", "front"),
        ("metadata.labels['absent']", ""),
        ("metadata.annotations['note']", "hello"),
        ("metadata.annotations['Example.com/Owner']", "ops"),  # annotation keys are checked lowercased
        ("spec.nodeName", "node-1"),
        ("spec.host", "node-1"),  # old clients' name for spec.nodeName
        ("spec.serviceAccountName", "robot"),
        ("status.hostIP", "192.0.2.10"),
        ("status.hostIPs", "192.0.2.10,2001:db8::10"),
        ("status.podIP", "10.1.0.5"),
        ("status.podIPs", "10.1.0.5,fd00::5"),
    ],
)
def test_field_refs(path: str, expected: str) -> None:
    container = {"env": [field_ref(path)]}
    env = resolve(
        container,
        host_ips=["192.0.2.10", "2001:db8::10"],
        pod_ips=["fd00::5", "10.1.0.5", "10.1.0.6", "not-an-ip"],
    )
    assert env == {"V": expected}


def test_field_ref_explicit_api_version_v1() -> None:
    assert resolve({"env": [field_ref("metadata.name", apiVersion="v1")]}) == {"V": "web"}


def test_pod_ips_follow_the_nodes_family() -> None:
    container = {"env": [field_ref("status.podIP"), {**field_ref("status.podIPs"), "name": "ALL"}]}
    v6_node = resolve(container, host_ips=["2001:db8::10"], pod_ips=["10.1.0.5", "fd00::5"])
    assert v6_node == {"V": "fd00::5", "ALL": "fd00::5,10.1.0.5"}
    mapped = resolve(container, host_ips=["2001:db8::10"], pod_ips=["::ffff:10.1.0.5"])
    assert mapped == {"V": "::ffff:10.1.0.5", "ALL": "::ffff:10.1.0.5"}  # Go counts it as IPv4
    no_ips = resolve(container)
    assert no_ips == {"V": "", "ALL": ""}


def test_host_ip_without_host_ips_fails() -> None:
    assert env_error({"env": [field_ref("status.hostIP")]}) == "host IP unknown; known addresses: []"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (field_ref("metadata.labels"), "unsupported fieldPath: metadata.labels"),
        (field_ref("metadata.annotations"), "unsupported fieldPath: metadata.annotations"),
        (field_ref("spec.restartPolicy"), "unsupported fieldPath: spec.restartPolicy"),
        (field_ref("status.phase"), "unsupported fieldPath: status.phase"),
        (field_ref("spec.containers"), "field label not supported: spec.containers"),
        (field_ref("metadata.generateName"), "field label not supported: metadata.generateName"),
        (field_ref("spec.nodeName['x']"), "field label does not support subscript: spec.nodeName['x']"),
        (field_ref("metadata.name", apiVersion="v2"), "unsupported pod version: v2"),
    ],
)
def test_field_ref_errors_are_kubelets(ref: dict[str, Any], message: str) -> None:
    assert env_error({"env": [ref]}) == message


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("metadata.labels['bad key']", "name part must consist of alphanumeric characters"),
        ("metadata.labels['']", "name part must be non-empty"),
        ("metadata.labels['a/b/c']", "a qualified name must consist of"),
        ("metadata.labels['/x']", "prefix part must be non-empty"),
        ("metadata.labels['Example.com/x']", "prefix part a lowercase RFC 1123 subdomain"),
        (f"metadata.annotations['{'x' * 64}']", "name part must be no more than 63 characters"),
        (f"metadata.labels['{'a' * 254}/x']", "prefix part must be no more than 253 characters"),
    ],
)
def test_field_ref_subscripts_must_be_qualified_names(path: str, reason: str) -> None:
    message = env_error({"env": [field_ref(path)]})
    assert message.startswith(f"invalid key subscript in {path}: ")
    assert reason in message


def test_split_subscripted_path() -> None:
    assert split_subscripted_path("metadata.annotations['a[b]c']") == (
        "metadata.annotations",
        "a[b]c",
    )
    assert split_subscripted_path("metadata.labels['']") == ("metadata.labels", "")
    assert split_subscripted_path("metadata.labels") is None
    assert split_subscripted_path("['x']") is None
    assert split_subscripted_path("x']") is None


# --- env: resourceFieldRef ---------------------------------------------------------------------

ALLOCATABLE = {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "100Gi", "pods": "110"}


def with_resources(**resources: Any) -> dict[str, Any]:
    return {"name": "main", "resources": resources}


@pytest.mark.parametrize(
    ("resource", "divisor", "expected"),
    [
        ("limits.cpu", None, "1"),  # 500m rounds up to a whole cpu
        ("limits.cpu", "1m", "500"),
        ("requests.cpu", "1m", "250"),
        ("limits.memory", None, "134217728"),
        ("limits.memory", "1Mi", "128"),
        ("limits.memory", "1M", "135"),
        ("requests.memory", "1Mi", "64"),
        ("limits.ephemeral-storage", "1Gi", "2"),
        ("requests.ephemeral-storage", "1Gi", "1"),
        ("limits.hugepages-2Mi", "1Mi", "4"),
        ("requests.hugepages-2Mi", "1Mi", "4"),  # the API server defaults a request to its limit
        ("limits.cpu", "0", "1"),  # a zero divisor means 1
        ("limits.cpu", 1, "1"),  # JSON numbers are quantities too
        ("limits.cpu", 0.001, "500"),
    ],
)
def test_resource_field_refs(resource: str, divisor: Any, expected: str) -> None:
    container = with_resources(
        limits={"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "1.5Gi", "hugepages-2Mi": "4Mi"},
        requests={"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
    )
    ref = resource_ref(resource) if divisor is None else resource_ref(resource, divisor=divisor)
    container["env"] = [ref]
    assert resolve(container, allocatable=ALLOCATABLE) == {"V": expected}


def test_unset_or_zero_limits_read_as_node_allocatable() -> None:
    container = with_resources(limits={"cpu": "0"}, requests={"memory": "1Gi"})
    container["env"] = [
        resource_ref("limits.cpu", divisor="1m"),
        {**resource_ref("limits.memory", divisor="1Gi"), "name": "MEM"},
        {**resource_ref("limits.ephemeral-storage", divisor="1Gi"), "name": "DISK"},
        {**resource_ref("requests.cpu"), "name": "REQ"},  # an unset request stays 0
    ]
    assert resolve(container, allocatable=ALLOCATABLE) == {"V": "4000", "MEM": "8", "DISK": "100", "REQ": "0"}
    assert resolve(container) == {"V": "0", "MEM": "0", "DISK": "0", "REQ": "0"}  # no allocatable


def test_pod_level_limits_come_before_node_allocatable() -> None:
    container = with_resources()
    container["env"] = [
        resource_ref("limits.cpu", divisor="1m"),
        {**resource_ref("limits.memory"), "name": "M"},
    ]
    pod = make_pod(container, resources={"limits": {"cpu": "2", "memory": "0"}})
    assert resolve(container, pod=pod, allocatable=ALLOCATABLE) == {"V": "2000", "M": str(8 * 2**30)}


def test_resource_field_ref_by_container_name() -> None:
    sidecar = {"name": "sidecar", "resources": {"limits": {"memory": "32Mi"}}}
    init = {"name": "init", "resources": {"requests": {"cpu": "100m"}}}
    main = {
        "name": "main",
        "env": [
            resource_ref("limits.memory", containerName="sidecar", divisor="1Mi"),
            {**resource_ref("limits.cpu", containerName="sidecar"), "name": "SIDECAR_CPU"},
            {**resource_ref("requests.cpu", containerName="init", divisor="1m"), "name": "INIT_CPU"},
            {**resource_ref("limits.cpu", containerName="init"), "name": "INIT_LIMIT"},
        ],
    }
    pod = make_pod(main, initContainers=[init])
    pod["spec"]["containers"].append(sidecar)
    env = resolve(main, pod=pod, allocatable=ALLOCATABLE)
    # kubelet defaults the pod's containers' limits, but not its init containers'.
    assert env == {"V": "32", "SIDECAR_CPU": "4", "INIT_CPU": "100", "INIT_LIMIT": "0"}


def test_init_container_resolves_its_own_resources_with_defaults() -> None:
    init = {"name": "init", "env": [resource_ref("limits.cpu")]}
    pod = make_pod({"name": "main"}, initContainers=[init])
    assert resolve(init, pod=pod, allocatable=ALLOCATABLE) == {"V": "4"}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (resource_ref("limits.cpu", containerName="ghost"), "container ghost not found"),
        (resource_ref("limits.pods"), "unsupported container resource : limits.pods"),
        (resource_ref("cpu"), "unsupported container resource : cpu"),
        (resource_ref("limits.cpu", divisor="1 core"), "divisor: quantity '1 core'"),
        (resource_ref("limits.cpu", divisor=True), "divisor: expected a quantity, not a boolean"),
        (resource_ref("limits.cpu", divisor=10**5000), "divisor: Exceeds the limit"),
    ],
)
def test_resource_field_ref_errors(ref: dict[str, Any], message: str) -> None:
    assert message in env_error({"name": "main", "env": [ref]}, allocatable=ALLOCATABLE)


def test_invalid_resource_quantities_name_where_they_are() -> None:
    container = with_resources(limits={"cpu": "lots"})
    container["env"] = [resource_ref("limits.cpu")]
    message = env_error(container)
    assert message.startswith("container main resources.limits.cpu: quantity 'lots'")
    bad_node = {"env": [resource_ref("limits.memory")], "name": "main"}
    assert env_error(bad_node, allocatable={"memory": "?"}).startswith(
        "node allocatable memory: quantity '?'"
    )


# --- malformed env -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"name": "A"}, "env: expected a list, not an object"),
        (["A=1"], "env[0]: expected an object, not a string"),
        ([{"value": "1"}], "env[0]: name is required"),
        ([{"name": ""}], "env[0]: name is required"),
        ([{"name": 5}], "env[0]: name must be a string, not a number"),
        ([{"name": "A=B"}], 'env[0]: invalid environment variable name "A=B"'),
        ([{"name": "A", "value": 1}], 'env "A": value must be a string, not a number'),
        (
            [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            'env "A": valueFrom may not be specified when value is not empty',
        ),
        (
            [{"name": "A", "valueFrom": "metadata.name"}],
            'env "A": valueFrom: expected an object, not a string',
        ),
        (
            [{"name": "A", "valueFrom": {}}],
            'env "A": valueFrom must specify exactly one of configMapKeyRef, fieldRef, resourceFieldRef, '
            "secretKeyRef",
        ),
        (
            [{"name": "A", "valueFrom": {"bogus": {}}}],
            'env "A": valueFrom must specify exactly one of',
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}, "secretKeyRef": {"name": "s"}}}],
            "(it specifies fieldRef, secretKeyRef)",
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": {}}}],
            'env "A": valueFrom.fieldRef: fieldPath is required',
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": []}}],
            'env "A": valueFrom.fieldRef: expected an object, not a list',
        ),
        (
            [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg"}}}],
            'env "A": valueFrom.configMapKeyRef: key is required',
        ),
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": {"key": "k"}}}],
            'env "A": valueFrom.secretKeyRef: name is required',
        ),
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": 1}}}],
            'env "A": valueFrom.secretKeyRef: optional must be a boolean, not a number',
        ),
        (
            [{"name": "A", "valueFrom": {"resourceFieldRef": {"divisor": "1"}}}],
            'env "A": valueFrom.resourceFieldRef: resource is required',
        ),
        (
            [{"name": "A", "valueFrom": {"fileKeyRef": {"path": "f", "key": "k", "volumeName": "v"}}}],
            'env "A": valueFrom.fileKeyRef is not supported by wasmlet',
        ),
    ],
)
def test_malformed_env_names_the_variable_and_the_cause(env: Any, message: str) -> None:
    assert message in env_error({"env": env})


def test_malformed_pod_and_arguments() -> None:
    container = {"env": [field_ref("metadata.name")]}
    with pytest.raises(EnvError, match="pod: expected an object, not a list"):
        resolve_environment([], container, FakeSources())  # type: ignore[arg-type]
    with pytest.raises(EnvError, match="container: expected an object, not null"):
        resolve_environment({}, None, FakeSources())  # type: ignore[arg-type]
    with pytest.raises(EnvError, match="pod metadata: expected an object"):
        resolve_environment({"metadata": "x"}, container, FakeSources())
    with pytest.raises(EnvError, match="pod metadata: name must be a string"):
        resolve_environment({"metadata": {"name": 1}}, container, FakeSources())
    with pytest.raises(EnvError, match="host_ips must be a list of strings"):
        resolve_environment({}, container, FakeSources(), host_ips="10.0.0.1")


def test_sources_returning_the_wrong_types_are_env_errors() -> None:
    sources = FakeSources({"cfg": {"K": b"bytes"}}, {"s": {"K": "str"}})  # type: ignore[dict-item]
    assert env_error({"envFrom": [{"configMapRef": {"name": "cfg"}}]}, sources) == (
        "key K in ConfigMap shop/cfg is not a string"
    )
    assert env_error({"env": [secret_key("s", "K")]}, sources) == "key K in Secret shop/s is not bytes"


def test_no_env_at_all() -> None:
    assert resolve_environment({}, {}, FakeSources()) == ResolvedEnvironment(env={})


def test_legacy_environment_is_unchanged() -> None:
    container = {"env": [{"name": "A", "value": "1"}, cm_key("cfg", "B"), {"name": "B", "value": "$(A)"}]}
    assert pod_env.environment(container) == {"A": "1", "B": "1"}


def test_expand_reads_on_after_an_unclosed_reference_as_kubelet_does() -> None:
    assert pod_env.expand("$(A$$", {"A": "x"}) == "$(A$"
    assert pod_env.expand("$(A $(", {}) == "$(A $("


# --- property: anything in, a dict of strings or an EnvError out -------------------------------

NAMES = st.sampled_from(["cfg", "other", "s", "missing", ""])
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
FIELD_PATHS = st.sampled_from(
    [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "metadata.labels",
        "metadata.labels['app']",
        "metadata.annotations['Note']",
        "metadata.labels['bad key']",
        "spec.nodeName",
        "spec.host",
        "spec.serviceAccountName",
        "spec.restartPolicy",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
        "status.nope",
        "x['y']",
        "",
    ]
)
RESOURCES = st.sampled_from(
    ["limits.cpu", "limits.memory", "requests.ephemeral-storage", "limits.hugepages-1Gi", "limits.gpu", ""]
)
QUANTITIES = st.one_of(
    st.sampled_from(["1", "0", "1m", "1Mi", "-1", "1e3", "1e400", "bogus", "", "1.5Gi"]),
    st.integers(min_value=-5, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``, sometimes junk (one_of would flatten JUNK's branches and drown it)."""
    return st.integers(min_value=0, max_value=5).flatmap(lambda n: JUNK if n == 0 else strategy)


def ref_dict(
    required: Mapping[str, st.SearchStrategy[Any]], **optional: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """A reference whose fields are mostly right: required ones mostly present, junk now and then."""
    return st.fixed_dictionaries(
        {k: maybe(v) for k, v in required.items()},
        optional={**{k: maybe(v) for k, v in optional.items()}, "unknown": JUNK},
    )


KEY_REF = ref_dict(
    {"name": NAMES, "key": st.sampled_from(["A", "B", "PASSWORD", "BIN", "nope"])}, optional=st.booleans()
)
ONE_SOURCE = {
    "configMapKeyRef": KEY_REF,
    "secretKeyRef": KEY_REF,
    "fieldRef": ref_dict({"fieldPath": FIELD_PATHS}, apiVersion=st.sampled_from(["v1", "v2"])),
    "resourceFieldRef": ref_dict(
        {"resource": RESOURCES}, divisor=QUANTITIES, containerName=st.sampled_from(["main", "init", "x"])
    ),
}
VALUE_FROM = st.one_of(
    *(st.fixed_dictionaries({key: maybe(ref)}) for key, ref in ONE_SOURCE.items()),
    st.fixed_dictionaries(
        {}, optional={**ONE_SOURCE, "fileKeyRef": JUNK, "unknown": JUNK}
    ),  # 0, 2, ... sources
)
ENV_ITEM = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["A", "B", "C", "lower.dot", "1X", "A=B", ""]))},
    optional={
        "value": maybe(st.sampled_from(["", "plain", "$(A)-$$(B)", "$(", "$(A", "$(SVC)"])),
        "valueFrom": maybe(VALUE_FROM),
        "unknown": JUNK,
    },
)
PREFIXES = st.sampled_from(["", "P_", "1", "="])
ENV_FROM_ITEM = st.one_of(
    st.fixed_dictionaries(
        {"configMapRef": maybe(ref_dict({"name": NAMES}, optional=st.booleans()))},
        optional={"prefix": maybe(PREFIXES)},
    ),
    st.fixed_dictionaries(
        {"secretRef": maybe(ref_dict({"name": NAMES}, optional=st.booleans()))},
        optional={"prefix": maybe(PREFIXES)},
    ),
    st.fixed_dictionaries(
        {}, optional={"configMapRef": JUNK, "secretRef": JUNK, "prefix": JUNK, "unknown": JUNK}
    ),
)
RESOURCES_SPEC = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "limits": maybe(st.dictionaries(st.sampled_from(["cpu", "memory", "hugepages-1Gi"]), QUANTITIES)),
            "requests": maybe(st.dictionaries(st.sampled_from(["cpu", "memory"]), QUANTITIES)),
        },
    )
)
CONTAINER = st.fixed_dictionaries(
    {"name": st.just("main")},
    optional={
        "env": maybe(st.lists(maybe(ENV_ITEM), max_size=5)),
        "envFrom": maybe(st.lists(maybe(ENV_FROM_ITEM), max_size=3)),
        "resources": RESOURCES_SPEC,
    },
)
FAKE_SOURCES = FakeSources(
    {"cfg": {"A": "1", "B": "$(A)", "1bad": "x", "a=b": "y"}, "other": {"A": "2"}},
    {"s": {"PASSWORD": b"pw", "BIN": b"\xff", "A": b"3"}},
)


NODE = st.fixed_dictionaries(
    {
        "host_ips": st.lists(st.sampled_from(["10.0.0.1", "fd00::1", "bogus"]), max_size=2),
        "pod_ips": st.lists(
            st.sampled_from(["10.1.0.1", "fd01::1", "::ffff:1.2.3.4", "fe80::1%eth0", "x"]), max_size=3
        ),
        "allocatable": st.one_of(st.none(), st.dictionaries(st.sampled_from(["cpu", "memory"]), QUANTITIES)),
        "service_env": st.one_of(st.none(), st.just({"SVC": "svc", "A": "from-service"})),
        "strict_env_names": st.booleans(),
    }
)
POD_SPEC_EXTRAS = st.fixed_dictionaries(
    {
        "initContainers": st.lists(
            st.fixed_dictionaries({"name": st.just("init")}, optional={"resources": RESOURCES_SPEC})
        ),
        "resources": RESOURCES_SPEC,
    }
)
METADATA = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "name": maybe(st.just("p")),
            "namespace": maybe(st.just("ns")),
            "uid": maybe(st.just("u")),
            "labels": maybe(st.just({"app": "x"})),
            "annotations": maybe(st.just({"note": "y"})),
        },
    )
)


@settings(max_examples=400, deadline=None)
@given(container=CONTAINER, metadata=METADATA, extras=POD_SPEC_EXTRAS, node=NODE)
def test_resolve_environment_returns_strings_or_raises_env_error(
    container: dict[str, Any], metadata: Any, extras: dict[str, Any], node: dict[str, Any]
) -> None:
    pod = {"metadata": metadata, "spec": {"containers": [container], **extras}}
    try:
        result = resolve_environment(pod, container, FAKE_SOURCES, **node)
    except EnvError as exc:
        assert str(exc)
        return
    assert isinstance(result.env, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.env.items())
    for skipped in result.skipped:
        assert skipped.keys
        assert skipped.message.startswith("Keys [")
