"""Session fixtures: the real control plane and registries, brought up by the roles.

The playbooks are idempotent: against a healthy cluster they change nothing and take
seconds; on a cold machine they build the Kubernetes binaries once (cached under
``~/.wasmlet/bin``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from helpers import (
    POD_NETWORK,
    ROOT,
    SECURE_REGISTRY,
    Cluster,
    Pods,
    Registry,
    joined_node,
    run_playbook,
    tracked_pods,
    unique,
)
from wasmlet_proc import WasmletNode

from wasmlet import paths
from wasmlet.kube.client import ApiError, Client
from wasmlet.oci.push import push_module


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    run_playbook("cluster.yml")
    kubectl = paths.home() / "bin" / "kubectl"
    return Cluster(
        paths.admin_kubeconfig(), paths.cluster_dir() / "pki", paths.cluster_dir() / "run", kubectl
    )


@pytest.fixture(scope="session")
def registry() -> Registry:
    run_playbook("registry.yml")
    return Registry(host="127.0.0.1:5000")


@pytest.fixture(scope="session")
def secure_registry() -> Iterator[Registry]:
    """A second registry with basic auth and TLS; removed again when the session ends."""
    run_playbook("registry.yml", SECURE_REGISTRY)
    users = SECURE_REGISTRY["registry_auth_users"]
    assert isinstance(users, list)
    yield Registry(
        host="127.0.0.1:5001",
        ca=paths.home() / "registry-secure" / "tls" / "ca.crt",
        username=users[0]["username"],
        password=users[0]["password"],
    )
    run_playbook("registry.yml", {**SECURE_REGISTRY, "registry_state": "absent"})


@pytest.fixture
def admin(cluster: Cluster) -> Iterator[Client]:
    with cluster.admin() as client:
        yield client


@pytest.fixture(scope="session")
def wasm_node(
    cluster: Cluster, registry: Registry, secure_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WasmletNode]:
    """One real wasmlet node for the session, joined, its serving certificate approved,
    pulling from the plain-HTTP local registry and trusting the secure registry's CA; its pods
    may mount host directories under the session's temporary directory (where its own data
    directory is too, which they may not mount)."""
    admin = cluster.admin()
    extra = (
        "--insecure-registries",
        registry.host,
        "--registry-ca-files",
        f"{secure_registry.host}={secure_registry.ca}",
        "--allowed-host-paths",
        str(tmp_path_factory.getbasetemp()),
        *POD_NETWORK,
    )
    with joined_node(
        admin, tmp_path_factory.mktemp("wasm-node"), unique("wasm-node"), "127.0.0.2", *extra
    ) as node:
        yield node
    admin.close()


@pytest.fixture
def pods(admin: Client, wasm_node: WasmletNode) -> Iterator[Pods]:
    yield from tracked_pods(admin, wasm_node)


HOST_PATH_NAMESPACE = "wasmlet-host-paths"


@pytest.fixture
def host_path_pods(admin: Client, wasm_node: WasmletNode) -> Iterator[Pods]:
    """Pods in a namespace that opts down from the cluster's Pod Security default (baseline, which
    refuses hostPath) to privileged, as an operator would for workloads that need host directories."""
    labels = {"pod-security.kubernetes.io/enforce": "privileged"}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": HOST_PATH_NAMESPACE, "labels": labels},
    }
    try:
        admin.post("/api/v1/namespaces", namespace)
    except ApiError as exc:
        if exc.status != 409:
            raise
    yield from tracked_pods(admin, wasm_node, HOST_PATH_NAMESPACE)


@pytest.fixture(scope="session")
def fsprobe(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/modules/fsprobe (Go, GOOS=wasip1) built and pushed."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = tmp_path_factory.mktemp("fsprobe") / "fsprobe.wasm"
    subprocess.run(
        [go, "build", "-trimpath", "-buildvcs=false", "-o", str(out), "."],
        cwd=ROOT / "tests" / "modules" / "fsprobe",
        env={**os.environ, "GOOS": "wasip1", "GOARCH": "wasm"},
        check=True,
    )
    ref = f"{registry.host}/{unique('fsprobe')}:v1"
    push_module(ref, out, insecure_registries={registry.host})
    return ref
