"""Where users compare a wasmlet node with a kubelet (``kubectl describe``, ``kubectl get -w``):
restart timing, waiting reasons and the events that explain them, against a real node. Each
expectation is kubelet v1.36's, named in the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Pods, Registry, push_wat, unique, wait_for

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration


def described(pods: Pods, name: str) -> str:
    """The pod as kubelet's messages name it (format.Pod)."""
    pod = pods.get(name)
    return f"{name}_{pods.namespace}({pod['metadata']['uid']})"


def test_the_first_restart_is_immediate_and_back_off_starts_from_the_second(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    # kuberuntime_manager.go doBackOff: no back-off entry at the first exit (restart at once),
    # a 10 s one from the second.
    image = push_wat(registry, "exit3", tmp_path)
    name = pods.create(unique("crash"), image, restartPolicy="Always")
    waiting = pods.wait_state(name, "waiting", "CrashLoopBackOff", timeout=30)
    container = name.rsplit("-", 1)[0]
    pod = described(pods, name)
    assert waiting["message"] == f"back-off 10s restarting failed container={container} pod={pod}"
    assert pods.container(name)["restartCount"] == 1  # the first restart did not wait
    pods.wait_event(name, "BackOff", f"Back-off restarting failed container {container} in pod {pod}")


def test_a_crash_loop_with_exit_code_0_records_back_off(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    image = push_wat(registry, "printenv", tmp_path)
    name = pods.create(unique("done"), image, restartPolicy="Always")
    pods.wait_state(name, "waiting", "CrashLoopBackOff", timeout=30)
    assert pods.container(name)["lastState"]["terminated"]["exitCode"] == 0
    pod, container = described(pods, name), name.rsplit("-", 1)[0]
    pods.wait_event(name, "BackOff", f"Back-off restarting failed container {container} in pod {pod}")


def test_each_start_records_pulled_and_a_stored_image_is_already_present(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    image = push_wat(registry, "exit3", tmp_path)
    name = pods.create(unique("pulled"), image, {"imagePullPolicy": "IfNotPresent"}, restartPolicy="Always")
    pods.wait_state(name, "waiting", "CrashLoopBackOff", timeout=30)
    messages = [e["message"] for e in pods.events(name) if e["reason"] == "Pulled"]
    assert any(
        m.startswith(f'Successfully pulled image "{image}" in ') and "Image size: " in m for m in messages
    )
    present = f'Container image "{image}" already present on machine and can be accessed by the pod'
    pods.wait_event(name, "Pulled", present)  # the restart


def test_an_init_container_not_started_yet_is_pod_initializing(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    slow, quick = push_wat(registry, "sleep10", tmp_path), push_wat(registry, "exit3", tmp_path)
    name = unique("init")
    init = [{"name": "first", "image": slow}, {"name": "second", "image": quick}]
    pods.create(name, quick, initContainers=init, restartPolicy="Never")

    def second_waits() -> dict[str, Any] | None:
        statuses = pods.get(name).get("status", {}).get("initContainerStatuses") or []
        first: dict[str, Any] = next((s for s in statuses if s["name"] == "first"), {})
        second = next((s for s in statuses if s["name"] == "second"), None)
        return second if "running" in first.get("state", {}) else None

    second = wait_for("the first init container to run", second_waits, timeout=30)
    assert second["state"] == {"waiting": {"reason": "PodInitializing"}}  # kubelet's, not ContainerCreating


def test_a_refused_field_says_why_in_an_event(pods: Pods, registry: Registry, tmp_path: Path) -> None:
    image = push_wat(registry, "exit3", tmp_path)
    name = pods.create(unique("tty"), image, {"tty": True})
    waiting = pods.wait_state(name, "waiting", "CreateContainerConfigError")
    assert "tty is not supported by wasmlet" in waiting["message"]
    pods.wait_event(name, "Failed", f"Error: {waiting['message']}")


def test_kubectl_debug_gets_a_waiting_status_with_a_message_and_an_event(
    pods: Pods, registry: Registry, tmp_path: Path, admin: Client
) -> None:
    image = push_wat(registry, "hello_loop", tmp_path)
    name = pods.create(unique("debugged"), image)
    pods.wait_state(name, "running")
    pod = pods.get(name)
    debugger = {"name": "debugger-1", "image": "busybox", "targetContainerName": name.rsplit("-", 1)[0]}
    pod["spec"]["ephemeralContainers"] = [debugger]  # what kubectl debug sends
    admin.request("PUT", f"{pods.path}/pods/{name}/ephemeralcontainers", pod)

    def waiting() -> dict[str, Any] | None:
        for status in pods.get(name).get("status", {}).get("ephemeralContainerStatuses") or []:
            if status["name"] == "debugger-1" and "waiting" in status["state"]:
                return dict(status["state"]["waiting"])
        return None

    state = wait_for("the ephemeral container's status", waiting, timeout=30)
    assert state["reason"] == "CreateContainerConfigError"
    assert "ephemeral containers are not supported by wasmlet" in state["message"]
    pods.wait_event(name, "Failed", f"Error: {state['message']}")
    assert pods.get(name)["status"]["phase"] == "Running"


def test_new_pods_record_no_failed_mount_for_the_token_binding_race(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    # Every pod mounts its service account token (kube-api-access). A burst of new pods makes
    # the first TokenRequest race NodeRestriction's view of the binding (before the quiet retry,
    # 3 of 12 healthy pods showed a FailedMount).
    image = push_wat(registry, "hello_loop", tmp_path)
    names = [pods.create(unique(f"token{i}"), image) for i in range(10)]
    for name in names:
        pods.wait_state(name, "running")
    assert all(any(v.get("projected") for v in pods.get(n)["spec"]["volumes"]) for n in names)
    failed = {n: e["message"] for n in names for e in pods.events(n) if e["reason"] == "FailedMount"}
    assert failed == {}
