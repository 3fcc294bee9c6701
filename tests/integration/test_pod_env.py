"""A container's environment as kubelet builds it, on a real wasmlet node: literal values with
$(VAR) expansion, ConfigMap and Secret keys, envFrom with prefixes, the downward API and
resource fields; a missing ConfigMap holds the container in CreateContainerConfigError until it
appears."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Pods, Registry, delete_quietly, push_wat, unique

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration

NS = "/api/v1/namespaces/default"


@pytest.fixture
def objects(admin: Client) -> Iterator[list[str]]:
    """Paths of the ConfigMaps and Secrets a test created, deleted after it."""
    created: list[str] = []
    yield created
    for path in created:
        delete_quietly(admin, path)


def configmap(admin: Client, objects: list[str], name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    admin.post(f"{NS}/configmaps", body)
    objects.append(f"{NS}/configmaps/{name}")


def secret(admin: Client, objects: list[str], name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
    admin.post(f"{NS}/secrets", body)
    objects.append(f"{NS}/secrets/{name}")


def printed_env(pods: Pods, name: str) -> dict[str, str]:
    pods.wait_state(name, "terminated", "Completed")
    return dict(line.split("=", 1) for line in pods.logs(name).splitlines())


def test_env_from_configmaps_secrets_downward_api_and_resources(
    pods: Pods, admin: Client, registry: Registry, objects: list[str], tmp_path: Path
) -> None:
    cm, sec = unique("settings"), unique("credentials")
    configmap(admin, objects, cm, {"greeting": "hello", "color": "blue"})
    secret(admin, objects, sec, {"password": "s3cret", "user": "wasm"})
    name = unique("printenv")
    env = [
        {"name": "LITERAL", "value": "x"},
        {"name": "EXPANDED", "value": "$(LITERAL)-$(CM_greeting)-$(GREETING)"},  # GREETING: defined later
        {"name": "ESCAPED", "value": "$$(LITERAL)"},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": sec, "key": "password"}}},
        {"name": "NOT_THERE", "valueFrom": {"secretKeyRef": {"name": sec, "key": "nope", "optional": True}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {
            "name": "MEM_MI",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        # No cpu limit: kubelet reads the node's allocatable cpu.
        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]
    env_from = [
        {"configMapRef": {"name": cm}, "prefix": "CM_"},
        {"secretRef": {"name": sec}},
        {"configMapRef": {"name": unique("absent"), "optional": True}},
    ]
    container = {
        "env": env,
        "envFrom": env_from,
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}},
    }
    pods.create(name, push_wat(registry, "printenv", tmp_path), container, restartPolicy="Never")
    printed = printed_env(pods, name)
    pod = pods.get(name)
    assert printed == {
        "CM_greeting": "hello",
        "CM_color": "blue",
        "password": "s3cret",
        "user": "wasm",
        "LITERAL": "x",
        "EXPANDED": "x-hello-$(GREETING)",
        "ESCAPED": "$(LITERAL)",
        "GREETING": "hello",
        "PASSWORD": "s3cret",
        "POD_NAME": name,
        "POD_NAMESPACE": "default",
        "POD_UID": pod["metadata"]["uid"],
        "APP": name,
        "NODE_NAME": pods.node.name,
        "HOST_IP": "127.0.0.2",
        "SA": "default",
        "MEM_MI": "64",
        "CPU_M": "250",
        "CPU_LIMIT": str(os.cpu_count()),
    }
    assert pod["status"]["phase"] == "Succeeded"


def test_missing_configmap_holds_the_container_until_it_appears(
    pods: Pods, admin: Client, registry: Registry, objects: list[str], tmp_path: Path
) -> None:
    cm = unique("later")
    name = unique("printenv")
    container = {"env": [{"name": "LATE", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "value"}}}]}
    pods.create(name, push_wat(registry, "printenv", tmp_path), container, restartPolicy="Never")
    waiting = pods.wait_state(name, "waiting", "CreateContainerConfigError")
    assert waiting["message"] == f'configmap "{cm}" not found'
    pods.wait_event(name, "Failed", f'Error: configmap "{cm}" not found')
    assert pods.get(name)["status"]["phase"] == "Pending"
    configmap(admin, objects, cm, {"value": "arrived"})
    assert printed_env(pods, name) == {"LATE": "arrived"}


def test_missing_secret_key_is_a_config_error_naming_it(
    pods: Pods, admin: Client, registry: Registry, objects: list[str], tmp_path: Path
) -> None:
    sec = unique("credentials")
    secret(admin, objects, sec, {"user": "wasm"})
    name = unique("printenv")
    container = {"env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": sec, "key": "password"}}}]}
    pods.create(name, push_wat(registry, "printenv", tmp_path), container, restartPolicy="Never")
    waiting = pods.wait_state(name, "waiting", "CreateContainerConfigError")
    assert waiting["message"] == f"couldn't find key password in Secret default/{sec}"
