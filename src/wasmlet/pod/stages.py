"""A pod's stage on this node as data: one value, one table of moves, one step function.

Containers have :mod:`wasmlet.pod.lifecycle`; the pod as a whole goes through the stages of
kubelet's pod workers (``SyncPod``, ``SyncTerminatingPod``, ``SyncTerminatedPod``)::

    Admitting ──Admitted──▶ Syncing ──Ended (terminal phase reported)──▶ Completed
        │                     │
        └──Refused──▶ Failed ◀┴──Fail (deadline, eviction, not wasm, emptyDir over its limit)
                                    (its containers are stopped at once)

    any but Removed ──DeletionRequested──▶ Terminating (stop within grace, then delete the object)
    any ──ObjectDeleted──▶ Removed (stop at once, clean up, forget the pod)

:func:`step` applies one :data:`Event` and returns the new stage and the :data:`Effect` s the
controller performs; a pair missing from :data:`TRANSITIONS` raises
:class:`~wasmlet.pod.lifecycle.IllegalTransition`. Only the pod's worker calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wasmlet.pod.admission import Rejection
from wasmlet.pod.lifecycle import IllegalTransition, Record


# -- stages ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admitting:
    """Seen, not yet taken: admission decides once."""


@dataclass(frozen=True)
class Syncing:
    """Taken: its volumes are mounted and its containers run and restart by its policy."""


@dataclass(frozen=True)
class Completed:
    """Its containers ended and the terminal phase (Succeeded or Failed) was reported."""


@dataclass(frozen=True)
class Failed:
    """Failed as a whole: refused, past its deadline, evicted or not a wasm workload."""

    why: Rejection
    disrupted: bool = False  # evicted for node pressure: the DisruptionTarget condition


@dataclass(frozen=True)
class Terminating:
    """Its deletion was asked for: its containers stop within ``grace``, then the object goes."""

    grace: float


@dataclass(frozen=True)
class Removed:
    """Its API object is gone: stop what runs, clean up, forget it."""


Stage = Admitting | Syncing | Completed | Failed | Terminating | Removed


# -- events and effects ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Admitted:
    pass


@dataclass(frozen=True)
class Refused:
    why: Rejection


@dataclass(frozen=True)
class Fail:
    why: Rejection
    disrupted: bool = False


@dataclass(frozen=True)
class Ended:
    """The terminal phase its containers give was reported."""


@dataclass(frozen=True)
class DeletionRequested:
    grace: float  # seconds: deletionGracePeriodSeconds, else terminationGracePeriodSeconds


@dataclass(frozen=True)
class ObjectDeleted:
    pass


Event = Admitted | Refused | Fail | Ended | DeletionRequested | ObjectDeleted


@dataclass(frozen=True)
class StopContainers:
    """Stop every running container within ``grace`` seconds; ``announce`` records ``Killing``."""

    grace: float
    announce: bool = False


Effect = Record | StopContainers


# -- the table ------------------------------------------------------------------------------------
Step = Callable[[Stage, Any], tuple[Stage, list[Effect]]]


def _admitted(_stage: Stage, _event: Admitted) -> tuple[Stage, list[Effect]]:
    return Syncing(), []


def _refused(_stage: Stage, event: Refused) -> tuple[Stage, list[Effect]]:
    why = Rejection(event.why.reason, f"Pod was rejected: {event.why.message}")
    return Failed(why), [Record("Warning", why.reason, why.message)]


def _fail(_stage: Stage, event: Fail) -> tuple[Stage, list[Effect]]:
    effects: list[Effect] = [Record("Warning", event.why.reason, event.why.message), StopContainers(0.0)]
    return Failed(event.why, event.disrupted), effects


def _ended(stage: Stage, _event: Ended) -> tuple[Stage, list[Effect]]:
    return (stage if isinstance(stage, Failed) else Completed()), []


def _deletion(stage: Stage, event: DeletionRequested) -> tuple[Stage, list[Effect]]:
    if isinstance(stage, Terminating):  # asked again, perhaps with a shorter grace period
        grace = min(stage.grace, event.grace)
        return Terminating(grace), [StopContainers(grace)]
    return Terminating(event.grace), [StopContainers(event.grace, announce=True)]


def _object_deleted(_stage: Stage, _event: ObjectDeleted) -> tuple[Stage, list[Effect]]:
    return Removed(), [StopContainers(0.0)]


_ALIVE = (Admitting, Syncing, Completed, Failed, Terminating)
TRANSITIONS: dict[tuple[type, type], Step] = {
    (Admitting, Admitted): _admitted,
    (Admitting, Refused): _refused,
    (Admitting, Fail): _fail,
    (Syncing, Fail): _fail,
    **{(s, Ended): _ended for s in (Syncing, Completed, Failed)},
    **{(s, DeletionRequested): _deletion for s in _ALIVE},
    **{(s, ObjectDeleted): _object_deleted for s in (*_ALIVE, Removed)},
}
"""Every move a pod may make: (stage, event) -> how."""


def step(stage: Stage, event: Event) -> tuple[Stage, list[Effect]]:
    """Apply ``event``: the new stage and the effects to perform."""
    how = TRANSITIONS.get((type(stage), type(event)))
    if how is None:
        raise IllegalTransition(f"{type(event).__name__} cannot happen to a {type(stage).__name__} pod")
    return how(stage, event)


def adopted(phase: str, took_it: bool) -> Stage:
    """The stage of a pod seen for the first time, from the phase an earlier agent reported."""
    if phase in {"Succeeded", "Failed"}:
        return Completed()
    return Syncing() if took_it else Admitting()


def runs_containers(stage: Stage) -> bool:
    """Containers start and restart only while the pod syncs."""
    return isinstance(stage, Syncing)


def holds_resources(stage: Stage) -> bool:
    """What admission counts against the node's allocatable: taken pods not yet done."""
    return isinstance(stage, Syncing | Terminating)
