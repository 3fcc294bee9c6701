"""The container lifecycle table, walked without a cluster: every move, and every illegal one refused."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from wasmlet.pod import lifecycle
from wasmlet.pod.go_strings import go_duration
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
    Exited: Exited(Terminated(0, "Completed", T0, T1), 5, restart=False, pod="p", container_name="m"),
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
    assert (first.retry_backoff, first.not_before) == (10.0, NOW + 10)
    assert effects == [Record("Warning", "Failed", message), LookAgain(10.0)]
    second, effects = lifecycle.step(first, failed, NOW + 10)
    assert second.state == Waiting("ImagePullBackOff", message)
    assert second.retry_backoff == 20.0
    assert effects == [
        Record("Warning", "Failed", message),
        Record("Normal", "BackOff", 'Back-off pulling image "r/m:v1"'),
        LookAgain(20.0),
    ]


def test_a_pull_that_may_never_happen_keeps_its_reason() -> None:
    never = lifecycle.step(Container(), PullFailed("r/m:v1", "ErrImageNeverPull", "not stored"), NOW)[0]
    assert isinstance(never.state, Waiting) and never.state.reason == "ErrImageNeverPull"


POD = "web_default(u-1)"


def _crash(
    container: Container, now: float, ran_for: float = 5, code: int = 2
) -> tuple[Container, list[lifecycle.Effect]]:
    """Start ``container`` and let it exit with ``code`` after ``ran_for`` seconds."""
    running = lifecycle.step(container, Started(T0), now)[0]
    end = Terminated(code, "Error" if code else "Completed", T0, T1, "wasmlet://u/main", "trap")
    return lifecycle.step(running, Exited(end, ran_for, True, POD, "main"), now + ran_for)


def test_the_first_restart_is_immediate_and_back_off_starts_from_the_second() -> None:
    # kubelet's doBackOff: no back-off entry at the first exit, so it restarts at once (and
    # backOff.Next opens a 10 s entry); the second exit waits it out.
    first, effects = _crash(Container(), NOW)
    assert isinstance(first.state, Terminated) and effects == []
    assert first.not_before <= NOW + 5
    restarted = lifecycle.step(first, Started(T1), NOW + 5)[0]
    assert (restarted.restart_count, restarted.backoff, restarted.last_state) == (1, 10.0, first.exited)
    second, effects = lifecycle.step(
        restarted, Exited(Terminated(2, "Error", T1, T1), 5, True, POD, "main"), NOW + 10
    )
    message = f"back-off 10s restarting failed container=main pod={POD}"
    assert second.state == Waiting("CrashLoopBackOff", message)
    assert (second.not_before, second.restart_count) == (NOW + 20, 1)
    back_off = Record("Warning", "BackOff", f"Back-off restarting failed container main in pod {POD}")
    assert effects == [back_off, LookAgain(10.0)]
    again = lifecycle.step(second, Started(T1), NOW + 20)[0]
    assert (again.state, again.restart_count, again.backoff) == (Running(T1), 2, 20.0)


def test_a_crash_loop_with_exit_code_0_records_back_off_too() -> None:
    first = _crash(Container(), NOW, code=0)[0]  # restarted at once
    waiting, effects = _crash(first, NOW, code=0)
    assert isinstance(waiting.state, Waiting) and waiting.state.reason == "CrashLoopBackOff"
    assert effects[0] == Record(
        "Warning", "BackOff", f"Back-off restarting failed container main in pod {POD}"
    )


def test_an_exit_not_restarted_stays_terminated() -> None:
    running = lifecycle.step(Container(), Started(T0), NOW)[0]
    end = Terminated(0, "Completed", T0, T1)
    ended, effects = lifecycle.step(running, Exited(end, 5, False, "p", "m"), NOW)
    assert (ended.state, ended.exited, effects) == (end, end, [])


def test_back_off_doubles_to_five_minutes_and_resets_after_ten_minutes_running() -> None:
    container, waits = Container(), []
    for _crash_number in range(8):
        container, effects = _crash(container, NOW, ran_for=1)
        waits.append(next((e.after for e in effects if isinstance(e, LookAgain)), 0.0))
    assert waits == [0.0, 10, 20, 40, 80, 160, 300, 300]
    message = container.state.message if isinstance(container.state, Waiting) else ""
    assert message.startswith("back-off 5m0s restarting")
    container, effects = _crash(container, NOW, ran_for=601)
    assert (container.backoff, effects) == (0.0, [])  # ran 10 min: the next restart is at once


def test_configuration_problems_wait_and_say_why() -> None:
    unsupported, effects = lifecycle.step(Container(), Unsupported("probes are not supported"), NOW)
    assert unsupported.state == Waiting("CreateContainerConfigError", "probes are not supported")
    assert effects == [Record("Warning", "Failed", "Error: probes are not supported")]
    assert lifecycle.step(unsupported, Unsupported("probes are not supported"), NOW)[1] == []  # said once
    missing, effects = lifecycle.step(Container(), ConfigFailed('configmap "cfg" not found'), NOW)
    assert isinstance(missing.state, Waiting) and missing.state.reason == "CreateContainerConfigError"
    assert effects == [Record("Warning", "Failed", 'Error: configmap "cfg" not found'), LookAgain(10.0)]
    broken, effects = lifecycle.step(Container(), CreateFailed("unknown import"), NOW)
    assert broken.state == Waiting("CreateContainerError", "unknown import") and broken.retry_backoff == 10
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


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (1.5, "1.5s"), (10, "10s"), (80, "1m20s"), (300, "5m0s"), (3600, "1h0m0s")],
)
def test_durations_read_as_go_prints_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
