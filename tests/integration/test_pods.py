"""Wasm pods on a real wasmlet node: pull from the real registry, run on wasmtime, report
status and events, serve `kubectl logs` through the real apiserver, stop on delete."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import wasmtime
from helpers import MODULES, Cluster, Pods, Registry, approve_csr, delete_quietly, push_wat, unique, wait_for
from wasmlet_proc import WASMLET, running_node

from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client
from wasmlet.oci.credentials import RegistryAuth
from wasmlet.oci.push import push_module

pytestmark = pytest.mark.integration


def test_seed_story_hello_world_runs_and_kubectl_logs_shows_it(
    pods: Pods, registry: Registry, tmp_path: Path, cluster: Cluster
) -> None:
    image = push_wat(registry, "hello_loop", tmp_path)
    name = pods.create(unique("simpleserver"), image)
    running = pods.wait_state(name, "running")
    assert running["startedAt"]
    pod = pods.get(name)
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["hostIP"] == "127.0.0.2"
    assert pods.container(name)["ready"] is True
    wait_for("two lines of output", lambda: pods.logs(name).count("Hello, World!\n") >= 2, timeout=15)
    assert pods.logs(name, tailLines="1") == "Hello, World!\n"
    stamped = pods.logs(name, timestamps="true", tailLines="1")
    assert stamped.endswith(" Hello, World!\n")
    assert stamped[:4].isdigit() and "T" in stamped.split(" ")[0]
    # kubectl logs -f: a streaming request sees a new line arrive.
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    with (
        httpx.Client(base_url=creds.server, verify=creds.ssl_context(), timeout=15) as http,
        http.stream(
            "GET", f"/api/v1/namespaces/default/pods/{name}/log", params={"follow": "true", "tailLines": "0"}
        ) as resp,
    ):
        assert resp.status_code == 200
        start = time.monotonic()
        for line in resp.iter_lines():
            assert line == "Hello, World!"
            break
        assert time.monotonic() - start < 5
    for reason in ("Pulling", "Pulled", "Created", "Started"):
        pods.wait_event(name, reason)


def test_module_exit_code_is_reported(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    image = push_wat(registry, "exit3", tmp_path)
    name = pods.create(unique("exit3"), image, restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated")
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    wait_for("phase Failed", lambda: pods.get(name)["status"]["phase"] == "Failed")
    assert pods.logs(name) == "giving up 3\n"


def test_a_module_printing_fast_on_both_streams_has_every_line_in_its_log(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    """counter.wat prints 0..99999 on stdout and on stderr, a line each, as fast as it can. When the
    container is reported terminated its log holds every line once per stream, each stream in order."""
    image = push_wat(registry, "counter", tmp_path)
    name = pods.create(unique("counter"), image, restartPolicy="Never")
    assert pods.wait_state(name, "terminated")["exitCode"] == 0
    lines = pods.logs(name).splitlines()
    assert len(lines) == 200_000
    expected = {"stdout": 0, "stderr": 0}  # the next number of each stream
    for line in lines:  # the log interleaves two increasing sequences
        stream = next((s for s, n in expected.items() if str(n) == line), None)
        assert stream is not None, f"{line!r} is out of order (next: {expected})"
        expected[stream] += 1
    assert expected == {"stdout": 100_000, "stderr": 100_000}


def test_trapping_module_reports_error_with_the_trap(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    image = push_wat(registry, "trap", tmp_path, media="cncf")
    name = pods.create(unique("trap"), image, restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated")
    assert terminated["reason"] == "Error"
    assert terminated["exitCode"] != 0
    assert "unreachable" in terminated.get("message", "")


def test_crashing_module_backs_off_and_restarts(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    image = push_wat(registry, "exit3", tmp_path)
    name = pods.create(unique("crash"), image, restartPolicy="Always")
    waiting = pods.wait_state(name, "waiting", "CrashLoopBackOff")
    assert "back-off" in waiting["message"]
    status = pods.container(name)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    wait_for("a restart", lambda: pods.container(name).get("restartCount", 0) >= 1, timeout=30)
    assert pods.logs(name, previous="true") == "giving up 3\n"


def test_missing_tag_gives_err_image_pull_then_back_off(pods: Pods, registry: Registry) -> None:
    image = f"{registry.host}/{unique('nothing')}:v9"
    name = pods.create(unique("missing"), image)
    waiting = pods.wait_state(name, "waiting", "ErrImagePull", timeout=30)
    assert registry.host in waiting["message"]
    back_off = pods.wait_state(name, "waiting", "ImagePullBackOff", timeout=40)
    assert image in back_off["message"]
    pods.wait_event(name, "Failed")


@pytest.mark.parametrize(
    ("module", "grace"),
    [("spin", 3), ("hello_loop", 2)],
    ids=["spinning-in-a-loop", "sleeping-in-poll_oneoff"],
)
def test_deleting_a_running_module_finishes_within_the_grace_period(
    pods: Pods, registry: Registry, tmp_path: Path, admin: Client, *, module: str, grace: int
) -> None:
    image = push_wat(registry, module, tmp_path)
    name = pods.create(unique(module.replace("_", "-")), image, terminationGracePeriodSeconds=grace)
    pods.wait_state(name, "running")
    start = time.monotonic()
    admin.delete(f"/api/v1/namespaces/default/pods/{name}")

    def gone() -> bool:
        try:
            pods.get(name)
        except ApiError as exc:
            return exc.status == 404
        return False

    wait_for(f"pod {name} to disappear", gone, timeout=15)
    assert time.monotonic() - start < grace + 2
    pods.wait_event(name, "Killing")


def test_killed_wasmlet_runs_its_pods_again_with_restart_counts_and_old_logs(
    cluster: Cluster, admin: Client, registry: Registry, tmp_path: Path
) -> None:
    node_name = unique("restart-pods")
    with running_node(
        admin, tmp_path, node_name, "127.0.0.3", 10251, "--insecure-registries", registry.host
    ) as node:
        wait_for("the approval message", lambda: "certificate approve" in node.log(), timeout=60)
        approve_csr(admin, f"{node_name}-tls")
        wait_for("the kubelet API to listen", lambda: "kubelet API on https://" in node.log(), timeout=30)
        pods = Pods(admin, node)
        name = pods.create(unique("survivor"), push_wat(registry, "hello_loop", tmp_path))
        try:
            pods.wait_state(name, "running")
            wait_for("output", lambda: "Hello, World!" in pods.logs(name), timeout=15)
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)
            again = subprocess.Popen(
                [
                    WASMLET,
                    "--node-name",
                    node_name,
                    "--hostname",
                    node_name,
                    "--node-ip",
                    "127.0.0.3",
                    "--port",
                    "10251",
                    "--data-dir",
                    str(node.data_dir),
                    "--insecure-registries",
                    registry.host,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            node.process = again  # so the fixture stops this one
            status = wait_for(
                "the pod to run again",
                lambda: (
                    (s := pods.container(name)).get("restartCount") == 1 and "running" in s["state"] and s
                ),
                timeout=30,
            )
            assert status["ready"] is True
            assert pods.logs(name, previous="true").startswith("Hello, World!\n")
            wait_for("output of the new run", lambda: "Hello, World!" in pods.logs(name), timeout=15)
            listed = admin.get("/api/v1/pods", {"fieldSelector": f"spec.nodeName={node_name}"})["items"]
            assert [p["metadata"]["name"] for p in listed] == [name]
        finally:
            delete_quietly(admin, f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")
            delete_quietly(admin, f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{node_name}-tls")


def _pull_secret(admin: Client, registry: Registry, name: str, password: str) -> None:
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}})
    admin.post(
        "/api/v1/namespaces/default/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        },
    )


def test_private_registry_works_through_image_pull_secrets(
    pods: Pods, secure_registry: Registry, tmp_path: Path, admin: Client
) -> None:
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((MODULES / "hello_loop.wat").read_text()))
    image = f"{secure_registry.host}/{unique('private')}:v1"
    push_module(
        image,
        wasm,
        auth=RegistryAuth(secure_registry.username, secure_registry.password),
        ca_file=secure_registry.ca,
    )
    secret = unique("regcred")
    _pull_secret(admin, secure_registry, secret, secure_registry.password or "")
    try:
        name = pods.create(unique("private"), image, imagePullSecrets=[{"name": secret}])
        pods.wait_state(name, "running")
        without = pods.create(unique("nocreds"), image)
        waiting = pods.wait_state(without, "waiting", "ErrImagePull", timeout=30)
        assert secure_registry.host in waiting["message"]
        assert "unauthorized" in waiting["message"].lower() or "authentication" in waiting["message"].lower()
        # Stored on the node now, but only the credentials that pulled it may use it from the store
        # (kubelet's KubeletEnsureSecretPulledImages): IfNotPresent without them pulls, and fails.
        stored = {"imagePullPolicy": "IfNotPresent"}
        sneaky = pods.create(unique("sneaky"), image, stored)
        waiting = pods.wait_state(sneaky, "waiting", "ErrImagePull", timeout=30)
        assert "unauthorized" in waiting["message"].lower() or "authentication" in waiting["message"].lower()
        never = pods.create(unique("never"), image, {"imagePullPolicy": "Never"})
        waiting = pods.wait_state(never, "waiting", "ErrImageNeverPull", timeout=30)
        assert "not present with pull policy of Never" in waiting["message"]
        holder = pods.create(unique("holder"), image, stored, imagePullSecrets=[{"name": secret}])
        pods.wait_state(holder, "running")
        present = f'Container image "{image}" already present on machine and can be accessed by the pod'
        pods.wait_event(holder, "Pulled", present)
    finally:
        delete_quietly(admin, f"/api/v1/namespaces/default/secrets/{secret}")
