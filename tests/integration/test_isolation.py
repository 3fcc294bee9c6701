"""A pod's faults stay in the pod, on a real node: a module that opens files without end gets
"too many open files" at its own cap while its neighbours keep running, ``kubectl logs`` keeps
answering and the Lease is renewed; a module with no memory limit is stopped at the node's default,
and one refused a single large grow under its limit is OOMKilled; a module racing its siblings'
subPath mounts never gets them the host's files."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

from helpers import Pods, Registry, push_wat, unique, wait_for

from wasmlet.kube.client import Client

HOLD = 25_000  # files the attacker's module asks for: more than this host's limit of 20,000
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _renewed(admin: Client, node: str) -> dt.datetime:
    lease = admin.get(f"{LEASES}/{node}")
    return dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))


def test_a_pod_opening_files_without_end_is_capped_and_its_neighbours_are_unharmed(
    pods: Pods, admin: Client, fsprobe: str, registry: Registry, tmp_path: Path
) -> None:
    """Seen by an attacker: 25,000 open files took the node to its limit; other pods' logs failed,
    a new pod got "no output pipes: Too many open files", the Lease was missed once."""
    neighbour = pods.create(unique("neighbour"), push_wat(registry, "hello_loop", tmp_path))
    pods.wait_state(neighbour, "running")
    before = _renewed(admin, pods.node.name)
    hog = unique("hog")
    pods.create(
        hog,
        fsprobe,
        {"args": ["hold", "/scratch/f", str(HOLD)], "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]},
        volumes=[{"name": "s", "emptyDir": {}}],
    )
    pods.wait_state(hog, "running")
    held = wait_for("the hog to report", lambda: pods.logs(hog).strip(), timeout=60)
    assert held == "held 1024: open /scratch/f: Too many open files", held  # its own cap, not the node's
    assert pods.container(hog)["state"].get("running") is not None  # it holds them and lives on

    assert pods.logs(neighbour)  # kubectl logs of another pod answers
    newcomer = pods.create(unique("newcomer"), push_wat(registry, "exit3", tmp_path), restartPolicy="Never")
    terminated = pods.wait_state(newcomer, "terminated")
    assert terminated["exitCode"] == 3, terminated  # a new pod gets its output pipes and runs
    wait_for("the Lease to be renewed", lambda: _renewed(admin, pods.node.name) > before, timeout=60)
    assert pods.container(neighbour)["state"].get("running") is not None


def test_a_module_with_no_memory_limit_is_oomkilled_at_the_nodes_default(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    """Seen by an attacker: with no limit a module grew to 4 GiB inside the node's one process."""
    name = unique("grow")
    pods.create(name, push_wat(registry, "grow", tmp_path), restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated", timeout=90)
    assert terminated["reason"] == "OOMKilled", terminated


def test_one_large_grow_refused_far_below_the_limit_is_oomkilled(
    pods: Pods, registry: Registry, tmp_path: Path
) -> None:
    """64 MiB asked at once under a 16Mi limit, one page used: the refusal makes it OOMKilled
    (it was reported as Error while the reason was guessed from how full the memory was)."""
    name = unique("grow-once")
    container = {"resources": {"limits": {"memory": "16Mi"}}}
    pods.create(name, push_wat(registry, "grow_once", tmp_path), container, restartPolicy="Never")
    terminated = pods.wait_state(name, "terminated")
    assert (terminated["exitCode"], terminated["reason"]) == (134, "OOMKilled"), terminated


READERS = 8  # subPath mounts per pod, made while the flipper runs
RACES = 3  # pods
INSIDE = "/d/etc/hostname: inside"


def _container(name: str, image: str, *args: str, mount: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "image": image, "args": list(args), "volumeMounts": [{"name": "shared", **mount}]}


def _readers_done(pods: Pods, name: str) -> dict[str, dict[str, Any]] | None:
    """Each reader's state once every reader has ended or been refused its mount, else None."""
    statuses = pods.get(name).get("status", {}).get("containerStatuses") or []
    states = {s["name"]: s.get("state", {}) for s in statuses if s["name"].startswith("reader-")}
    refused = {"CreateContainerConfigError"}
    done = all("terminated" in st or st.get("waiting", {}).get("reason") in refused for st in states.values())
    return states if len(states) == READERS and done else None


def test_a_module_flipping_a_sub_path_to_a_symlink_never_shows_its_siblings_the_host(
    pods: Pods, fsprobe: str
) -> None:
    """Seen by an attacker (CVE-2017-1002101's class): a container swapping directory ``d`` of a
    shared emptyDir for a symlink to the host's ``/`` made 1-2 of 10 sibling containers with
    ``subPath: d`` read the host's /etc/hostname. Every reader must read the volume's own file."""
    host_name = Path("/etc/hostname").read_text().strip()
    whole, sub_path = {"mountPath": "/shared"}, {"mountPath": "/d", "subPath": "d"}
    names = []
    for _race in range(RACES):
        flipper = _container("flip", fsprobe, "flip", "/shared/d", mount=whole)
        flipper["resources"] = {"limits": {"cpu": "300m"}}  # it spins: leave the node a core
        readers = [
            _container(f"reader-{i}", fsprobe, "cat", "/d/etc/hostname", mount=sub_path)
            for i in range(READERS)
        ]
        names.append(
            pods.create(
                unique("race"),
                fsprobe,
                restartPolicy="Never",
                volumes=[{"name": "shared", "emptyDir": {}}],
                initContainers=[_container("plant", fsprobe, "plant", "/shared/d", mount=whole)],
                containers=[flipper, *readers],
            )
        )
    read: list[str] = []
    for name in names:
        states = wait_for(f"the readers of {name}", functools.partial(_readers_done, pods, name), timeout=120)
        assert pods.logs(name, container="flip") == "flipping\n"  # the race was on
        read += [pods.logs(name, container=c).strip() for c, state in states.items() if "terminated" in state]
    escaped = [line for line in read if line != INSIDE and ": error: " not in line]
    assert not escaped, f"a reader saw outside its volume (the host is {host_name!r}): {escaped}"
    assert INSIDE in read  # mounts were made while it flipped
