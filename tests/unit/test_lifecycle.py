"""The container lifecycle table, walked without a cluster: every move, and every illegal one refused."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from wasmlet.pod import lifecycle
from wasmlet.pod.lifecycle import (
    ConfigFailed,
    Container,
    CreateFailed,
    Exited,
    IllegalTransition,
    LookAgain,
    PullFailed,
    Record,
    Running,
    Started,
    Terminated,
    Unsupported,
    Waiting,
)
from wasmlet.runtime.engine import ExitStatus

NOW = 1000.0
T0 = "2026-12-07T00:00:00Z"
T1 = "2026-12-07T00:00:05Z"
STATES: dict[type, lifecycle.State] = {
    Waiting: Waiting(),
    Running: Running(T0),
    Terminated: Terminated(3, "Error", T0, T1, "wasmlet://u/main"),
}
EVENTS: dict[type, lifecycle.Event] = {
    Unsupported: Unsupported("livenessProbe is not supported by wasmlet"),
    ConfigFailed: ConfigFailed('configmap "cfg" not found'),
    CreateFailed: CreateFailed("unknown import"),
    PullFailed: PullFailed("r/m:v1", "ErrImagePull", "not found"),
    Started: Started(T1),
    Exited: Exited(Terminated(0, "Completed", T0, T1), 5, restart=False, pod_name="p", container_name="m"),
}
ALLOWED = {
    (Waiting, Unsupported): Waiting,
    (Waiting, ConfigFailed): Waiting,
    (Waiting, CreateFailed): Waiting,
    (Waiting, PullFailed): Waiting,
    (Waiting, Started): Running,
    (Terminated, Unsupported): Waiting,
    (Terminated, ConfigFailed): Waiting,
    (Terminated, CreateFailed): Waiting,
    (Terminated, PullFailed): Waiting,
    (Terminated, Started): Running,
    (Running, Exited): Terminated,
}


def test_the_table_is_exactly_the_moves_a_container_makes() -> None:
    assert set(lifecycle.TRANSITIONS) == set(ALLOWED)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(STATES, EVENTS)))
def test_every_pair_moves_as_the_table_says_or_is_refused(state: type, event: type) -> None:
    container = Container(state=STATES[state])
    if (state, event) in ALLOWED:
        moved = lifecycle.step(container, EVENTS[event], NOW)[0]
        assert isinstance(moved.state, ALLOWED[state, event])
    else:
        with pytest.raises(IllegalTransition, match=f"{event.__name__} cannot happen to a {state.__name__}"):
            lifecycle.step(container, EVENTS[event], NOW)


def test_a_failing_pull_is_err_image_pull_then_back_off_doubling() -> None:
    failed = PullFailed("r/m:v1", "ErrImagePull", "manifest unknown")
    first, effects = lifecycle.step(Container(), failed, NOW)
    message = 'Failed to pull image "r/m:v1": manifest unknown'
    assert first.state == Waiting("ErrImagePull", message)
    assert (first.backoff, first.not_before) == (10.0, NOW + 10)
    assert effects == [Record("Warning", "Failed", message), LookAgain(10.0)]
    second, effects = lifecycle.step(first, failed, NOW + 10)
    assert second.state == Waiting("ImagePullBackOff", message)
    assert second.backoff == 20.0
    assert effects == [
        Record("Warning", "Failed", message),
        Record("Normal", "BackOff", 'Back-off pulling image "r/m:v1"'),
        LookAgain(20.0),
    ]


def test_a_pull_that_may_never_happen_keeps_its_reason() -> None:
    never = lifecycle.step(Container(), PullFailed("r/m:v1", "ErrImageNeverPull", "not stored"), NOW)[0]
    assert isinstance(never.state, Waiting) and never.state.reason == "ErrImageNeverPull"


def test_an_exit_the_policy_restarts_waits_in_crash_loop_back_off() -> None:
    running = lifecycle.step(Container(), Started(T0), NOW)[0]
    end = Terminated(2, "Error", T0, T1, "wasmlet://u/main", "trap")
    exited = Exited(end, ran_for=5, restart=True, pod_name="p", container_name="main")
    waiting, effects = lifecycle.step(running, exited, NOW)
    assert waiting.state == Waiting("CrashLoopBackOff", "back-off 10s restarting failed container=main pod=p")
    assert (waiting.last_state, waiting.exited, waiting.restart_count) == (end, end, 0)
    back_off = Record("Warning", "BackOff", "Back-off restarting failed container main")
    assert effects == [back_off, LookAgain(10.0)]
    restarted, effects = lifecycle.step(waiting, Started(T1), NOW + 10)
    assert restarted.state == Running(T1)
    assert (restarted.last_state, restarted.exited, restarted.restart_count) == (end, None, 1)
    assert effects == []


def test_a_completed_run_restarted_by_always_records_no_back_off_event() -> None:
    running = lifecycle.step(Container(), Started(T0), NOW)[0]
    done = Exited(Terminated(0, "Completed", T0, T1), 5, restart=True, pod_name="p", container_name="m")
    waiting, effects = lifecycle.step(running, done, NOW)
    assert isinstance(waiting.state, Waiting) and waiting.state.reason == "CrashLoopBackOff"
    assert effects == [LookAgain(10.0)]


def test_an_exit_not_restarted_stays_terminated() -> None:
    running = lifecycle.step(Container(), Started(T0), NOW)[0]
    end = Terminated(0, "Completed", T0, T1)
    ended, effects = lifecycle.step(running, Exited(end, 5, False, "p", "m"), NOW)
    assert (ended.state, ended.exited, effects) == (end, end, [])


def test_back_off_doubles_to_five_minutes_and_resets_after_ten_minutes_running() -> None:
    container = Container()
    for expected in (10, 20, 40, 80, 160, 300, 300):
        container = lifecycle.step(container, Started(T0), NOW)[0]
        end = Terminated(1, "Error", T0, T1)
        container = lifecycle.step(container, Exited(end, 1, True, "p", "m"), NOW)[0]
        assert container.backoff == expected
    container = lifecycle.step(container, Started(T0), NOW)[0]
    container = lifecycle.step(container, Exited(Terminated(1, "Error", T0, T1), 601, True, "p", "m"), NOW)[0]
    assert container.backoff == 10


def test_configuration_problems_wait_and_say_why() -> None:
    unsupported, effects = lifecycle.step(Container(), Unsupported("probes are not supported"), NOW)
    assert unsupported.state == Waiting("CreateContainerConfigError", "probes are not supported")
    assert effects == []
    missing, effects = lifecycle.step(Container(), ConfigFailed('configmap "cfg" not found'), NOW)
    assert isinstance(missing.state, Waiting) and missing.state.reason == "CreateContainerConfigError"
    assert effects == [Record("Warning", "Failed", 'Error: configmap "cfg" not found'), LookAgain(10.0)]
    broken, effects = lifecycle.step(Container(), CreateFailed("unknown import"), NOW)
    assert broken.state == Waiting("CreateContainerError", "unknown import") and broken.backoff == 10
    assert effects == [Record("Warning", "Failed", "Error: unknown import"), LookAgain(10.0)]


def test_states_read_back_from_the_api_are_the_same_values() -> None:
    for state in (Waiting("ImagePullBackOff", "x"), Running(T0), Terminated(3, "Error", T0, T1, "id", "m")):
        assert lifecycle.state_from_api(state.to_api()) == state
    assert lifecycle.state_from_api({}) is None


def test_a_run_the_node_killed_ends_as_an_error() -> None:
    start = datetime(2026, 12, 7, tzinfo=UTC)
    killed = ExitStatus(137, "Killed", "killed: stop requested", start, start + timedelta(seconds=2))
    end = Terminated(137, "Error", T0, "2026-12-07T00:00:02Z", "wasmlet://u/m", "killed: stop requested")
    assert lifecycle.ended(killed, "wasmlet://u/m") == end
