"""The pod controller with fake collaborators (images, volumes, starter, status, events): a pod's
trip through its stages without a cluster, a registry or wasmtime. The integration tests run the
same controller with the real parts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from wasmlet.kube.workqueue import WorkQueue
from wasmlet.network.pod_network import PodNetwork
from wasmlet.node import eviction
from wasmlet.oci.errors import NotWasmError, PullError
from wasmlet.pod import lifecycle, stages
from wasmlet.pod.admission import Rejection
from wasmlet.pod.collaborators import Admission
from wasmlet.pod.controller import PodController
from wasmlet.pod.image import Pulled
from wasmlet.pod.prober import Prober
from wasmlet.pod.run import ContainerRun, PodRun
from wasmlet.pod.start import ConfigError, Configured
from wasmlet.pod.status import pod_status
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.runtime.engine import EXIT_START_FAILED, ExitStatus

KEY = "ns/p"


class Module:
    """A started module: stops when asked, ends when the test says."""

    def __init__(self, on_exit: Callable[[ExitStatus], None]) -> None:
        self.on_exit = on_exit
        self.stops: list[float] = []
        self.memory_base: int | None = None

    def stop(self, grace: float) -> None:
        self.stops.append(grace)

    def end(self, code: int = 0) -> None:
        now = dt.datetime.now(dt.UTC)
        self.on_exit(ExitStatus(code, "Completed" if code == 0 else "Error", "", now, now))


class Images:
    def __init__(self) -> None:
        self.answers: dict[str, Pulled | Exception | None] = {}
        self.forgotten: list[str] = []

    def module(self, key: str, pod: dict[str, Any], spec: Mapping[str, Any]) -> Pulled | None:
        answer = self.answers.get(spec["image"], Pulled(Path(f"/c/{spec['image']}.cwasm"), "sha256:d"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)

    def close(self) -> None:
        pass


class Volumes:
    def __init__(self) -> None:
        self.ready = True
        self.over = ""
        self.removed: list[str] = []

    def mount(self, key: str, pod: dict[str, Any]) -> bool:
        return self.ready

    def exceeded(self, pod: Mapping[str, Any]) -> str:
        return self.over

    def remove(self, pod: Mapping[str, Any]) -> None:
        self.removed.append(pod["metadata"]["uid"])


class Starter:
    def __init__(self) -> None:
        self.config_error = ""
        self.launch_error: Exception | None = None
        self.started: dict[str, Module] = {}
        self.order: list[str] = []

    def configure(self, run: PodRun, spec: Mapping[str, Any]) -> Configured:
        if self.config_error:
            raise ConfigError(self.config_error)
        return Configured(spec, {}, [])

    def launch(
        self,
        run: PodRun,
        crun: ContainerRun,
        module: Path,
        ready: Configured,
        on_exit: Callable[[ExitStatus], None],
    ) -> Module:
        if self.launch_error is not None:
            raise self.launch_error
        self.order.append(crun.name)
        self.started[crun.name] = started = Module(on_exit)
        return started


class Status:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def report(self, run: PodRun) -> str | None:
        status = pod_status(run, "127.0.0.9")
        if status == run.last_status:
            return None
        run.last_status = status
        self.written.append(status)
        return str(status["phase"])

    def delete(self, pod: Mapping[str, Any]) -> None:
        self.deleted.append(pod["metadata"]["uid"])


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.recorded.append((kind, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _kind, reason, _message in self.recorded]


class Queue(WorkQueue):
    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []
        self.later: list[tuple[str, float]] = []

    def add(self, key: str) -> None:
        self.added.append(key)

    def add_after(self, key: str, delay: float) -> None:
        self.later.append((key, delay))


class Node:
    """A controller and its fakes."""

    def __init__(self, tmp_path: Path, allocatable: Mapping[str, str] | None = None) -> None:
        self.images, self.volumes, self.starter = Images(), Volumes(), Starter()
        self.status, self.events, self.queue = Status(), Events(), Queue()
        self.pressure = eviction.Pressure()
        self.network = PodNetwork("127.0.0.9")
        self.controller = PodController(
            images=self.images,
            volumes=self.volumes,
            network=self.network,
            starter=self.starter,
            prober=Prober(self.events, self.queue.add),
            status=self.status,
            events=self.events,
            admission_by=Admission(
                allocatable or {"pods": "110", "cpu": "2", "memory": "4Gi"},
                self.pressure,
                HostPathPolicy.of([], protected=[]),
            ),
            log_root=tmp_path / "logs",
            queue=self.queue,
        )

    def run(self, pod: dict[str, Any]) -> PodRun:
        self.controller.observe(pod)
        self.controller.sync(KEY)
        found = self.controller.find(KEY)
        assert found is not None
        return found

    def phase(self) -> str:
        return str(self.status.written[-1]["phase"])


def stage_of(run: PodRun) -> stages.Stage:
    return run.stage


def make_pod(*images: str, policy: str = "Always", init: tuple[str, ...] = (), **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {
            "restartPolicy": policy,
            "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
            "initContainers": [{"name": f"i{i}", "image": image} for i, image in enumerate(init)],
            **spec,
        },
    }


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_an_admitted_pod_starts_its_containers_and_reports_running(node: Node) -> None:
    run = node.run(make_pod("r/a:v1", "r/b:v1"))
    assert run.stage == stages.Syncing()
    assert node.starter.order == ["c0", "c1"]
    assert node.phase() == "Running"
    assert node.events.reasons() == ["Created", "Started", "Created", "Started"]
    assert run.containers["c0"].image_id == "sha256:d"


def test_an_exit_from_the_modules_thread_is_applied_by_the_worker(node: Node) -> None:
    run = node.run(make_pod("r/a:v1", policy="Never"))
    node.starter.started["c0"].end(0)
    assert isinstance(run.containers["c0"].life.state, lifecycle.Running)  # not yet: handed over
    assert node.queue.added[-1] == KEY
    node.controller.sync(KEY)
    assert isinstance(run.containers["c0"].life.state, lifecycle.Terminated)
    assert node.phase() == "Succeeded"
    assert run.stage == stages.Completed()
    node.controller.sync(KEY)  # nothing restarts a completed pod
    assert node.starter.order == ["c0"]


def test_a_start_that_raises_ends_the_container_instead_of_leaving_it_running(node: Node) -> None:
    node.starter.launch_error = OSError("can't start new thread")
    node.controller.observe(make_pod("r/a:v1", policy="Never"))
    with pytest.raises(OSError, match="new thread"):
        node.controller.sync(KEY)
    run = node.controller.find(KEY)
    assert run is not None
    state = run.containers["c0"].life.state
    assert isinstance(state, lifecycle.Terminated)
    assert state.exit_code == EXIT_START_FAILED
    assert "could not start the module: can't start new thread" in state.message
    node.controller.sync(KEY)  # the retry the worker schedules reports it; nothing is stuck
    assert node.phase() == "Failed"


def test_a_start_that_raises_is_restarted_with_back_off_by_always(node: Node) -> None:
    node.starter.launch_error = OSError("no thread")
    node.controller.observe(make_pod("r/a:v1"))
    with pytest.raises(OSError):
        node.controller.sync(KEY)
    run = node.controller.find(KEY)
    assert run is not None
    assert isinstance(run.containers["c0"].life.state, lifecycle.Terminated)  # restarted at once...
    with pytest.raises(OSError):
        node.controller.sync(KEY)
    assert isinstance(run.containers["c0"].life.state, lifecycle.Waiting)  # ...then backed off
    assert run.containers["c0"].life.state.reason == "CrashLoopBackOff"
    assert (KEY, 10.0) in node.queue.later


def test_init_containers_run_one_at_a_time_before_the_containers(node: Node) -> None:
    run = node.run(make_pod("r/a:v1", init=("r/i0:v1", "r/i1:v1")))
    assert node.starter.order == ["i0"]
    assert node.status.written[-1]["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "PodInitializing"}
    }
    node.starter.started["i0"].end(0)
    node.controller.sync(KEY)
    assert node.starter.order == ["i0", "i1"]
    node.starter.started["i1"].end(0)
    node.controller.sync(KEY)
    assert node.starter.order == ["i0", "i1", "c0"]
    assert run.stage == stages.Syncing()


def test_an_init_container_not_started_yet_is_pod_initializing_like_the_others(node: Node) -> None:
    node.images.answers["r/i0:v1"] = None  # its pull is under way
    node.run(make_pod("r/a:v1", init=("r/i0:v1",)))
    written = node.status.written[-1]
    initializing = {"waiting": {"reason": "PodInitializing"}}
    assert written["initContainerStatuses"][0]["state"] == initializing  # not ContainerCreating
    assert written["containerStatuses"][0]["state"] == initializing


def test_a_refused_field_waits_with_its_reason_and_says_it_once_in_an_event(node: Node) -> None:
    pod = make_pod("r/a:v1")
    pod["spec"]["containers"][0]["tty"] = True
    run = node.run(pod)
    node.controller.sync(KEY)
    state = run.containers["c0"].life.state
    assert isinstance(state, lifecycle.Waiting) and state.reason == "CreateContainerConfigError"
    assert "tty is not supported by wasmlet" in state.message
    assert node.events.recorded == [("Warning", "Failed", f"Error: {state.message}")]


def test_an_ephemeral_container_waits_with_a_message_and_an_event(node: Node) -> None:
    run = node.run(make_pod("r/a:v1"))
    debug = {"name": "debugger-x", "image": "busybox", "targetContainerName": "c0"}
    node.controller.observe({**run.pod, "spec": {**run.pod["spec"], "ephemeralContainers": [debug]}})
    node.controller.sync(KEY)
    node.controller.sync(KEY)
    (status,) = node.status.written[-1]["ephemeralContainerStatuses"]
    waiting = status["state"]["waiting"]
    assert status["name"] == "debugger-x" and waiting["reason"] == "CreateContainerConfigError"
    assert "ephemeral containers are not supported by wasmlet (container debugger-x)" in waiting["message"]
    assert node.events.recorded.count(("Warning", "Failed", f"Error: {waiting['message']}")) == 1
    assert node.phase() == "Running"  # the pod itself runs on


def test_a_pull_under_way_waits_and_a_failed_one_backs_off(node: Node) -> None:
    node.images.answers["r/a:v1"] = None
    run = node.run(make_pod("r/a:v1"))
    assert run.containers["c0"].life.state == lifecycle.Waiting("ContainerCreating")
    assert node.starter.order == []
    node.images.answers["r/a:v1"] = PullError("manifest unknown", reason="ErrImagePull")
    node.controller.sync(KEY)
    state = run.containers["c0"].life.state
    assert isinstance(state, lifecycle.Waiting) and state.reason == "ErrImagePull"
    assert "Failed" in node.events.reasons()


def test_an_image_that_is_not_wasm_fails_the_pod_and_starts_nothing_more(node: Node) -> None:
    node.images.answers["r/b:v1"] = NotWasmError("a Linux container image")
    run = node.run(make_pod("r/a:v1", "r/b:v1", "r/c:v1"))
    assert isinstance(run.stage, stages.Failed) and run.stage.why.reason == "NotWasm"
    assert node.starter.order == ["c0"]
    assert node.starter.started["c0"].stops == [0.0]  # the pod failed as a whole: stopped at once
    node.starter.started["c0"].end(137)
    node.controller.sync(KEY)
    assert node.phase() == "Failed"


def test_a_refused_pod_fails_at_once_without_containers(tmp_path: Path) -> None:
    node = Node(tmp_path, allocatable={"pods": "0", "cpu": "2", "memory": "4Gi"})
    run = node.run(make_pod("r/a:v1"))
    assert isinstance(run.stage, stages.Failed) and run.stage.why.reason == "OutOfpods"
    assert node.starter.order == []
    assert node.status.written[-1]["reason"] == "OutOfpods"
    assert "containerStatuses" not in node.status.written[-1]


def test_a_container_that_cannot_be_configured_waits_with_the_cause(node: Node) -> None:
    node.starter.config_error = 'configmap "cfg" not found'
    run = node.run(make_pod("r/a:v1"))
    assert run.containers["c0"].life.state == lifecycle.Waiting(
        "CreateContainerConfigError", 'configmap "cfg" not found'
    )
    assert ("Warning", "Failed", 'Error: configmap "cfg" not found') in node.events.recorded


def test_volumes_not_ready_hold_the_containers_and_a_full_empty_dir_evicts(node: Node) -> None:
    node.volumes.ready = False
    node.run(make_pod("r/a:v1"))
    assert node.starter.order == []
    node.volumes.ready, node.volumes.over = True, "Usage of EmptyDir volume scratch exceeds the limit 1Mi."
    run = node.run(make_pod("r/a:v1"))
    assert run.stage == stages.Failed(eviction_rejection(node.volumes.over))
    assert node.starter.order == []


def eviction_rejection(message: str) -> Rejection:
    return Rejection(eviction.REASON, message)


def test_a_deletion_stops_within_grace_then_deletes_the_object(node: Node) -> None:
    pod = make_pod("r/a:v1", terminationGracePeriodSeconds=7)
    run = node.run(pod)
    deleting = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-12-07T00:00:00Z"}}
    node.controller.observe(deleting)
    node.controller.sync(KEY)
    assert run.stage == stages.Terminating(7.0)
    assert node.starter.started["c0"].stops == [7.0, 7.0]
    assert node.events.recorded[-1] == ("Normal", "Killing", "Stopping container c0")
    assert node.status.deleted == []  # not before the module has stopped
    node.starter.started["c0"].end(137)
    node.controller.sync(KEY)
    assert node.status.deleted == ["u1"]
    node.controller.gone(KEY)
    node.controller.sync(KEY)
    assert node.controller.find(KEY) is None
    assert (node.volumes.removed, node.images.forgotten) == (["u1"], ["u1"])


def test_an_object_deleted_under_a_running_pod_stops_it_and_forgets_it(node: Node) -> None:
    node.run(make_pod("r/a:v1"))
    node.controller.gone(KEY)
    node.controller.sync(KEY)
    assert set(node.starter.started["c0"].stops) == {0.0}  # at once (asking again changes nothing)
    assert node.controller.find(KEY) is not None  # until its module has ended
    node.starter.started["c0"].end(137)
    node.controller.sync(KEY)
    assert node.controller.find(KEY) is None


def test_an_eviction_asked_from_another_thread_fails_the_pod_disrupted(node: Node) -> None:
    run = node.run(make_pod("r/a:v1"))
    node.controller.evict(KEY, "The node was low on resource: memory. ")
    assert isinstance(run.stage, stages.Syncing)  # handed over, applied by the worker
    node.controller.sync(KEY)
    assert stage_of(run) == stages.Failed(eviction_rejection("The node was low on resource: memory. "), True)
    assert node.starter.started["c0"].stops == [0.0]
    assert node.phase() == "Running"  # not Failed while a module still runs (kubelet)
    node.starter.started["c0"].end(137)
    node.controller.sync(KEY)
    assert node.controller.released(KEY)
    assert node.phase() == "Failed"
    assert node.starter.order == ["c0"]  # never restarted


def test_a_pod_past_its_deadline_fails_and_one_before_it_is_looked_at_again(node: Node) -> None:
    run = node.run(make_pod("r/a:v1", activeDeadlineSeconds=60))
    assert any(key == KEY and 58 < after <= 60 for key, after in node.queue.later)
    run.start_time = "2026-01-01T00:00:00Z"
    node.controller.sync(KEY)
    assert isinstance(run.stage, stages.Failed) and run.stage.why.reason == "DeadlineExceeded"
    assert node.starter.started["c0"].stops == [0.0]
    assert node.phase() == "Running"
    node.starter.started["c0"].end(137)
    node.controller.sync(KEY)
    assert node.status.written[-1]["reason"] == "DeadlineExceeded"
    assert "terminated" in node.status.written[-1]["containerStatuses"][0]["state"]


def test_a_new_pod_of_the_same_name_replaces_the_old_one(node: Node) -> None:
    node.run(make_pod("r/a:v1"))
    old = node.starter.started["c0"]
    newer = make_pod("r/a:v1")
    newer["metadata"]["uid"] = "u2"
    run = node.run(newer)
    assert old.stops == [0.0]
    assert run.uid == "u2" and node.starter.started["c0"] is not old


@pytest.mark.parametrize(("policy", "restarts"), [("OnFailure", True), ("Always", True), ("Never", False)])
def test_a_failed_liveness_probe_kills_the_container_and_restarts_it_unless_never(
    node: Node, policy: str, restarts: bool
) -> None:
    pod = make_pod("r/a:v1", policy=policy, terminationGracePeriodSeconds=7)
    pod["spec"]["containers"][0]["livenessProbe"] = {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3600}
    run = node.run(pod)
    crun = run.containers["c0"]
    assert crun.health is not None and crun.health.started and crun.health.ready
    killed = crun.health
    killed.failed = killed.trackers["Liveness"].probe  # what the prober hands over
    node.controller.sync(KEY)
    module = node.starter.started["c0"]
    assert module.stops == [7.0]  # the pod's grace period (the probe sets none)
    suffix = ", will be restarted" if restarts else ""
    assert node.events.recorded[-1] == ("Normal", "Killing", f"Container c0 failed liveness probe{suffix}")
    node.controller.sync(KEY)
    assert module.stops == [7.0]  # killed once
    module.end(0)  # a handler that stops cleanly: exit 0, which OnFailure alone would not restart
    node.controller.sync(KEY)
    assert killed.stopped  # its probes stop with the run
    assert node.starter.order == (["c0", "c0"] if restarts else ["c0"])
    assert crun.life.restart_count == (1 if restarts else 0)
    if restarts:
        assert not crun.killed_unhealthy and crun.health is not killed and not crun.health.stopped


def test_a_container_is_not_ready_until_its_readiness_probe_succeeds(node: Node) -> None:
    pod = make_pod("r/a:v1")
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"port": 8080}, "initialDelaySeconds": 3600}
    run = node.run(pod)
    status = node.status.written[-1]
    assert status["phase"] == "Running"
    assert status["containerStatuses"][0]["ready"] is False
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    health = run.containers["c0"].health
    assert health is not None
    health.trackers["Readiness"].record(True)
    node.controller.sync(KEY)
    status = node.status.written[-1]
    assert status["containerStatuses"][0]["ready"] is True
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
