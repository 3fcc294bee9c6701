"""The pod stage table, walked without a cluster: every move, and every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from wasmlet.pod import stages
from wasmlet.pod.admission import Rejection
from wasmlet.pod.lifecycle import IllegalTransition, Record
from wasmlet.pod.stages import (
    Admitted,
    Admitting,
    Completed,
    DeletionRequested,
    Ended,
    Fail,
    Failed,
    ObjectDeleted,
    Refused,
    Removed,
    StopContainers,
    Syncing,
    Terminating,
)

DEADLINE = Rejection("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
STAGES: dict[type, stages.Stage] = {
    Admitting: Admitting(),
    Syncing: Syncing(),
    Completed: Completed(),
    Failed: Failed(DEADLINE),
    Terminating: Terminating(30.0),
    Removed: Removed(),
}
EVENTS: dict[type, stages.Event] = {
    Admitted: Admitted(),
    Refused: Refused(Rejection("OutOfpods", "Node didn't have enough resource: pods")),
    Fail: Fail(DEADLINE),
    Ended: Ended(),
    DeletionRequested: DeletionRequested(30.0),
    ObjectDeleted: ObjectDeleted(),
}
ALIVE = (Admitting, Syncing, Completed, Failed, Terminating)
ALLOWED: dict[tuple[type, type], type] = {
    (Admitting, Admitted): Syncing,
    (Admitting, Refused): Failed,
    (Admitting, Fail): Failed,
    (Syncing, Fail): Failed,
    (Syncing, Ended): Completed,
    (Completed, Ended): Completed,
    (Failed, Ended): Failed,
    **{(s, DeletionRequested): Terminating for s in ALIVE},
    **{(s, ObjectDeleted): Removed for s in (*ALIVE, Removed)},
}


def test_the_table_is_exactly_the_moves_a_pod_makes() -> None:
    assert set(stages.TRANSITIONS) == set(ALLOWED)


@pytest.mark.parametrize(("stage", "event"), list(itertools.product(STAGES, EVENTS)))
def test_every_pair_moves_as_the_table_says_or_is_refused(stage: type, event: type) -> None:
    if (stage, event) in ALLOWED:
        assert isinstance(stages.step(STAGES[stage], EVENTS[event])[0], ALLOWED[stage, event])
    else:
        with pytest.raises(
            IllegalTransition, match=f"{event.__name__} cannot happen to a {stage.__name__} pod"
        ):
            stages.step(STAGES[stage], EVENTS[event])


def test_a_refused_pod_fails_with_kubelets_message_and_an_event() -> None:
    failed, effects = stages.step(Admitting(), Refused(Rejection("OutOfmemory", "Node didn't have enough")))
    why = Rejection("OutOfmemory", "Pod was rejected: Node didn't have enough")
    assert failed == Failed(why)
    assert effects == [Record("Warning", "OutOfmemory", "Pod was rejected: Node didn't have enough")]


def test_a_failing_pod_stops_its_containers_at_once() -> None:
    evicted = Rejection("Evicted", "The node was low on resource: memory.")
    failed, effects = stages.step(Syncing(), Fail(evicted, disrupted=True))
    assert failed == Failed(evicted, disrupted=True)
    assert effects == [Record("Warning", "Evicted", evicted.message), StopContainers(0.0)]


def test_a_deletion_announces_once_and_keeps_the_shortest_grace() -> None:
    terminating, effects = stages.step(Syncing(), DeletionRequested(30.0))
    assert (terminating, effects) == (Terminating(30.0), [StopContainers(30.0, announce=True)])
    again, effects = stages.step(terminating, DeletionRequested(0.0))
    assert (again, effects) == (Terminating(0.0), [StopContainers(0.0)])
    longer, effects = stages.step(again, DeletionRequested(30.0))
    assert (longer, effects) == (Terminating(0.0), [StopContainers(0.0)])


def test_an_object_gone_stops_everything_at_once() -> None:
    for stage in STAGES.values():
        assert stages.step(stage, ObjectDeleted()) == (Removed(), [StopContainers(0.0)])


def test_a_reported_end_keeps_a_failure() -> None:
    assert stages.step(Failed(DEADLINE), Ended()) == (Failed(DEADLINE), [])
    assert stages.step(Syncing(), Ended()) == (Completed(), [])


@pytest.mark.parametrize(
    ("phase", "took_it", "expected"),
    [
        ("Pending", False, Admitting()),
        ("Pending", True, Syncing()),
        ("Running", True, Syncing()),
        ("Succeeded", True, Completed()),
        ("Failed", False, Completed()),
    ],
)
def test_a_pod_seen_first_resumes_from_its_reported_phase(
    phase: str, took_it: bool, expected: object
) -> None:
    assert stages.adopted(phase, took_it) == expected


def test_only_a_syncing_pod_runs_containers_and_taken_pods_hold_resources() -> None:
    assert [s for s in STAGES if stages.runs_containers(STAGES[s])] == [Syncing]
    assert [s for s in STAGES if stages.holds_resources(STAGES[s])] == [Syncing, Terminating]
