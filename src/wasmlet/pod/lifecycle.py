"""A container's lifecycle as data: its state is a value, and one table says what moves it where.

A container is :class:`Waiting`, :class:`Running` or :class:`Terminated` (the API's three
states). :func:`step` applies one :data:`Event` to a :class:`Container` and returns the new
container and the :data:`Effect` s the caller performs (events to record, when to look again).
:data:`TRANSITIONS` lists every (state, event) pair that may happen; any other pair raises
:class:`IllegalTransition`, so a bug shows as an error, not as a status that drifts. Only the
pod's worker calls :func:`step`; a module's thread hands its exit over as an :class:`Exited`.

The kubelet's words and timings: ``ErrImagePull`` on a failed pull, ``ImagePullBackOff`` on the
next failure while it still fails. Restarts as kubelet's ``doBackOff`` times them
(pkg/kubelet/kuberuntime/kuberuntime_manager.go): the first restart after an exit is immediate
and opens a back-off of 10 s; each later exit waits out the back-off (``CrashLoopBackOff``, a
``BackOff`` event whatever the exit code) and the restart doubles it, up to 5 min; a run of more
than 10 min starts over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wasmlet.kube.client import timestamp
from wasmlet.pod.go_strings import go_duration
from wasmlet.runtime.engine import ExitStatus

BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
CONFIG_RETRY = 10.0  # a container that cannot be configured yet is tried again this often


# -- states ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waiting:
    reason: str = "ContainerCreating"
    message: str = ""

    def to_api(self) -> dict[str, Any]:
        waiting = {"reason": self.reason, **({"message": self.message} if self.message else {})}
        return {"waiting": waiting}


@dataclass(frozen=True)
class Running:
    started_at: str  # RFC 3339, as the API shows it

    def to_api(self) -> dict[str, Any]:
        return {"running": {"startedAt": self.started_at}}


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str  # Completed, Error or OOMKilled
    started_at: str
    finished_at: str
    container_id: str = ""
    message: str = ""

    def to_api(self) -> dict[str, Any]:
        terminated: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.container_id:
            terminated["containerID"] = self.container_id
        if self.message:
            terminated["message"] = self.message
        return {"terminated": terminated}


State = Waiting | Running | Terminated


def ended(status: ExitStatus, container_id: str) -> Terminated:
    """How a run ended, as the API shows it: a module killed by the node is an ``Error``."""
    return Terminated(
        status.exit_code,
        status.reason if status.reason != "Killed" else "Error",
        timestamp(status.started_at),
        timestamp(status.finished_at),
        container_id,
        status.message,
    )


def state_from_api(state: dict[str, Any]) -> State | None:
    """The state an API container status shows (an earlier agent's report), if it shows one."""
    if "running" in state:
        return Running(str((state["running"] or {}).get("startedAt") or timestamp()))
    if "terminated" in state:
        t = state["terminated"] or {}
        return Terminated(
            int(t.get("exitCode", 0)),
            str(t.get("reason", "")),
            str(t.get("startedAt") or ""),
            str(t.get("finishedAt") or ""),
            str(t.get("containerID") or ""),
            str(t.get("message") or ""),
        )
    if "waiting" in state:
        w = state["waiting"] or {}
        return Waiting(str(w.get("reason", "ContainerCreating")), str(w.get("message") or ""))
    return None


@dataclass(frozen=True)
class Container:
    """What the node knows of one container: its state and what the next decisions need."""

    state: State = Waiting()
    last_state: Terminated | None = None  # the previous run's end, as ``lastState`` shows it
    exited: Terminated | None = None  # how the current run ended; None before a run and while it runs
    restart_count: int = 0
    backoff: float = 0.0  # kubelet's crash-loop back-off, seconds; 0: none (restart at once)
    retry_backoff: float = 0.0  # seconds of the pull or create back-off; 0: none under way
    not_before: float = 0.0  # monotonic time before which it may not start again

    @property
    def ever_started(self) -> bool:
        return self.exited is not None or isinstance(self.state, Running) or self.restart_count > 0


# -- events and effects ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Unsupported:
    """A field wasmlet refuses (probes, a tty...): the container cannot be created as asked."""

    message: str


@dataclass(frozen=True)
class ConfigFailed:
    """Its environment or mounts cannot be built yet (a missing ConfigMap, say)."""

    message: str


@dataclass(frozen=True)
class CreateFailed:
    """The module was pulled but wasmtime cannot run it."""

    message: str


@dataclass(frozen=True)
class PullFailed:
    image: str
    reason: str  # the pull error's reason, e.g. ErrImagePull or ErrImageNeverPull
    message: str  # what failed, without the "Failed to pull image" prefix


@dataclass(frozen=True)
class Started:
    started_at: str


@dataclass(frozen=True)
class Exited:
    end: Terminated
    ran_for: float  # seconds
    restart: bool  # the restart policy restarts it and the pod is not being killed
    pod: str  # as kubelet names it in messages: name_namespace(uid)
    container_name: str


Event = Unsupported | ConfigFailed | CreateFailed | PullFailed | Started | Exited


@dataclass(frozen=True)
class Record:
    """An event to record on the pod (``kubectl describe``)."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class LookAgain:
    """Sync the pod again after this many seconds."""

    after: float


Effect = Record | LookAgain


class IllegalTransition(Exception):
    """An event that cannot happen in the container's state: a bug in the caller."""


# -- the table --------------------------------------------------------------------------------------
Step = Callable[[Container, Any, float], tuple[Container, list[Effect]]]


def _retry_later(c: Container, now: float) -> Container:
    """The pull or create back-off: 10 s, doubling to 5 min."""
    backoff = BACKOFF_START if c.retry_backoff == 0 else min(c.retry_backoff * 2, BACKOFF_MAX)
    return dataclasses.replace(c, retry_backoff=backoff, not_before=now + backoff)


def _unsupported(c: Container, e: Unsupported, _now: float) -> tuple[Container, list[Effect]]:
    waiting = Waiting("CreateContainerConfigError", e.message)
    if c.state == waiting:
        return c, []  # said already: the spec cannot change
    return dataclasses.replace(c, state=waiting), [Record("Warning", "Failed", f"Error: {e.message}")]


def _config_failed(c: Container, e: ConfigFailed, _now: float) -> tuple[Container, list[Effect]]:
    waiting = dataclasses.replace(c, state=Waiting("CreateContainerConfigError", e.message))
    return waiting, [Record("Warning", "Failed", f"Error: {e.message}"), LookAgain(CONFIG_RETRY)]


def _create_failed(c: Container, e: CreateFailed, now: float) -> tuple[Container, list[Effect]]:
    waiting = _retry_later(dataclasses.replace(c, state=Waiting("CreateContainerError", e.message)), now)
    return waiting, [Record("Warning", "Failed", f"Error: {e.message}"), LookAgain(waiting.retry_backoff)]


def _pull_failed(c: Container, e: PullFailed, now: float) -> tuple[Container, list[Effect]]:
    again = isinstance(c.state, Waiting) and c.state.reason in {"ErrImagePull", "ImagePullBackOff"}
    reason = "ImagePullBackOff" if again else e.reason
    message = f'Failed to pull image "{e.image}": {e.message}'
    waiting = _retry_later(dataclasses.replace(c, state=Waiting(reason, message)), now)
    effects: list[Effect] = [Record("Warning", "Failed", message)]
    if again:
        effects.append(Record("Normal", "BackOff", f'Back-off pulling image "{e.image}"'))
    return waiting, [*effects, LookAgain(waiting.retry_backoff)]


def _started(c: Container, e: Started, _now: float) -> tuple[Container, list[Effect]]:
    restart = c.exited is not None and c.ever_started
    # kubelet's backOff.Next on a restart: the first opens the back-off, each later one doubles it.
    backoff = (BACKOFF_START if c.backoff == 0 else min(c.backoff * 2, BACKOFF_MAX)) if restart else c.backoff
    return (
        dataclasses.replace(
            c,
            state=Running(e.started_at),
            last_state=c.exited if restart else c.last_state,
            exited=None,
            restart_count=c.restart_count + 1 if restart else c.restart_count,
            backoff=backoff,
            retry_backoff=0.0,
        ),
        [],
    )


def _exited(c: Container, e: Exited, now: float) -> tuple[Container, list[Effect]]:
    ended = dataclasses.replace(c, state=e.end, exited=e.end)
    if e.ran_for > BACKOFF_RESET_AFTER:  # kubelet's HasExpiredFunc: ran long enough to start over
        ended = dataclasses.replace(ended, backoff=0.0)
    if not e.restart or ended.backoff == 0:
        return ended, []  # stays, or restarts at the next sync (now)
    name = e.container_name
    message = f"back-off {go_duration(ended.backoff)} restarting failed container={name} pod={e.pod}"
    waiting = dataclasses.replace(
        ended, state=Waiting("CrashLoopBackOff", message), last_state=e.end, not_before=now + ended.backoff
    )
    back_off = Record("Warning", "BackOff", f"Back-off restarting failed container {name} in pod {e.pod}")
    return waiting, [back_off, LookAgain(ended.backoff)]


_NOT_RUNNING = (Waiting, Terminated)
TRANSITIONS: dict[tuple[type, type], Step] = {
    **{(s, Unsupported): _unsupported for s in _NOT_RUNNING},
    **{(s, ConfigFailed): _config_failed for s in _NOT_RUNNING},
    **{(s, CreateFailed): _create_failed for s in _NOT_RUNNING},
    **{(s, PullFailed): _pull_failed for s in _NOT_RUNNING},
    **{(s, Started): _started for s in _NOT_RUNNING},
    (Running, Exited): _exited,
}
"""Every move a container may make: (state, event) -> how. A running module can only exit."""


def step(container: Container, event: Event, now: float) -> tuple[Container, list[Effect]]:
    """Apply ``event`` at monotonic time ``now``: the new container and the effects to perform."""
    how = TRANSITIONS.get((type(container.state), type(event)))
    if how is None:
        state = type(container.state).__name__
        raise IllegalTransition(f"{type(event).__name__} cannot happen to a {state} container")
    return how(container, event, now)


def resumed(previous: dict[str, Any]) -> Container:
    """A container's history carried over from the status an earlier agent reported."""
    state = state_from_api(previous.get("state") or {})
    last = state_from_api(previous.get("lastState") or {})
    last_end = last if isinstance(last, Terminated) else None
    restarts = int(previous.get("restartCount", 0))
    if isinstance(state, Running):  # it died with the agent that ran it: the next start restarts it
        died = Terminated(
            137, "Error", state.started_at, timestamp(), message="the wasmlet node agent restarted"
        )
        return Container(last_state=died, restart_count=restarts + 1)
    if isinstance(state, Terminated):
        return Container(state=state, last_state=last_end, exited=state, restart_count=restarts)
    # Waiting: to be restarted after a run (that run's end), or never started yet.
    return Container(last_state=last_end, exited=last_end, restart_count=restarts)
