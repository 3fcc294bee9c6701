"""What the node holds of each pod and container it runs: the API object and the state moved by
the lifecycle (:mod:`wasmlet.pod.lifecycle`), plus the handles of the running parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmlet.kube.client import timestamp
from wasmlet.logs.writer import ContainerLogWriter
from wasmlet.oci.store import PulledModule
from wasmlet.pod import lifecycle
from wasmlet.pod.admission import Rejection
from wasmlet.pod.image import PullTicket
from wasmlet.pod.volumes.pod_volumes import PodVolumes
from wasmlet.runtime.engine import Execution, ExitStatus


def pod_key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


@dataclass
class ContainerRun:
    """One container of a pod on this node."""

    name: str
    image: str
    life: lifecycle.Container = field(default_factory=lifecycle.Container)
    execution: Execution | None = None
    ended: ExitStatus | None = None  # set by the module's thread; the pod's worker applies it
    writer: ContainerLogWriter | None = None
    image_id: str = ""
    pull: PullTicket[tuple[PulledModule, Path]] | None = None  # the pull under way
    init: bool = False  # an init container: runs to completion before the containers start

    @property
    def running(self) -> bool:
        return isinstance(self.life.state, lifecycle.Running)

    @property
    def exit(self) -> lifecycle.Terminated | None:
        """How its last run ended; None before a run and while one runs."""
        return self.life.exited


@dataclass
class PodRun:
    pod: dict[str, Any]
    containers: dict[str, ContainerRun]
    init_containers: dict[str, ContainerRun] = field(default_factory=dict)
    start_time: str = field(default_factory=timestamp)
    deleted: bool = False
    killing: bool = False
    finished: bool = False
    last_status: dict[str, Any] | None = None
    admitted: bool = False  # taken by this node (admission is decided once)
    volumes: PodVolumes | None = None  # set up once admitted; None until then
    mounted: bool = False
    mount_retry: float = 0.0
    next_volume_check: float = 0.0  # monotonic time of the next refresh or eviction check
    rejection: Rejection | None = None  # why the pod failed as a whole (refused, deadline, not wasm)
    evicted_for: str | None = None  # the eviction manager's message, until the sync evicts the pod
    disrupted: bool = False  # evicted for node pressure: the pod gets the DisruptionTarget condition

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    def all_containers(self) -> list[ContainerRun]:
        return [*self.init_containers.values(), *self.containers.values()]

    def restart_policy(self, crun: ContainerRun) -> str:
        """The pod's policy; init containers of an Always pod restart only on failure (kubelet)."""
        policy = str(self.pod["spec"].get("restartPolicy", "Always"))
        return "OnFailure" if crun.init and policy == "Always" else policy


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)
