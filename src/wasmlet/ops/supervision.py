"""Start, inspect and stop processes run under :mod:`wasmlet.ops.supervise`.

A service is described by a :class:`ServiceSpec`; what was started is recorded next to
the pidfile as ``<name>.json``, so :func:`ensure` can tell "running as asked" (nothing to
do) from "running with other arguments" (restart) and "not running" (start).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wasmlet.fsutil import write_atomic


class ServiceError(Exception):
    """A supervised service could not be started or stopped."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    directory: Path
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    grace: float = 10.0

    @property
    def pidfile(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def specfile(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def logfile(self) -> Path:
        return self.directory / f"{self.name}.log"

    def recorded(self) -> dict[str, object]:
        data = asdict(self)
        data["directory"] = str(self.directory)
        data["argv"] = list(self.argv)
        return data


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    child_pid: int | None


def status(directory: Path, name: str) -> Status:
    """Whether the supervisor for ``name`` holds its pidfile lock."""
    pidfile = directory / f"{name}.pid"
    try:
        fd = os.open(pidfile, os.O_RDONLY)
    except FileNotFoundError:
        return Status(False, None, None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_int(pidfile)
            return Status(True, pid, _read_int(directory / f"{name}.child.pid"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return Status(False, None, None)
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0") or None
    except (FileNotFoundError, ValueError):
        return None


def _recorded(spec: ServiceSpec) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads(spec.specfile.read_text())
        return data
    except (FileNotFoundError, ValueError):
        return None


def start(spec: ServiceSpec, wait: float = 10.0) -> int:
    """Start the supervisor for ``spec`` in its own session; returns its pid."""
    spec.directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
    cmd = [
        sys.executable,
        "-m",
        "wasmlet.ops.supervise",
        "--name",
        spec.name,
        "--dir",
        str(spec.directory),
        "--grace",
        str(spec.grace),
        "--",
        *spec.argv,
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        st = status(spec.directory, spec.name)
        if st.running and st.pid == proc.pid:
            # Recorded only once this supervisor holds the lock: a refused start never
            # overwrites what the running one was started with.
            write_atomic(spec.specfile, json.dumps(spec.recorded(), indent=2, sort_keys=True).encode(), 0o600)
            if proc.stderr is not None:
                proc.stderr.close()
            return proc.pid
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise ServiceError(f"supervisor for {spec.name} exited at once: {err or proc.returncode}")
        time.sleep(0.05)
    raise ServiceError(f"supervisor for {spec.name} did not take its lock {spec.pidfile} within {wait}s")


def stop(directory: Path, name: str, timeout: float = 30.0) -> bool:
    """Stop the supervisor (and with it the child). Returns True if one was running."""
    st = status(directory, name)
    if not st.running or st.pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(st.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not status(directory, name).running:
            return True
        time.sleep(0.1)
    # The supervisor runs in its own session: kill everything in it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(st.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while status(directory, name).running:
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} (pid {st.pid}) survived SIGKILL")
        time.sleep(0.1)
    return True


def needs_start(spec: ServiceSpec) -> str | None:
    """Why ``spec`` must be (re)started, or None if it runs exactly as asked."""
    if not status(spec.directory, spec.name).running:
        return "not running"
    if _recorded(spec) != json.loads(json.dumps(spec.recorded())):
        return "running with a different command or environment"
    return None


def ensure(spec: ServiceSpec) -> str | None:
    """Make ``spec`` run as asked. Returns what was done, or None when nothing was needed."""
    why = needs_start(spec)
    if why is None:
        return None
    restart(spec)
    return f"started ({why})"


def restart(spec: ServiceSpec) -> int:
    """Stop whatever runs under ``spec.name`` and start ``spec``; returns the supervisor pid."""
    stop(spec.directory, spec.name, timeout=spec.grace + 5)
    return start(spec)
