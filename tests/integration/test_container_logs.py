"""Container logs on a real wasmlet node started with a small ``--container-log-max-size``: rotated
while a pod writes as fast as it can, still served by ``kubectl logs`` (``-f`` across rotations),
deleted with their pod, and deleted at start for pods that went while the node was down.

The node is this module's own, on 127.0.0.41, so the session's node keeps the default sizes.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    Cluster,
    Pods,
    Registry,
    joined_node,
    push_wat,
    tracked_pods,
    unique,
    wait_for,
)
from wasmlet_proc import WASMLET, WasmletNode

from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client

pytestmark = pytest.mark.integration

MAX_SIZE = 64 * 1024
MAX_FILES = 4
NODE_IP = "127.0.0.41"


@pytest.fixture(scope="module")
def node(
    cluster: Cluster, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WasmletNode]:
    admin = cluster.admin()
    tmp = tmp_path_factory.mktemp("container-logs")
    flags = ("--insecure-registries", registry.host, "--container-log-max-size", "64Ki")
    with joined_node(
        admin, tmp, unique("logrotation"), NODE_IP, *flags, "--container-log-max-files", str(MAX_FILES)
    ) as node:
        yield node
    admin.close()


@pytest.fixture
def node_pods(admin: Client, node: WasmletNode) -> Iterator[Pods]:
    yield from tracked_pods(admin, node)


def pod_log_dirs(node: WasmletNode, pod: str) -> list[Path]:
    return sorted((node.data_dir / "logs").glob(f"default_{pod}_*"))


def sizes(node: WasmletNode, pod: str) -> dict[Path, int]:
    """Every log file of the pod and its size (a file rotated away meanwhile is left out)."""
    found = {}
    for container in (c for d in pod_log_dirs(node, pod) for c in d.iterdir()):
        for path in container.iterdir():
            try:
                found[path] = path.stat().st_size
            except FileNotFoundError:
                continue
    return found


def within_bounds(node: WasmletNode, pod: str) -> dict[Path, int]:
    """The pod's log files and sizes, after checking them against the node's flags.

    A directory read while a file in it is renamed may show the file under both names, so a
    listing over the bound is taken again: the bound must hold in one of three.
    """
    for _look in range(3):
        files = sizes(node, pod)
        assert all(size <= MAX_SIZE for size in files.values()), files
        if len(files) <= MAX_FILES:
            break
    assert len(files) <= MAX_FILES, files
    assert all(size <= MAX_SIZE for size in files.values()), files
    return files


def test_a_pod_printing_as_fast_as_it_can_keeps_its_logs_within_max_size_and_max_files(
    node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    """counter.wat prints 200,000 lines (about 9 MB of log) as fast as it can; the node keeps at
    most MAX_FILES files of at most MAX_SIZE each the whole time, kubectl logs serves the newest
    file, and deleting the pod deletes its log directory."""
    name = node_pods.create(unique("flood"), push_wat(registry, "counter", tmp_path), restartPolicy="Never")

    def terminated() -> bool | None:
        within_bounds(node, name)  # checked at every look while it prints
        state = node_pods.container(name).get("state", {})
        return True if "terminated" in state else None

    wait_for(f"pod {name} to print everything", terminated, timeout=120, interval=0.05)
    assert node_pods.container(name)["state"]["terminated"]["exitCode"] == 0
    files = within_bounds(node, name)
    assert len(files) == MAX_FILES
    assert sum(files.values()) <= MAX_FILES * MAX_SIZE  # of ~9 MB written
    (current_file,) = (path for path in files if path.name == "0.log")
    records = [line.split(" ", 3) for line in current_file.read_text().splitlines()]

    lines = node_pods.logs(name).splitlines()
    # The current file, as the kubelet serves it.
    assert lines == [content for _ts, _stream, _tag, content in records]
    for stream in ("stdout", "stderr"):  # each stream's numbers consecutive, up to the last
        numbers = [int(content) for _ts, s, _tag, content in records if s == stream]
        assert numbers == list(range(100_000 - len(numbers), 100_000)), stream
    assert node_pods.logs(name, tailLines="1") == "99999\n"
    stamped = node_pods.logs(name, tailLines="1", timestamps="true")
    assert stamped.endswith("Z 99999\n")

    node_pods.admin.delete(f"/api/v1/namespaces/default/pods/{name}")
    wait_for(f"pod {name}'s log directory to be deleted", lambda: not pod_log_dirs(node, name), timeout=60)


def test_kubectl_logs_follow_goes_on_across_rotations_without_losing_or_repeating_a_line(
    node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path, cluster: Cluster
) -> None:
    """paced_counter.wat prints a numbered line every few ms; a follow request through the
    apiserver reads more lines than MAX_FILES files hold, so the file it started in is rotated
    and deleted under it, and still every number arrives once, in order."""
    name = node_pods.create(unique("paced"), push_wat(registry, "paced_counter", tmp_path))
    node_pods.wait_state(name, "running")
    lines_kept = MAX_FILES * MAX_SIZE // 120  # more than the files hold (records of ~127 bytes)
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    seen: list[int] = []
    with (
        httpx.Client(base_url=creds.server, verify=creds.ssl_context(), timeout=30) as http,
        http.stream("GET", f"/api/v1/namespaces/default/pods/{name}/log", params={"follow": "true"}) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            number = int(line.rsplit(" ", 1)[1])
            assert not seen or number == seen[-1] + 1, f"after {seen[-1]} came {number}"
            seen.append(number)
            if len(seen) % 200 == 0:  # now and then: a slow reader would fall behind the rotation
                within_bounds(node, name)
            if len(seen) > lines_kept:
                break
    files = within_bounds(node, name)
    assert len(files) == MAX_FILES
    on_disk = "".join(path.read_text() for path in files)
    assert f" {seen[0]}\n" not in on_disk  # the file it started in was deleted while it followed

    node_pods.admin.delete(f"/api/v1/namespaces/default/pods/{name}")
    wait_for(f"pod {name}'s log directory to be deleted", lambda: not pod_log_dirs(node, name), timeout=60)


def test_a_restarted_node_deletes_the_logs_of_pods_deleted_while_it_was_down(
    node: WasmletNode, node_pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    image = push_wat(registry, "hello_loop", tmp_path)
    kept = node_pods.create(unique("kept"), image)
    gone = node_pods.create(unique("gone"), image)
    for name in (kept, gone):
        node_pods.wait_state(name, "running")
    wait_for("both pods' logs", lambda: all("Hello" in node_pods.logs(n) for n in (kept, gone)), timeout=30)
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=10)
    node_pods.admin.delete(f"/api/v1/namespaces/default/pods/{gone}?gracePeriodSeconds=0")
    logs_dir = node.data_dir / "logs"
    ghost = logs_dir / f"default_ghost_{uuid.uuid4()}"
    (ghost / "app").mkdir(parents=True)
    (ghost / "app" / "0.log").write_text("2026-01-01T00:00:00Z stdout F left behind\n")
    (logs_dir / "not-a-pod").write_text("an operator's file\n")
    args = node.process.args
    assert isinstance(args, list)
    argv = [str(arg) for arg in args]
    assert argv[0] == WASMLET
    with (tmp_path / "restarted.out").open("wb") as out:
        node.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for(
        "the restarted node to delete the logs of pods it no longer has",
        lambda: not pod_log_dirs(node, gone) and not ghost.exists(),
        timeout=60,
    )
    assert (logs_dir / "not-a-pod").read_text() == "an operator's file\n"
    assert len(pod_log_dirs(node, kept)) == 1

    def new_output() -> bool:
        status, body = node_pods.admin.raw("GET", f"/api/v1/namespaces/default/pods/{kept}/log")
        return status == 200 and b"Hello" in body

    wait_for(f"pod {kept} to run and print again", new_output, timeout=60)
