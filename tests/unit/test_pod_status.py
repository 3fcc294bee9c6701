"""Pod phase and container history, as a kubelet reports them (pure logic of wasmlet.pod.controller)."""

from __future__ import annotations

from typing import Any

import pytest

from wasmlet.pod import lifecycle
from wasmlet.pod.run import ContainerRun, PodRun
from wasmlet.pod.status import agrees, pod_status


def life(state: dict[str, Any], last: dict[str, Any] | None = None) -> lifecycle.Container:
    """A container in the state an API status shows, its last run's end taken from either."""
    now = lifecycle.state_from_api(state) or lifecycle.Waiting()
    before = lifecycle.state_from_api(last or {})
    previous = before if isinstance(before, lifecycle.Terminated) else None
    end = now if isinstance(now, lifecycle.Terminated) else previous
    return lifecycle.Container(state=now, last_state=previous, exited=end)


def run_with(state: dict[str, Any], policy: str = "Always", last: dict[str, Any] | None = None) -> PodRun:
    pod = {
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {"restartPolicy": policy, "containers": [{"name": "main", "image": "r/m:v1"}]},
    }
    return PodRun(pod, {"main": ContainerRun("main", "r/m:v1", life=life(state, last))})


TERMINATED_0 = {"terminated": {"exitCode": 0, "reason": "Completed"}}
TERMINATED_3 = {"terminated": {"exitCode": 3, "reason": "Error"}}
BACK_OFF = {"waiting": {"reason": "CrashLoopBackOff"}}


@pytest.mark.parametrize(
    ("state", "last", "policy", "ever_started", "phase", "ready"),
    [
        ({"waiting": {"reason": "ContainerCreating"}}, None, "Always", False, "Pending", False),
        ({"waiting": {"reason": "ImagePullBackOff"}}, None, "Always", False, "Pending", False),
        ({"running": {"startedAt": "2026-11-30T00:00:00Z"}}, None, "Always", True, "Running", True),
        (BACK_OFF, TERMINATED_3, "Always", True, "Running", False),
        (BACK_OFF, TERMINATED_3, "OnFailure", True, "Running", False),
        (BACK_OFF, TERMINATED_0, "Always", True, "Running", False),
        (TERMINATED_3, None, "Never", True, "Failed", False),
        (TERMINATED_0, None, "Never", True, "Succeeded", False),
        (TERMINATED_0, None, "OnFailure", True, "Succeeded", False),
    ],
)
def test_phase_and_readiness_follow_the_kubelet(  # noqa: PLR0917
    state: dict[str, Any],
    last: dict[str, Any] | None,
    policy: str,
    ever_started: bool,
    phase: str,
    ready: bool,
) -> None:
    run = run_with(state, policy, last)
    run.ips = ("10.244.0.7",)
    assert run.containers["main"].life.ever_started is ever_started
    status = pod_status(run, "127.0.0.2")
    assert status["phase"] == phase
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == ("True" if ready else "False")
    assert (status["hostIP"], status["podIP"]) == ("127.0.0.2", "10.244.0.7")
    assert status["podIPs"] == [{"ip": "10.244.0.7"}]
    assert status["containerStatuses"][0]["ready"] is ready


def test_no_pod_ip_is_reported_before_the_pod_has_one() -> None:
    """kubelet reports podIP once the sandbox has its network; a pod refused or waiting has none."""
    status = pod_status(run_with({"waiting": {"reason": "ContainerCreating"}}), "127.0.0.2")
    assert status["hostIP"] == "127.0.0.2"
    assert "podIP" not in status
    assert "podIPs" not in status


def test_condition_transition_time_is_kept_while_the_status_holds() -> None:
    run = run_with({"running": {"startedAt": "2026-11-30T00:00:00Z"}})
    first = pod_status(run, "127.0.0.2")
    run.last_status = {
        **first,
        "conditions": [{**c, "lastTransitionTime": "2000-01-01T00:00:00Z"} for c in first["conditions"]],
    }
    again = pod_status(run, "127.0.0.2")
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"2000-01-01T00:00:00Z"}
    assert again == pod_status(run, "127.0.0.2")


def test_a_container_running_when_the_agent_died_restarts_with_one_more_count() -> None:
    resumed = lifecycle.resumed(
        {"restartCount": 2, "state": {"running": {"startedAt": "2026-11-30T00:00:00Z"}}}
    )
    assert resumed.restart_count == 3
    assert resumed.exited is None
    assert resumed.last_state is not None and resumed.last_state.exit_code == 137
    assert resumed.last_state.started_at == "2026-11-30T00:00:00Z"


def test_a_terminated_container_keeps_its_exit_and_count() -> None:
    resumed = lifecycle.resumed(
        {
            "restartCount": 1,
            "state": {
                "terminated": {
                    "exitCode": 3,
                    "reason": "Error",
                    "startedAt": "2026-11-30T00:00:00Z",
                    "finishedAt": "2026-11-30T00:00:01Z",
                }
            },
        },
    )
    assert resumed.restart_count == 1
    assert resumed.exited is not None and resumed.exited.exit_code == 3
    assert isinstance(resumed.state, lifecycle.Terminated)


def test_a_container_in_back_off_resumes_as_a_restart() -> None:
    resumed = lifecycle.resumed(
        {
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        },
    )
    assert resumed.restart_count == 4  # the next start makes it 5
    assert resumed.exited is not None and resumed.exited.exit_code == 1
    assert resumed.ever_started


def test_a_status_changed_by_someone_else_is_reported_again() -> None:
    run = run_with({"running": {"startedAt": "2026-11-30T00:00:00Z"}})
    ours = pod_status(run, "127.0.0.2")
    assert agrees(ours, ours)
    # The node lifecycle controller marked the pod not Ready while the node was unreachable.
    marked = {
        **ours,
        "conditions": [{**c, "status": "False"} if c["type"] == "Ready" else c for c in ours["conditions"]],
    }
    assert not agrees(marked, ours)
    assert not agrees({}, ours)
