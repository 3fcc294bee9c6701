"""Pod lifecycle and admission on a real wasmlet node: init containers in order, phases as
kubelet computes them, activeDeadlineSeconds, memory limits (OOMKilled), and pods that do not
belong on a wasm node (a DaemonSet that tolerates everything, an ordinary container image, a
pod that does not fit) failed at once with the reason."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from helpers import Pods, Registry, delete_quietly, push_wat, unique, wait_for

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration


def wait_phase(pods: Pods, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = pods.get(name)
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_for(f"pod {name} to be {phase}", probe, timeout=timeout)


def step(name: str, image: str, value: str) -> dict[str, Any]:
    return {"name": name, "image": image, "env": [{"name": "STEP", "value": value}]}


def test_init_containers_run_in_order_before_the_containers(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    printenv = push_wat(registry, "printenv", tmp_path)
    name = unique("init")
    pods.create(
        name,
        printenv,
        {"env": [{"name": "STEP", "value": "main"}]},
        restartPolicy="Never",
        initContainers=[step("first", printenv, "1"), step("second", printenv, "2")],
    )
    pod = wait_phase(pods, name, "Succeeded")
    init = {s["name"]: s["state"]["terminated"] for s in pod["status"]["initContainerStatuses"]}
    main = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert [s["name"] for s in pod["status"]["initContainerStatuses"]] == ["first", "second"]
    assert init["first"]["reason"] == init["second"]["reason"] == "Completed"
    assert init["first"]["finishedAt"] <= init["second"]["startedAt"] <= init["second"]["finishedAt"]
    assert init["second"]["finishedAt"] <= main["startedAt"]
    assert pods.logs(name, container="first") == "STEP=1\n"
    assert pods.logs(name, container="second") == "STEP=2\n"
    assert pods.logs(name) == "STEP=main\n"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Initialized"] == "True"


def test_a_failed_init_container_fails_a_never_pod_and_the_containers_never_start(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    name = unique("initfail")
    init = [{"name": "setup", "image": push_wat(registry, "exit3", tmp_path)}]
    pods.create(name, push_wat(registry, "hello_loop", tmp_path), restartPolicy="Never", initContainers=init)
    pod = wait_phase(pods, name, "Failed")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["Initialized"]["status"] == "False"
    assert conditions["Initialized"]["reason"] == "ContainersNotInitialized"


def test_a_failed_init_container_of_an_always_pod_is_retried(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    name = unique("initretry")
    init = [{"name": "setup", "image": push_wat(registry, "exit3", tmp_path)}]
    pods.create(name, push_wat(registry, "hello_loop", tmp_path), initContainers=init)

    def restarted() -> dict[str, Any] | None:
        status = pods.get(name)["status"]
        init_status = (status.get("initContainerStatuses") or [{}])[0]
        return status if init_status.get("restartCount", 0) >= 1 else None

    status = wait_for(f"init container of {name} restarted", restarted, timeout=40)
    assert status["phase"] == "Pending"
    assert status["initContainerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 3


def test_active_deadline_fails_the_pod(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    name = unique("deadline")
    pods.create(name, push_wat(registry, "hello_loop", tmp_path), activeDeadlineSeconds=2)
    pod = wait_phase(pods, name, "Failed", timeout=30)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    assert "terminated" in pod["status"]["containerStatuses"][0]["state"]


def test_a_module_over_its_memory_limit_is_oomkilled(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    name = unique("grow")
    container = {"resources": {"limits": {"memory": "8Mi"}}}
    pods.create(name, push_wat(registry, "grow", tmp_path), container, restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated")
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] != 0
    assert pods.get(name)["status"]["phase"] == "Failed"


def test_a_pod_that_does_not_fit_is_rejected_at_once(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    name = unique("huge")
    container = {"resources": {"requests": {"memory": "1Pi"}}}
    # nodeName skips the scheduler, which would otherwise keep the pod Pending.
    pods.create(name, push_wat(registry, "hello_loop", tmp_path), container, nodeName=pods.node.name)
    pod = wait_phase(pods, name, "Failed", timeout=15)
    assert pod["status"]["reason"] == "OutOfmemory"
    assert pod["status"]["message"].startswith(
        "Pod was rejected: Node didn't have enough resource: memory, requested: 1125899906842624, used: "
    )
    assert "containerStatuses" not in pod["status"]


@pytest.fixture
def daemonset(admin: Client) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        delete_quietly(admin, f"/apis/apps/v1/namespaces/default/daemonsets/{name}")


def test_a_daemonset_pod_that_tolerates_everything_fails_as_not_wasm(
    pods: Pods, admin: Client, registry: Registry, daemonset: list[str], tmp_path: Path
) -> None:
    name = unique("kube-proxy")
    labels = {"app": name}
    admin.post(
        "/apis/apps/v1/namespaces/default/daemonsets",
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": pods.node.name},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [
                            {"name": "proxy", "image": push_wat(registry, "hello_loop", tmp_path)}
                        ],
                    },
                },
            },
        },
    )
    daemonset.append(name)

    def failed_pod() -> dict[str, Any] | None:
        items = admin.get("/api/v1/namespaces/default/pods", {"labelSelector": f"app={name}"})["items"]
        return next((p for p in items if p.get("status", {}).get("phase") == "Failed"), None)

    pod = wait_for(f"a pod of DaemonSet {name} to fail", failed_pod, timeout=30)
    assert pod["status"]["reason"] == "NotWasm"
    assert "kubernetes.io/arch=wasm32-wasi" in pod["status"]["message"]


def push_raw(registry: Registry, layer: bytes, layer_type: str, config: bytes, config_type: str) -> str:
    """Push one manifest with one layer as it is, bypassing wasmlet's own checks."""
    repo = unique("raw")
    with httpx.Client(base_url=f"http://{registry.host}") as http:

        def blob(content: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(content).hexdigest()
            location = http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
            url = httpx.URL(location).copy_merge_params({"digest": digest})  # keeps the upload's _state
            http.put(url, content=content).raise_for_status()
            return digest

        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type, "digest": blob(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": blob(layer), "size": len(layer)}],
        }
        http.put(
            f"/v2/{repo}/manifests/v1",
            content=json.dumps(manifest),
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ).raise_for_status()
    return f"{registry.host}/{repo}:v1"


def push_container_image(registry: Registry) -> str:
    """An ordinary (Linux) container image: an OCI image config and a gzipped tar layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"#!/bin/sh\necho hello\n"
        info = tarfile.TarInfo("hello.sh")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    return push_raw(
        registry,
        gzip.compress(buf.getvalue()),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        config,
        "application/vnd.oci.image.config.v1+json",
    )


def test_an_ordinary_container_image_fails_the_pod_as_not_wasm(pods: Pods, registry: Registry) -> None:
    name = unique("nginx")
    image = push_container_image(registry)
    pods.create(name, image)
    pod = wait_phase(pods, name, "Failed", timeout=15)
    assert pod["status"]["reason"] == "NotWasm"
    assert pod["status"]["message"].startswith(
        f'Pod was rejected: image "{image}" is not a WebAssembly module'
    )
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in pod["status"]["message"]


def push_module_bytes(registry: Registry, module: bytes | bytearray) -> str:
    return push_raw(registry, bytes(module), "application/wasm", b"{}", "application/vnd.wasm.config.v0+json")


@pytest.mark.parametrize(
    ("module", "cause"),
    [
        (b"this is not WebAssembly", "not a WebAssembly binary"),
        (wasmtime.wat2wasm("(module)"), "no `_start` function"),
        (
            wasmtime.wat2wasm('(module (import "env" "launch_missiles" (func)) (func (export "_start")))'),
            "launch_missiles",
        ),
    ],
    ids=["garbage", "no-start", "unknown-import"],
)
def test_a_module_that_cannot_run_is_a_create_container_error(
    pods: Pods, registry: Registry, module: bytes, cause: str
) -> None:
    name = unique("broken")
    pods.create(name, push_module_bytes(registry, module))
    waiting = pods.wait_state(name, "waiting", "CreateContainerError")
    assert cause in waiting["message"]
    assert pods.get(name)["status"]["phase"] == "Pending"
    pods.wait_event(name, "Failed", f"Error: {waiting['message']}")


def test_a_module_whose_initial_memory_exceeds_its_limit_is_oomkilled_without_running(
    pods: Pods, registry: Registry
) -> None:
    name = unique("enormous")
    image = push_module_bytes(registry, wasmtime.wat2wasm('(module (memory 4096) (func (export "_start")))'))
    pods.create(name, image, {"resources": {"limits": {"memory": "64Mi"}}}, restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated")
    assert (terminated["exitCode"], terminated["reason"]) == (128, "OOMKilled")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_limits_cpu_throttles_a_spinning_module(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    name = unique("spin")
    pods.create(name, push_wat(registry, "spin", tmp_path), {"resources": {"limits": {"cpu": "200m"}}})
    pods.wait_state(name, "running")
    pid = pods.node.process.pid
    before, start = _cpu_seconds(pid), time.monotonic()
    time.sleep(3)
    cores = (_cpu_seconds(pid) - before) / (time.monotonic() - start)
    # The node's whole process: the module's 0.2 cores plus the agent's own (small) share.
    assert cores < 0.35, cores
    assert cores > 0.1, cores
