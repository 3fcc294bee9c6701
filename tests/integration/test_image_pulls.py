"""Image pulls on a real node: a registry that drips bytes holds up no other pod, and its pulls
end in ErrImagePull at --image-pull-timeout.

The dripping registry is tests/unit/hostile_registry.py run as its own process on loopback; the
node is a wasmlet of its own on 127.0.0.23, so the session's node is not involved.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Pods, Registry, delete_quietly, joined_node, push_wat, unique, wait_for

from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration

HOSTILE_REGISTRY = Path(__file__).resolve().parents[1] / "unit" / "hostile_registry.py"
PULL_TIMEOUT = 12  # seconds: --image-pull-timeout of the test's node
DRIP_INTERVAL = 2.0  # seconds between bytes: each read is far inside the 30 s per-request timeout
HANGING_PULLS = 5  # more than the 4 pod workers and the 4 pull threads


@pytest.fixture
def dripping_registry() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HOSTILE_REGISTRY), "drip", str(DRIP_INTERVAL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    host = proc.stdout.readline().strip()
    assert host.startswith("127.0.0.1:"), host
    try:
        yield host
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _waiting(pods: Pods, name: str) -> dict[str, Any]:
    return dict(pods.container(name).get("state", {}).get("waiting") or {})


def test_pulls_hanging_on_a_dripping_registry_hold_up_no_other_pod_and_end_at_the_deadline(
    admin: Client, registry: Registry, dripping_registry: str, tmp_path: Path
) -> None:
    image = push_wat(registry, "hello_loop", tmp_path)
    flags = (
        "--insecure-registries",
        f"{registry.host},{dripping_registry}",
        "--image-pull-timeout",
        f"{PULL_TIMEOUT}s",
    )
    with joined_node(admin, tmp_path, unique("pulls"), "127.0.0.23", *flags) as node:
        pods = Pods(admin, node)
        try:
            hanging = [
                pods.create(unique("drip"), f"{dripping_registry}/slow-{n}:v1") for n in range(HANGING_PULLS)
            ]
            wait_for(
                "every dripping pull to have begun",
                lambda: all(any(e.get("reason") == "Pulling" for e in pods.events(name)) for name in hanging),
                timeout=30,
            )
            created = time.monotonic()
            good = pods.create(unique("good"), image)
            pods.wait_state(good, "running", timeout=10)
            started_in = time.monotonic() - created
            for name in hanging:  # still pulling: Waiting in ContainerCreating, not failed yet
                assert _waiting(pods, name).get("reason", "ContainerCreating") == "ContainerCreating", name
            assert started_in < 10

            def failed_at_the_deadline(name: str) -> dict[str, Any] | None:
                waiting = _waiting(pods, name)
                if waiting.get("reason") in {"ErrImagePull", "ImagePullBackOff"}:
                    return waiting
                return None

            for name in hanging:
                waiting = wait_for(
                    f"pod {name} to fail its pull",
                    functools.partial(failed_at_the_deadline, name),
                    timeout=3 * PULL_TIMEOUT + 20,
                )
                message = waiting["message"]
                assert f"{dripping_registry}/slow-" in message
                assert f"the pull did not finish within --image-pull-timeout {PULL_TIMEOUT}s" in message
                failed = [e for e in pods.events(name) if e.get("reason") == "Failed"]
                assert failed and "--image-pull-timeout" in failed[0]["message"], failed
            assert pods.container(good).get("state", {}).get("running"), pods.container(good)
        finally:
            for name in pods.created:
                delete_quietly(admin, f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")
