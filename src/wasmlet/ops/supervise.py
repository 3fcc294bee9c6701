"""A tiny process supervisor for hosts without systemd.

``wasmlet-supervise --name N --dir D -- argv...`` runs ``argv`` with its output appended
to ``D/N.log``, restarts it when it exits (1 s doubling to 30 s, reset after a minute of
running) and holds an exclusive lock on ``D/N.pid`` for as long as it lives. The lock,
not the pid alone, is what says "running": a stale pidfile left by a killed supervisor is
never mistaken for a live one, whatever process reuses its pid.

SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL after the grace period) and then
the supervisor. :mod:`wasmlet.ops.supervision` starts, inspects and stops supervisors.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0


def _log(log: int, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.write(log, f"{stamp} wasmlet-supervise: {message}\n".encode())


class Supervisor:
    def __init__(self, name: str, directory: Path, argv: Sequence[str], grace: float) -> None:
        self.name = name
        self.argv = list(argv)
        self.grace = grace
        self.pidfile = directory / f"{name}.pid"
        self.childpidfile = directory / f"{name}.child.pid"
        self.logfile = directory / f"{name}.log"
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"wasmlet-supervise: {self.name} is already supervised ({self.pidfile} is locked)",
                file=sys.stderr,
            )
            return 1
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        log = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        backoff = BACKOFF_START
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    self.child = subprocess.Popen(
                        self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True
                    )
                except OSError as exc:
                    _log(log, f"cannot start {self.name} ({self.argv[0]}): {exc}")
                    code: int | None = None
                else:
                    self.childpidfile.write_text(f"{self.child.pid}\n")
                    _log(log, f"started {self.name} (pid {self.child.pid})")
                    code = self._wait_child()
                if self.stopping:
                    break
                if time.monotonic() - started > HEALTHY_AFTER:
                    backoff = BACKOFF_START
                _log(log, f"{self.name} exited with {code}; restarting in {backoff:.0f}s")
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.2)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._stop_child(log)
            self.childpidfile.unlink(missing_ok=True)
            _log(log, f"supervisor for {self.name} stopped")
            os.ftruncate(lock_fd, 0)
            os.close(lock_fd)
        return 0

    def _wait_child(self) -> int | None:
        return self.child.wait() if self.child is not None else None

    def _stop_child(self, log: int) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            _log(log, f"{self.name} did not stop within {self.grace:.0f}s; killing it")
            child.kill()
            child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmlet-supervise", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    return Supervisor(args.name, args.dir, command, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
