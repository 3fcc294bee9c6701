"""A container whose image is a ``wasi:http`` component, served by ``wasmtime serve``: one
supervised process of the wasmtime CLI per container.

wasmtime-py links ``wasi:http``'s types and outgoing handler, but its C API cannot make the
``incoming-request`` and ``response-outparam`` resources ``wasi:http/incoming-handler`` is called
with, so the CLI of the same wasmtime release serves the component (docs/networking.md):

- wasmlet binds the pod IP and containerPort itself and hands the socket over as systemd's socket
  activation does (``--systemd-listenfd``: descriptor 3, ``LISTEN_FDS``, ``LISTEN_PID``);
- the process runs in network and mount namespaces of its own (``unshare``): it accepts on the
  socket it was given and can reach no address at all; the pod's volumes are bind-mounted there
  (read-only ones read-only: wasmtime's ``--dir`` cannot say so) from the descriptors wasmlet
  resolved them to;
- the pod's variables reach the component by name (``--env NAME``) with their values in the
  process's environment, never on its command line (which every local user can read); names that
  the dynamic loader, the C library or wasmtime read for themselves are refused;
- caps: linear memory (``limits.memory``), open files, connections and requests at once, seconds
  per request; it dies with wasmlet (``PR_SET_PDEATHSIG``); it is stopped with SIGINT (wasmtime
  serve's graceful shutdown) and killed when the grace period ends; stdout and stderr go to the
  container's log, and an exit that is not 0 takes the end of stderr as its message.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from wasmlet import paths
from wasmlet.fsutil import write_atomic
from wasmlet.held_dir import HeldDir
from wasmlet.runtime.engine import EXIT_KILLED, MESSAGE_LIMIT, ExitStatus, RunSpec
from wasmlet.runtime.outputs import OutputPump, Pipe
from wasmlet.serve.listeners import ListenerLimits

log = logging.getLogger(__name__)

Preopen = tuple[HeldDir, str, bool]

WASMTIME_VERSION = "50.0.1"  # the release of wasmtime-py the node runs modules with
TIMEOUT = 30.0  # seconds one request may run
DEFAULT_PORT = 8080  # wasmtime serve's, for a container that names no port
BACKLOG = 128
# Read by the dynamic loader and the C library of the wasmtime process itself (glibc's
# unsecvars.h, which it ignores for setuid programs), by wasmtime, or by the socket handover.
HOST_ENV_NAMES = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    }
)
HOST_ENV_PREFIXES = ("LD_", "MALLOC_", "WASMTIME_", "LISTEN_")
EXEC_HELPER = Path(__file__).with_name("wasmtime_exec.py")


def default_cli() -> Path:
    """Where the node role builds the wasmtime CLI (``~/.wasmlet/bin/wasmtime-<version>/wasmtime``)."""
    return paths.home() / "bin" / f"wasmtime-{WASMTIME_VERSION}" / "wasmtime"


def host_env_refusal(names: Sequence[str]) -> str:
    """Why one of ``names`` cannot be passed through the wasmtime process's environment, or ""."""
    for name in names:
        if name in HOST_ENV_NAMES or name.startswith(HOST_ENV_PREFIXES):
            return (
                f"environment variable {name} cannot be given to a wasi:http component: the wasmtime "
                "process that serves it would read it for itself"
            )
    return ""


@dataclass(frozen=True)
class WasiHttpOptions:
    timeout: float = TIMEOUT
    limits: ListenerLimits = field(default_factory=ListenerLimits)


class _Spawner:
    """Starts every process from one long-lived thread: a child's ``PR_SET_PDEATHSIG`` fires when
    the thread that made it ends, and this one ends only with wasmlet."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], int], Future[int]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="wasi:http spawner", daemon=True).start()

    def spawn(self, start: Callable[[], int]) -> int:
        done: Future[int] = Future()
        self._jobs.put((start, done))
        return done.result()

    def _run(self) -> None:
        while True:
            start, done = self._jobs.get()
            try:
                done.set_result(start())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


class WasiHttpServing:
    """The node's ``wasi:http`` containers: what the container starter hands one to."""

    def __init__(self, cli: Path, work_dir: Path, options: WasiHttpOptions = WasiHttpOptions()) -> None:
        self.cli = cli
        self.options = options
        self.mount_root = work_dir / "mounts"  # a tmpfs in each process's own mount namespace
        self.mount_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # wasmtime's compilation cache: a component compiles once per node, not once per pod
        self.cache_config = work_dir / "cache.toml"
        cache_dir = work_dir / "cache"
        write_atomic(self.cache_config, f'[cache]\ndirectory = "{cache_dir}"\n'.encode())
        self.pump = OutputPump("wasi:http output")
        self._spawner: _Spawner | None = None
        self._lock = threading.Lock()

    def serve(
        self,
        spec: RunSpec,
        addresses: Sequence[tuple[str, int]],
        preopens: Sequence[Preopen],
        on_exit: Callable[[ExitStatus], None],
    ) -> WasiHttpContainer:
        """Serve component ``spec.module`` on ``addresses`` (one: the pod IP and port); the mounts
        are the process's from here on."""
        container = WasiHttpContainer(self, spec, on_exit)
        container.start(addresses, preopens)
        return container

    def spawn(self, spec: Mapping[str, object], fds: Sequence[int]) -> int:
        """Start :mod:`.wasmtime_exec` (empty environment) with ``fds`` as its descriptors 0, 1, 2,
        3, 5, 6, ... and ``spec`` (:mod:`marshal`: fast to load) on descriptor 4; its pid."""
        with self._lock:
            if self._spawner is None:
                self._spawner = _Spawner()
        spawner = self._spawner
        described = os.memfd_create("wasmtime-serve", os.MFD_CLOEXEC)
        try:
            data = memoryview(marshal.dumps({**spec, "parent": os.getpid()}))
            while data:  # a write may take less than all of it
                data = data[os.write(described, data) :]
            os.lseek(described, 0, os.SEEK_SET)
            ordered = [*fds[:4], described, *fds[4:]]
            # Copies above every target number, so that no dup2 overwrites a source not yet used.
            copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(ordered)) for fd in ordered]
        finally:
            os.close(described)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, copy, target) for target, copy in enumerate(copies)]
            argv = [sys.executable, "-I", "-S", str(EXEC_HELPER)]
            return spawner.spawn(lambda: os.posix_spawn(argv[0], argv, {}, file_actions=actions, setsid=True))
        finally:
            for copy in copies:
                os.close(copy)

    def close(self) -> None:
        self.pump.close()


class WasiHttpContainer:
    """The running container (a :class:`wasmlet.pod.run.RunningModule`)."""

    memory_base: int | None = None  # its memory is the process's, not the node's

    def __init__(
        self, serving: WasiHttpServing, spec: RunSpec, on_exit: Callable[[ExitStatus], None]
    ) -> None:
        self._serving = serving
        self._spec = spec
        self._on_exit = on_exit
        self._started = datetime.now(UTC)
        self._lock = threading.Lock()
        self._pidfd = -1
        self._stopping = False
        self._killed = False  # the grace period ended before the process did
        self._exited = threading.Event()
        self._stderr_tail = b""

    def start(self, addresses: Sequence[tuple[str, int]], preopens: Sequence[Preopen]) -> None:
        try:
            refusal = self._refusal(addresses)
            if refusal:
                self._end(ExitStatus(1, "Error", refusal, self._started, datetime.now(UTC)))
                return
            host, port = addresses[0]
            try:
                sock = _listen(host, port)
            except OSError as exc:
                message = f"cannot listen on {host}:{port}: {exc.strerror}"
                self._end(ExitStatus(1, "Error", message, self._started, datetime.now(UTC)))
                return
            with sock:
                pid = self._spawn(sock, preopens)
            log.info("%s: serving wasi:http on %s:%d (pid %d)", self._spec.name, host, port, pid)
        finally:
            for held, _guest, _read_only in preopens:  # the process has its own copies
                held.close()

    def _refusal(self, addresses: Sequence[tuple[str, int]]) -> str:
        if len(addresses) > 1:
            return (
                "hostPort is not served for wasi:http components (wasmtime serve takes one socket); "
                "reach the pod through its IP or a Service"
            )
        if not os.access(self._serving.cli, os.X_OK):
            return (
                f"this node has no wasmtime CLI at {self._serving.cli} to serve wasi:http components "
                "(the node role builds it; wasmlet --wasmtime-cli)"
            )
        return host_env_refusal(list(self._spec.env))

    def _spawn(self, sock: socket.socket, preopens: Sequence[Preopen]) -> int:
        serving, spec = self._serving, self._spec
        out = serving.pump.pipe(spec.stdout, f"{spec.name}: stdout")
        err = serving.pump.pipe(self._stderr, f"{spec.name}: stderr")
        try:
            with open(os.devnull, "rb") as devnull:
                stdio = [devnull.fileno(), out.write_fd, err.write_fd, sock.fileno()]
                described = {
                    "argv": self._argv(preopens),
                    "env": dict(spec.env),
                    "mount_root": str(serving.mount_root),
                    "read_only": [read_only for _held, _guest, read_only in preopens],
                    # wasmtime's own descriptors besides the module's: epoll, eventfds, the cache
                    "max_open_files": spec.max_open_files + 64,
                }
                pid = serving.spawn(described, [*stdio, *(held.fd for held, _guest, _ro in preopens)])
        except BaseException:
            for pipe in (out, err):
                pipe.finish(0)
            raise
        finally:
            out.opened()
            err.opened()
        with self._lock:
            self._pidfd = os.pidfd_open(pid)
        threading.Thread(
            target=self._wait, args=(pid, out, err), name=f"{spec.name}: wasmtime serve", daemon=True
        ).start()
        return pid

    def _argv(self, preopens: Sequence[Preopen]) -> list[str]:
        serving, spec, options = self._serving, self._spec, self._serving.options
        return [
            str(serving.cli),
            "serve",
            "--systemd-listenfd",
            "--no-logging-prefix",
            # wasi:cli next to wasi:http/proxy: environment, preopens, exit (Rust's std imports them)
            "-Scli",
            # each instance's memory from mmap, as the CLI does where pooling is not possible: no
            # reservation of 1000 memories per process (and the build has no pooling allocator)
            "-Opooling-allocator=n",
            f"--max-concurrent-connections={options.limits.max_connections}",
            f"--max-concurrent-requests={options.limits.max_in_flight}",
            f"-Wmax-memory-size={spec.memory_limit_bytes}",
            f"-Wtimeout={options.timeout:g}s",
            "-Ccache=y",
            f"-Ccache-config={serving.cache_config}",
            *(f"--env={name}" for name in spec.env),
            *(f"--dir={serving.mount_root}/{i}::{guest}" for i, (_held, guest, _ro) in enumerate(preopens)),
            str(spec.module),
        ]

    def _stderr(self, data: bytes) -> None:
        self._stderr_tail = (self._stderr_tail + data)[-MESSAGE_LIMIT:]
        self._spec.stderr(data)

    def _wait(self, pid: int, out: Pipe, err: Pipe) -> None:
        _pid, status = os.waitpid(pid, 0)
        with self._lock:
            self._exited.set()
            os.close(self._pidfd)
            self._pidfd = -1
        for pipe in (out, err):
            pipe.finish()
        code = os.waitstatus_to_exitcode(status)
        now = datetime.now(UTC)
        if code == 0:
            ended = ExitStatus(0, "Completed", "", self._started, now)
        elif self._killed:
            ended = ExitStatus(EXIT_KILLED, "Killed", "killed: the grace period ended", self._started, now)
        else:
            tail = self._stderr_tail.decode("utf-8", "replace").strip().splitlines()
            message = tail[-1] if tail else ""
            ended = ExitStatus(128 - code if code < 0 else code, "Error", message, self._started, now)
        self._end(ended)

    def _end(self, status: ExitStatus) -> None:
        self._on_exit(status)

    def stop(self, grace: float) -> None:
        """SIGINT now (requests being handled finish), SIGKILL after ``grace`` seconds."""
        with self._lock:
            if self._stopping or self._exited.is_set() or self._pidfd < 0:
                self._stopping = True
                return
            self._stopping = True
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reaped
                signal.pidfd_send_signal(self._pidfd, signal.SIGINT)
        threading.Thread(
            target=self._kill_after, args=(grace,), name=f"{self._spec.name}: stop", daemon=True
        ).start()

    def _kill_after(self, grace: float) -> None:
        if self._exited.wait(grace):
            return
        with self._lock:
            if self._pidfd >= 0:
                self._killed = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
