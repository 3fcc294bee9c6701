"""wasmlet.ops.supervision + wasmlet.ops.supervise: start, inspect, restart and stop a supervised process.

Every supervisor started here lives in the test's tmp_path and is stopped (and reaped) in
the fixture teardown, whatever the test does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from wasmlet.ops import supervision
from wasmlet.ops.supervision import ServiceError, ServiceSpec

SLEEPER = (sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)")

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(probe: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def _reap(pid: int) -> None:
    """The supervisor is our child (supervision.start does not double-fork): collect it."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class Started:
    """Starts services and remembers them, so that teardown can stop and reap them."""

    def __init__(self) -> None:
        self.specs: list[ServiceSpec] = []
        self.pids: list[int] = []

    def __call__(self, spec: ServiceSpec) -> int:
        self.specs.append(spec)
        pid = supervision.start(spec, wait=10)
        self.pids.append(pid)
        return pid

    def track(self, spec: ServiceSpec) -> None:
        """Remember a service started some other way (e.g. by supervision.ensure)."""
        self.specs.append(spec)
        pid = supervision.status(spec.directory, spec.name).pid
        if pid is not None:
            self.pids.append(pid)

    def cleanup(self) -> None:
        for spec in self.specs:
            st = supervision.status(spec.directory, spec.name)
            supervision.stop(spec.directory, spec.name, timeout=5)
            if st.child_pid is not None and _alive(st.child_pid):  # belt and braces
                os.kill(st.child_pid, signal.SIGKILL)
        for pid in self.pids:
            _reap(pid)


@pytest.fixture
def started() -> Iterator[Started]:
    """``started(spec)`` starts ``spec``; teardown stops every service started through it."""
    tracker = Started()
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture
def spec(tmp_path: Path) -> ServiceSpec:
    return ServiceSpec(
        name="sleeper", directory=tmp_path / "run", argv=SLEEPER, env={"WASMLET_TEST": "1"}, grace=2.0
    )


def test_started_service_is_reported_running_with_supervisor_and_child_pids(
    spec: ServiceSpec, started: Started
) -> None:
    pid = started(spec)
    child_pid = _wait_for(lambda: supervision.status(spec.directory, spec.name).child_pid)
    st = supervision.status(spec.directory, spec.name)
    assert st.running is True
    assert st.pid == pid
    assert child_pid != pid
    assert _alive(pid)
    assert _alive(child_pid)
    assert spec.pidfile.read_text().strip() == str(pid)


def test_child_output_is_appended_to_the_log_file(spec: ServiceSpec, started: Started) -> None:
    started(spec)
    _wait_for(lambda: spec.logfile.exists() and "hi\n" in spec.logfile.read_text())


def test_needs_start_is_none_for_the_running_spec_and_explains_differences(
    spec: ServiceSpec, started: Started
) -> None:
    started(spec)
    assert supervision.needs_start(spec) is None
    assert (
        supervision.needs_start(ServiceSpec(spec.name, spec.directory, spec.argv, dict(spec.env), spec.grace))
        is None
    )
    other_argv = ServiceSpec(spec.name, spec.directory, (*spec.argv, "extra"), spec.env, spec.grace)
    other_env = ServiceSpec(spec.name, spec.directory, spec.argv, {"WASMLET_TEST": "2"}, spec.grace)
    assert supervision.needs_start(other_argv) is not None
    assert supervision.needs_start(other_env) is not None
    assert supervision.ensure(spec) is None


def test_needs_start_reports_not_running_before_start(spec: ServiceSpec) -> None:
    assert supervision.needs_start(spec) == "not running"


def test_supervisor_restarts_a_killed_child(spec: ServiceSpec, started: Started) -> None:
    pid = started(spec)
    first = _wait_for(lambda: supervision.status(spec.directory, spec.name).child_pid)
    os.kill(first, signal.SIGKILL)

    def new_child() -> int | None:
        child = supervision.status(spec.directory, spec.name).child_pid
        return child if child not in (None, first) else None

    second = _wait_for(new_child, timeout=5.0)
    assert _alive(second)
    st = supervision.status(spec.directory, spec.name)
    assert st.running is True
    assert st.pid == pid  # same supervisor


def test_stop_ends_supervisor_and_child(spec: ServiceSpec, started: Started) -> None:
    pid = started(spec)
    child_pid = _wait_for(lambda: supervision.status(spec.directory, spec.name).child_pid)
    assert supervision.stop(spec.directory, spec.name, timeout=10) is True
    st = supervision.status(spec.directory, spec.name)
    assert st.running is False
    assert not _alive(child_pid)
    assert not spec.directory.joinpath(f"{spec.name}.child.pid").exists()
    os.waitpid(pid, 0)  # the supervisor has exited (or this would block until the timeout)
    assert supervision.needs_start(spec) == "not running"


def test_stop_of_a_service_that_is_not_running_returns_false(spec: ServiceSpec) -> None:
    assert supervision.stop(spec.directory, spec.name, timeout=1) is False


def test_second_stop_returns_false(spec: ServiceSpec, started: Started) -> None:
    started(spec)
    assert supervision.stop(spec.directory, spec.name, timeout=10) is True
    assert supervision.stop(spec.directory, spec.name, timeout=1) is False


def test_stale_pidfile_of_dead_process_is_not_running(spec: ServiceSpec) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec.directory.mkdir(parents=True)
    spec.pidfile.write_text(f"{dead.pid}\n")
    spec.directory.joinpath(f"{spec.name}.child.pid").write_text(f"{dead.pid}\n")
    st = supervision.status(spec.directory, spec.name)
    assert st == supervision.Status(False, None, None)
    assert supervision.needs_start(spec) == "not running"
    assert supervision.stop(spec.directory, spec.name, timeout=1) is False


def test_stale_pidfile_does_not_prevent_start(spec: ServiceSpec, started: Started) -> None:
    spec.directory.mkdir(parents=True)
    spec.pidfile.write_text("999999999\n")
    pid = started(spec)
    assert supervision.status(spec.directory, spec.name).pid == pid


def test_second_supervisor_for_a_running_service_fails_to_start(spec: ServiceSpec, started: Started) -> None:
    pid = started(spec)
    with pytest.raises(ServiceError, match="already supervised"):
        started(spec)
    assert supervision.status(spec.directory, spec.name).pid == pid


def test_failed_start_keeps_the_recorded_spec_of_the_running_service(
    spec: ServiceSpec, started: Started
) -> None:
    started(spec)
    other = ServiceSpec(spec.name, spec.directory, (*spec.argv, "other"), spec.env, spec.grace)
    with pytest.raises(ServiceError):
        started(other)
    assert supervision.needs_start(other) is not None  # it still runs spec.argv, not other.argv


def test_ensure_restarts_a_service_whose_argv_changed(spec: ServiceSpec, started: Started) -> None:
    old_pid = started(spec)
    changed = ServiceSpec(spec.name, spec.directory, (*spec.argv, "v2"), spec.env, spec.grace)
    result = supervision.ensure(changed)
    started.track(changed)
    assert result is not None
    assert result.startswith("started")
    st = supervision.status(spec.directory, spec.name)
    assert st.running is True
    assert st.pid != old_pid
    assert supervision.needs_start(changed) is None
    assert supervision.ensure(changed) is None
