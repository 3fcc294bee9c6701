"""What the node holds of each pod and container it runs: the API object, the states moved by
:mod:`wasmlet.pod.stages` and :mod:`wasmlet.pod.lifecycle`, and the handles of the running parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from wasmlet.kube.client import timestamp
from wasmlet.logs.writer import ContainerLogWriter
from wasmlet.pod import lifecycle, stages
from wasmlet.pod.prober import Health
from wasmlet.runtime.engine import ExitStatus


def pod_key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


class RunningModule(Protocol):
    """A module started by the runtime (:class:`wasmlet.runtime.engine.Execution`)."""

    @property
    def memory_base(self) -> int | None: ...

    def stop(self, grace: float) -> None: ...


@dataclass
class ContainerRun:
    """One container of a pod on this node."""

    name: str
    image: str
    life: lifecycle.Container = field(default_factory=lifecycle.Container)
    execution: RunningModule | None = None
    ended: ExitStatus | None = None  # set by the module's thread; the pod's worker applies it
    writer: ContainerLogWriter | None = None
    image_id: str = ""
    init: bool = False  # an init container: runs to completion before the containers start
    health: Health | None = None  # what its probes say of its current run
    killed_unhealthy: bool = False  # its current run is being killed for a failed probe

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
    ephemeral: dict[str, ContainerRun] = field(default_factory=dict)  # refused, never run (kubectl debug)
    start_time: str = field(default_factory=timestamp)
    ips: tuple[str, ...] = ()  # its pod IPs, given before its first container starts
    stage: stages.Stage = field(default_factory=stages.Admitting)  # moved only by stages.step, on its worker
    last_status: dict[str, Any] | None = None
    # Handed over by other threads for the pod's worker to apply: the API object was deleted
    # (the watch), the eviction manager's message.
    object_gone: bool = False
    eviction: str | None = None

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def described(self) -> str:
        """The pod as kubelet's messages name it (format.Pod): ``name_namespace(uid)``."""
        meta = self.pod["metadata"]
        return f"{meta['name']}_{meta['namespace']}({self.uid})"

    def all_containers(self) -> list[ContainerRun]:
        return [*self.init_containers.values(), *self.containers.values()]

    def restart_policy(self, crun: ContainerRun) -> str:
        """The pod's policy; init containers of an Always pod restart only on failure (kubelet)."""
        policy = str(self.pod["spec"].get("restartPolicy", "Always"))
        return "OnFailure" if crun.init and policy == "Always" else policy

    def restarts(self, crun: ContainerRun, exit_code: int) -> bool:
        """Whether a run of ``crun`` that ended with ``exit_code`` is followed by another: by the
        policy, or, killed for a failed probe, unless the policy is Never (kubelet's
        shouldRestartOnFailure)."""
        policy = self.restart_policy(crun)
        return should_restart(policy, exit_code) or (crun.killed_unhealthy and policy != "Never")


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def adopted(pod: dict[str, Any]) -> PodRun:
    """State for a pod seen for the first time; restart counts continue from its status."""
    status = pod.get("status") or {}
    statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
    statuses.update({s["name"]: s for s in status.get("initContainerStatuses") or []})

    def adopt(specs: list[dict[str, Any]], init: bool) -> dict[str, ContainerRun]:
        runs = {}
        for spec in specs:
            crun = ContainerRun(spec["name"], spec.get("image", ""), init=init)
            if spec["name"] in statuses:
                crun.life = lifecycle.resumed(statuses[spec["name"]])
            runs[spec["name"]] = crun
        return runs

    run = PodRun(
        pod,
        adopt(pod["spec"].get("containers") or [], False),
        adopt(pod["spec"].get("initContainers") or [], True),
    )
    if status.get("startTime"):
        run.start_time = status["startTime"]
    # Admitted by an earlier agent on this node: it reported containers or a later phase.
    phase = str(status.get("phase", ""))
    run.stage = stages.adopted(phase, bool(statuses) or phase in {"Running", "Succeeded", "Failed"})
    return run
