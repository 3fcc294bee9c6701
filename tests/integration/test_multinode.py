"""Three wasmlet nodes on this machine from one inventory, through the collection's node
playbook (bootstrap → node → validated CSR approval); pods spread over them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from helpers import ROOT, Cluster, Registry, delete_quietly, node_ready, run_playbook_file, unique, wait_for

from wasmlet.kube.client import Client
from wasmlet.oci.push import push_module

pytestmark = pytest.mark.integration

NODES = {"a": "127.0.0.4", "b": "127.0.0.5", "c": "127.0.0.6"}


def _inventory(tmp_path: Path, names: dict[str, str], registry: Registry) -> Path:
    hosts: dict[str, Any] = {}
    for name, ip in names.items():
        data = tmp_path / name
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "node_name": name,
            "node_hostname": name,
            "node_ip": ip,
            "node_data_dir": str(data),
            "bootstrap_kubeconfig": str(data / "config" / "bootstrap.conf"),
            "node_insecure_registries": [registry.host],
        }
    inventory = {
        "all": {
            "children": {
                "control_plane": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                        }
                    }
                },
                "wasm_nodes": {"hosts": hosts},
            }
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    return path


@pytest.fixture
def three_nodes(cluster: Cluster, registry: Registry, tmp_path: Path) -> Iterator[dict[str, str]]:
    suffix = unique("m")
    names = {f"{suffix}-{key}": ip for key, ip in NODES.items()}
    inventory = _inventory(tmp_path, names, registry)
    try:
        out = run_playbook_file(ROOT / "playbooks" / "node.yml", inventory=inventory)
        assert "failed=0" in out
        yield names
    finally:
        stop = tmp_path / "stop.yml"
        stop.write_text(
            json.dumps(
                [
                    {
                        "name": "Stop the nodes",
                        "hosts": "wasm_nodes",
                        "gather_facts": True,
                        "gather_subset": ["min"],
                        "roles": [{"role": "wasmlet.kube.node", "vars": {"node_state": "absent"}}],
                    }
                ]
            )
        )
        run_playbook_file(stop, inventory=inventory)
        with cluster.admin() as admin:
            for name in names:
                delete_quietly(admin, f"/api/v1/nodes/{name}")
                delete_quietly(admin, f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}-tls")


def test_three_nodes_from_one_inventory_join_and_pods_spread_over_them(
    three_nodes: dict[str, str], admin: Client, registry: Registry, tmp_path: Path
) -> None:
    for name, ip in three_nodes.items():
        node = node_ready(admin, name)
        assert node is not None, f"node {name} is not Ready"
        assert {"type": "InternalIP", "address": ip} in node["status"]["addresses"]
        csr = admin.get(f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}-tls")
        assert csr["status"].get("certificate"), f"serving CSR of {name} was not approved and signed"

    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((ROOT / "tests" / "modules" / "hello_loop.wat").read_text()))
    image = f"{registry.host}/{unique('spread')}:v1"
    push_module(image, wasm, insecure_registries={registry.host})
    label = unique("spread")
    names = list(three_nodes)
    pods = []
    for index in range(3):
        pod = f"{label}-{index}"
        admin.post(
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": {"app": label}},
                "spec": {
                    "containers": [{"name": "hello", "image": image}],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": names,
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"app": label}},
                        }
                    ],
                    "tolerations": [
                        {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi"}
                    ],
                },
            },
        )
        pods.append(pod)
    try:

        def running_on() -> set[str] | None:
            placed = set()
            for pod in pods:
                status = admin.get(f"/api/v1/namespaces/default/pods/{pod}")
                if status.get("status", {}).get("phase") != "Running":
                    return None
                placed.add(status["spec"]["nodeName"])
            return placed

        assert wait_for("the pods to run", running_on, timeout=60) == set(names)
    finally:
        for pod in pods:
            delete_quietly(admin, f"/api/v1/namespaces/default/pods/{pod}?gracePeriodSeconds=0")
