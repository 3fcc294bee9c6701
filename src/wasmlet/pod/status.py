"""The pod status a kubelet would report: phase, conditions and container states, derived from
what the node holds (:mod:`wasmlet.pod.run`), never stored twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wasmlet.kube.client import ApiError, Client, timestamp
from wasmlet.pod import lifecycle, stages
from wasmlet.pod.run import ContainerRun, PodRun


def _container_status(run: PodRun, crun: ContainerRun) -> dict[str, Any]:
    life = crun.life
    state = life.state.to_api()
    if run.init_containers and life.state == lifecycle.Waiting():
        # kubelet's default waiting state when the pod has init containers, for every container
        # with nothing else to say (convertToAPIContainerStatuses' defaultWaitingState).
        state = {"waiting": {"reason": "PodInitializing"}}
    return {
        "name": crun.name,
        "state": state,
        "lastState": life.last_state.to_api() if life.last_state is not None else {},
        "ready": "running" in state and (crun.health is None or crun.health.ready),
        "started": "running" in state and (crun.health is None or crun.health.started),
        "restartCount": life.restart_count,
        "image": crun.image,
        "imageID": crun.image_id,
        **({"containerID": f"wasmlet://{run.uid}/{crun.name}"} if life.ever_started else {}),
    }


def _init_progress(statuses: list[dict[str, Any]]) -> tuple[int, int]:
    """(pending, failed) init containers, counted as kubelet's getPhase counts them."""
    pending = failed = 0
    for status in statuses:
        state, last = status["state"], status["lastState"]
        if "terminated" in state:
            failed += state["terminated"].get("exitCode", 1) != 0
        elif "waiting" in state and "terminated" in last:
            failed += last["terminated"].get("exitCode", 1) != 0
        else:
            pending += 1
    return pending, failed


def phase_of(policy: str, init: list[dict[str, Any]], containers: list[dict[str, Any]]) -> str:
    """kubelet's getPhase (pkg/kubelet/kubelet_pods.go) over the reported container statuses."""
    pending_init, failed_init = _init_progress(init)
    running = waiting = stopped = succeeded = 0
    for status in containers:
        state = status["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"].get("exitCode", 1) == 0
        elif "terminated" in status["lastState"]:
            stopped += 1
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or failed_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped:
        return "Pending"
    if policy != "Always" and stopped == succeeded:
        return "Succeeded"
    return "Failed" if policy == "Never" else "Running"


def pod_status(run: PodRun, node_ip: str) -> dict[str, Any]:
    """The pod status a kubelet would report for ``run`` (phase, conditions, container states)."""
    init = [_container_status(run, c) for c in run.init_containers.values()]
    initialized = all(
        c.exit is not None and c.exit.exit_code == 0 and not c.running for c in run.init_containers.values()
    )
    specs = run.pod["spec"].get("containers") or []
    statuses = [_container_status(run, run.containers[spec["name"]]) for spec in specs]
    phase = phase_of(str(run.pod["spec"].get("restartPolicy", "Always")), init, statuses)
    ready = bool(statuses) and all(s["ready"] for s in statuses)
    failed = run.stage if isinstance(run.stage, stages.Failed) else None
    if failed is not None:
        phase, ready = "Failed", False
    now = timestamp()
    before = {c["type"]: c for c in (run.last_status or {}).get("conditions", [])}

    def condition(kind: str, ok: bool, reason: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        old = before.get(kind)
        since = old["lastTransitionTime"] if old and old["status"] == status else now
        cond = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if not ok:
            cond["reason"] = reason
        return cond

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", True, ""),
            condition("Initialized", initialized, "ContainersNotInitialized"),
            condition("Ready", ready, "PodFailed" if phase == "Failed" else "ContainersNotReady"),
            condition("ContainersReady", ready, "PodFailed" if phase == "Failed" else "ContainersNotReady"),
            condition("PodScheduled", True, ""),
        ],
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        **({"podIP": run.ips[0], "podIPs": [{"ip": ip} for ip in run.ips]} if run.ips else {}),
        "startTime": run.start_time,
        "containerStatuses": statuses,
    }
    if init:
        status["initContainerStatuses"] = init
    if run.ephemeral:
        status["ephemeralContainerStatuses"] = [_container_status(run, c) for c in run.ephemeral.values()]
    if failed is not None and failed.disrupted:
        disruption = {**condition("DisruptionTarget", True, ""), "reason": "TerminationByKubelet"}
        status["conditions"].append({**disruption, "message": failed.why.message})
    if failed is not None:
        status["reason"] = failed.why.reason
        status["message"] = failed.why.message
        if not any(c.life.ever_started for c in run.all_containers()):
            del status["containerStatuses"]  # refused before anything ran, as kubelet reports it
    return status


def agrees(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the pod's status in the apiserver has the phase and conditions we report."""

    def conditions(status: Mapping[str, Any]) -> set[tuple[str, str]]:
        return {(str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or []}

    return current.get("phase") == desired.get("phase") and conditions(desired) <= conditions(current)


class StatusWriter:
    """Writes what :func:`pod_status` says to the apiserver, and deletes a pod whose containers
    have all stopped after its deletion was asked for (kubelet's status manager does both)."""

    def __init__(self, client: Client, node_ip: str) -> None:
        self.client = client
        self.node_ip = node_ip

    def report(self, run: PodRun) -> str | None:
        """Patch the pod's status when it changed; the phase written, None when nothing was."""
        status = pod_status(run, self.node_ip)
        # Also when the apiserver's copy was changed by someone else: the node lifecycle
        # controller marks pods not Ready while their node is unreachable, and the kubelet puts
        # its own view back (as kubelet's status manager reconciles).
        if status == run.last_status and agrees(run.pod.get("status") or {}, status):
            return None
        meta = run.pod["metadata"]
        try:
            self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"metadata": {"uid": meta["uid"]}, "status": status},
                "merge",
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        run.last_status = status
        return str(status["phase"])

    def delete(self, pod: Mapping[str, Any]) -> None:
        """Remove the object at once (its containers have stopped), if it is still this pod."""
        meta = pod["metadata"]
        try:
            self.client.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as exc:
            if exc.status not in {404, 409}:
                raise
