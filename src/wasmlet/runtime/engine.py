"""Run wasm32-wasi modules on wasmtime, each on its own thread, behind a small interface.

The pod controller sees :class:`RunSpec`, :class:`Execution` and :class:`ExitStatus`, never a
wasmtime object. How stopping, CPU limits, exit codes and OOMKilled work: docs/runtime.md.
One file (497 lines): Runtime and Execution share the epoch-deadline callback and the CPU ticker.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from wasmlet.fsutil import write_atomic
from wasmlet.held_dir import HeldDir
from wasmlet.runtime import components, data_segments, limited_memory, outputs, wasi_files, wasi_poll

log = logging.getLogger(__name__)

DEFAULT_MAX_OPEN_FILES = 1024  # per container: the soft RLIMIT_NOFILE most Linux processes start with
# Per store: one linear memory (the memory limit caps each memory, so a second one would double
# it), tables of at most 1M elements (8 MiB each, outside the memory limit), ten of them.
MEMORIES_PER_STORE = 1
TABLES_PER_STORE = 10
TABLE_ELEMENTS = 1 << 20
EXIT_START_FAILED = 128
EXIT_TRAPPED = 134
EXIT_KILLED = 137
CPU_PERIOD = 0.1  # seconds, as CFS's default cpu.cfs_period_us
CPU_TICK = 0.005  # seconds between epoch ticks while a CPU-limited module runs
MESSAGE_LIMIT = 1024

_DEADLINE_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_UPDATE_DEADLINE_CONTINUE = 0


class ModuleError(Exception):
    """A module that cannot run: invalid bytes, unknown imports, no ``_start``."""


@dataclass(frozen=True)
class RunSpec:
    module: Path  # a .wasm file, or a .cwasm made by Runtime.precompile (the fast path)
    argv: Sequence[str]  # argv[0] is the program name
    env: Mapping[str, str]
    # What the module writes to fd 1 and fd 2, in chunks of up to 64 KiB, on the output thread.
    stdout: Callable[[bytes], None]
    stderr: Callable[[bytes], None]
    # (host dir, guest path, read_only). A HeldDir is handed over as /proc/self/fd/N (never
    # resolved again) and closed by the runtime once the module's store holds its own descriptor.
    preopens: Sequence[tuple[Path | HeldDir, str, bool]] = ()
    memory_limit_bytes: int | None = None
    max_open_files: int = DEFAULT_MAX_OPEN_FILES  # files the module may hold open at once
    cpu_limit: float | None = None  # cores (limits.cpu); None: not throttled
    name: str = ""  # e.g. "default/simpleserver/main", for the thread name and log records
    stdin: bytes = b""  # what the module reads on fd 0 (a WAGI request's body)
    # Call stdout and stderr as the module writes, in order, with no pipes (wasmtime calls them from
    # a thread of its own): for short runs (a WAGI request) whose caller needs the whole output
    # when Runtime.call returns.
    inline_output: bool = False


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    reason: str  # Completed, Error, OOMKilled or Killed
    message: str
    started_at: datetime
    finished_at: datetime


class Runtime:
    """``open_files_budget``: files all modules together may hold open (the node's descriptors
    less what it keeps for itself); None: no node-wide budget, only each module's own cap."""

    def __init__(self, cache_dir: Path, *, open_files_budget: int | None = None) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        limited_memory.install(config)  # memories that enforce RunSpec.memory_limit_bytes
        self._engine = wasmtime.Engine(config)
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._ready: dict[Path, wasmtime.InstancePre] = {}
        self._executions: set[Execution] = set()
        self._throttled = 0  # running executions with a cpu_limit: the ticker runs while > 0
        self._ticker_alive = False
        self._ticking = threading.Condition(self._lock)
        self._current = threading.local()  # .execution: the Execution running on this thread
        self._output = outputs.OutputPump()
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._linker.allow_shadowing = True
        self._linker.define_func(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            wasi_poll.func_type(),
            self._poll_oneoff,
            access_caller=True,
        )
        self._node_files = wasi_files.NodeFiles(
            open_files_budget if open_files_budget is not None else 1 << 62
        )
        self._file_shadows = wasi_files.Shadows(self._engine, self._current_files)
        self._file_shadows.define(self._linker)

    def precompile(self, wasm: Path) -> Path:
        """Compile ``wasm`` once into ``cache_dir/<sha256>.cwasm``; reuse it when present. A
        ``wasi:http`` component is checked and kept as ``<sha256>.http.wasm`` instead."""
        try:
            data = wasm.read_bytes()
        except OSError as exc:
            raise ModuleError(f"module {wasm}: cannot read it: {exc.strerror}") from exc
        if components.is_component(data):  # served by wasmtime serve, not loaded here
            try:
                return components.prepare(self._engine, data, wasm, self._cache_dir)
            except components.ComponentError as exc:
                raise ModuleError(str(exc)) from exc
        target = self._cache_dir / f"{hashlib.sha256(data).hexdigest()}.cwasm"
        with self._lock:
            if target in self._ready:  # loaded once: each load is another mmap (and descriptor)
                return target
        if target.exists():
            try:
                self._load(target)
                return target
            except ModuleError as exc:  # e.g. made by another wasmtime version: compile again
                log.info("recompiling %s: %s", wasm, exc)
        if not data.startswith(b"\0asm"):
            raise ModuleError(f"module {wasm}: not a WebAssembly binary (no \\0asm header)")
        module = self._compile(data, wasm)
        self._prepare(module, wasm)
        write_atomic(target, bytes(module.serialize()))
        return target

    def _compile(self, data: bytes, wasm: Path) -> wasmtime.Module:
        """Compile ``data`` with its data segments joined; an invalid module is reported from the
        bytes as the user wrote them."""
        joined = data_segments.coalesce(data)
        if joined is not data:
            try:
                return wasmtime.Module(self._engine, joined)
            except wasmtime.WasmtimeError:
                pass  # compiled as written below: its error, or a module the rewrite got wrong
        try:
            module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(f"module {wasm}: invalid: {_cause(exc)}") from exc
        if joined is not data:
            log.warning(
                "module %s: compiled with its data segments as written (joined, it was refused)", wasm
            )
        return module

    def forget(self, cwasm: Path) -> None:
        """Drop the loaded copy of ``cwasm`` (removed by garbage collection); running modules keep theirs."""
        with self._lock:
            self._ready.pop(cwasm, None)

    def start(self, spec: RunSpec, on_exit: Callable[[ExitStatus], None]) -> Execution:
        """Run ``spec`` on a new daemon thread; ``on_exit`` is called once, from that thread."""
        execution = Execution(self, spec, on_exit)
        with self._lock:
            self._executions.add(execution)
        thread_name = spec.name or f"wasm {spec.module.name}"
        threading.Thread(target=execution._run, name=thread_name, daemon=True).start()
        return execution

    def call(self, spec: RunSpec, watch: Callable[[Execution], None] | None = None) -> ExitStatus:
        """Run ``spec`` on this thread and return how it ended. ``watch`` gets the execution before
        it starts, to :meth:`Execution.stop` it from another thread (at a deadline, say)."""
        execution = Execution(self, spec, lambda _status: None)
        with self._lock:
            self._executions.add(execution)
        if watch is not None:
            watch(execution)
        execution._run()
        if execution._status is None:  # _run always sets it
            raise RuntimeError(f"{execution.name}: ended without an exit status")
        return execution._status

    def _throttle(self, add: int) -> None:
        """Count a CPU-limited execution in (+1) or out (-1); start the ticker for the first."""
        with self._ticking:
            self._throttled += add
            if self._throttled > 0 and not self._ticker_alive:
                self._ticker_alive = True
                threading.Thread(target=self._tick, name="wasm cpu ticker", daemon=True).start()
            self._ticking.notify_all()

    def _tick(self) -> None:
        with self._ticking:
            while self._throttled > 0:
                self._ticking.wait(CPU_TICK)
                self._engine.increment_epoch()
            self._ticker_alive = False

    def close(self) -> None:
        """Stop every execution, wait briefly for them, and drop the module cache."""
        with self._lock:
            executions = list(self._executions)
        for execution in executions:
            execution.stop(0)
        for execution in executions:
            execution.wait(2)
        with self._lock:
            self._ready.clear()
        self._output.close()

    def _instance_pre(self, module: Path) -> wasmtime.InstancePre:
        if module.suffix != ".cwasm":
            module = self.precompile(module)
        with self._lock:
            ready = self._ready.get(module)
        return self._load(module) if ready is None else ready

    def _load(self, cwasm: Path) -> wasmtime.InstancePre:
        try:
            module = wasmtime.Module.deserialize_file(self._engine, str(cwasm))
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(f"module {cwasm}: cannot load precompiled module: {_cause(exc)}") from exc
        ready = self._prepare(module, cwasm)
        with self._lock:  # loaded by two threads at once: keep one (each holds an mmap and a descriptor)
            return self._ready.setdefault(cwasm, ready)

    def _prepare(self, module: wasmtime.Module, source: Path) -> wasmtime.InstancePre:
        start = next((export for export in module.exports if export.name == "_start"), None)
        if start is None or not isinstance(start.type, wasmtime.FuncType):
            raise ModuleError(f"module {source}: no `_start` function: not a WASI command module")
        try:
            return self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(f"module {source}: {_cause(exc)} (wasmlet provides WASI preview1)") from exc

    def _poll_oneoff(self, caller: wasmtime.Caller, *addresses: int) -> int:
        execution: Execution | None = getattr(self._current, "execution", None)
        memory = caller.get("memory")
        if execution is None or not isinstance(memory, wasmtime.Memory):
            return wasi_poll.ERRNO_NOTSUP
        # wasmtime-py passes an exception from a host function to the caller through a process-wide
        # global, which a trap on another thread could pick up: only a stop (which decides the
        # exit status by itself) raises; anything else becomes an errno.
        try:
            return wasi_poll.poll_oneoff(
                memory, caller, addresses, execution._stopping.wait, execution._monotonic_origin_ns
            )
        except wasi_poll.Interrupted:
            raise
        except Exception:
            log.exception("%s: poll_oneoff failed", execution.name)
            return wasi_poll.ERRNO_FAULT

    def _current_files(self) -> wasi_files.FileTable | None:
        execution: Execution | None = getattr(self._current, "execution", None)
        return None if execution is None else execution._files

    def _pipes(self, spec: RunSpec, name: str) -> tuple[outputs.Pipe, outputs.Pipe]:
        stdout = self._output.pipe(spec.stdout, f"{name}: stdout")
        try:
            return stdout, self._output.pipe(spec.stderr, f"{name}: stderr")
        except BaseException:
            stdout.opened()
            self._output.abandon(stdout)
            raise

    def _finished(self, execution: Execution) -> None:
        with self._lock:
            self._executions.discard(execution)


class Execution:
    """One run of a module; made by :meth:`Runtime.start`."""

    def __init__(self, runtime: Runtime, spec: RunSpec, on_exit: Callable[[ExitStatus], None]) -> None:
        self.name = spec.name or spec.module.name
        self._runtime = runtime
        self._spec = spec
        self._on_exit = on_exit
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._status: ExitStatus | None = None
        self._monotonic_origin_ns = 0
        self._deadline_callback = _DEADLINE_CALLBACK(self._on_epoch_deadline)  # alive as long as us
        self._files = wasi_files.FileTable(spec.max_open_files, runtime._node_files, runtime._file_shadows)
        self._period_start = 0.0  # CFS-like quota accounting (cpu_limit only)
        self._period_cpu = 0.0
        self._memory_limit = limited_memory.MemoryLimit(spec.memory_limit_bytes)  # and its refusals
        # Where the module's exported linear memory starts while it runs (wasmtime never moves a
        # 32-bit memory): what memory_stats.resident_bytes measures it by. None before and after.
        self.memory_base: int | None = None

    def stop(self, grace: float) -> None:
        """Kill the module now (WASI preview1 has no signal to ask it first); returns at once.

        The module ends within milliseconds whether it spins or sleeps, well inside ``grace``.
        """
        if self._done.is_set() or self._stopping.is_set():
            return
        log.info("%s: stopping (grace %.0fs)", self.name, grace)
        self._stopping.set()  # before the epoch moves: the deadline callback must see it
        self._runtime._engine.increment_epoch()

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """The exit status once the module has ended and ``on_exit`` has returned, else None."""
        self._done.wait(timeout)
        return self._status

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _run(self) -> None:
        started_at = datetime.now(UTC)
        self._runtime._current.execution = self
        limited = self._spec.cpu_limit is not None
        if limited:
            self._period_start, self._period_cpu = time.monotonic(), time.thread_time()
            self._runtime._throttle(+1)
        try:
            exit_code, reason, message = self._execute()
        except Exception as exc:  # a bug here must still end in on_exit
            log.exception("%s: runtime failure", self.name)
            exit_code, reason, message = EXIT_START_FAILED, "Error", f"wasmlet runtime failure: {exc}"
        finally:
            if limited:
                self._runtime._throttle(-1)
        self._status = ExitStatus(exit_code, reason, message, started_at, datetime.now(UTC))
        log.info("%s: exited with %d (%s) %s", self.name, exit_code, reason, message)
        try:
            self._on_exit(self._status)
        except Exception:
            log.exception("%s: on_exit callback failed", self.name)
        finally:
            self._runtime._finished(self)
            self._done.set()

    def _execute(self) -> tuple[int, str, str]:
        try:
            return self._execute_held()
        finally:
            self._release_preopens()  # when the module could not start: its store never took them

    def _release_preopens(self) -> None:
        for host_dir, _guest, _read_only in self._spec.preopens:
            if isinstance(host_dir, HeldDir):
                host_dir.close()

    def _execute_held(self) -> tuple[int, str, str]:
        spec = self._spec
        try:
            ready = self._runtime._instance_pre(spec.module)
        except ModuleError as exc:
            return EXIT_START_FAILED, "Error", str(exc)
        try:
            pipes = () if spec.inline_output else self._runtime._pipes(spec, self.name)
        except OSError as exc:  # out of file descriptors, say
            return EXIT_START_FAILED, "Error", f"cannot start {spec.module}: no output pipes: {exc}"
        try:
            try:
                store = self._store(pipes)
            except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                return EXIT_START_FAILED, "Error", f"cannot start {spec.module}: {_cause(exc)}"
            finally:
                self._release_preopens()  # the store opened its own descriptors of them
            try:
                return self._run_in(store, ready)
            finally:
                self._files.close()
                # Free the WASI context now, not when the garbage collector gets to it: it holds the
                # preopened directories open (the volumes of a pod that may be gone already) and
                # the write ends of the output pipes, whose end-of-file finishes the output.
                store.close()
        finally:
            for pipe in pipes:
                pipe.finish()

    def _run_in(self, store: wasmtime.Store, ready: wasmtime.InstancePre) -> tuple[int, str, str]:
        spec = self._spec
        try:
            with limited_memory.limiting(self._memory_limit):
                instance = ready.instantiate(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            reason = "OOMKilled" if self._memory_limit.refusals else "Error"
            return EXIT_START_FAILED, reason, f"cannot start {spec.module}: {_cause(exc)}"
        exports = instance.exports(store)
        memory = exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            self.memory_base = ctypes.cast(memory.data_ptr(store), ctypes.c_void_p).value
        try:
            exit_code, message = self._call_start(store, exports["_start"])
        finally:
            self.memory_base = None
        if self._stopping.is_set():
            return EXIT_KILLED, "Killed", "killed: stop requested"
        if exit_code == 0:
            return 0, "Completed", ""
        if self._memory_limit.refusals:  # the limit refused a grow, and then the module failed
            refusal = self._memory_limit.refusals[0]
            return exit_code, "OOMKilled", f"{message}; {refusal}"[:MESSAGE_LIMIT] if message else refusal
        return exit_code, "Error", message

    def _store(self, pipes: tuple[outputs.Pipe, ...]) -> wasmtime.Store:
        store = wasmtime.Store(self._runtime._engine)
        store.set_limits(  # no memory_size: the store's limiter would refuse a grow without telling
            table_elements=TABLE_ELEMENTS,
            tables=TABLES_PER_STORE,
            memories=MEMORIES_PER_STORE,
        )
        store.set_wasi(self._wasi_config(pipes))
        for pipe in pipes:
            pipe.opened()  # wasmtime holds its own write ends now
        self._monotonic_origin_ns = time.monotonic_ns()
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._deadline_callback, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)
        return store

    def _call_start(self, store: wasmtime.Store, start: object) -> tuple[int, str]:
        """Run ``_start``: (exit code, trap cause)."""
        if not isinstance(start, wasmtime.Func):
            raise TypeError("_start is not a function")  # Runtime._prepare checked it
        if self._stopping.is_set():  # after this check, stop() moves the epoch past our deadline
            return EXIT_KILLED, ""
        try:
            start(store)
        except wasmtime.ExitTrap as exc:
            return exc.code, ""
        except (wasmtime.WasmtimeError, wasmtime.Trap, wasi_poll.Interrupted) as exc:
            return EXIT_TRAPPED, _cause(exc)
        return 0, ""

    def _wasi_config(self, pipes: tuple[outputs.Pipe, ...]) -> wasmtime.WasiConfig:
        spec = self._spec
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(spec.argv)
        wasi.env = list(spec.env.items())
        if pipes:
            stdout, stderr = pipes
            wasi.stdout_file = stdout.path
            wasi.stderr_file = stderr.path
        else:
            wasi.stdout_custom = spec.stdout
            wasi.stderr_custom = spec.stderr
        if spec.stdin:
            stdin = ffi.bytes_to_capi(spec.stdin)  # the config takes over the vector's contents
            ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(stdin))
        for host_dir, guest_path, read_only in spec.preopens:
            host = host_dir.proc_path if isinstance(host_dir, HeldDir) else str(host_dir)
            wasi.preopen_dir(host, guest_path, fs_mutable=not read_only)
        return wasi

    def _on_epoch_deadline(self, _context: Any, _data: Any, delta: Any, kind: Any) -> int:
        """Called on this execution's thread whenever the engine epoch passed its deadline."""
        if self._spec.cpu_limit is not None and not self._stopping.is_set():
            self._enforce_quota(self._spec.cpu_limit)
        if self._stopping.is_set():
            error = ffi.wasmtime_error_new(b"stopped by the kubelet")
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0

    def _enforce_quota(self, cores: float) -> None:
        """Sleep out the rest of the period once this period's CPU quota is used (on our thread)."""
        now = time.monotonic()
        if now - self._period_start >= CPU_PERIOD:
            self._period_start, self._period_cpu = now, time.thread_time()
            return
        if time.thread_time() - self._period_cpu < cores * CPU_PERIOD:
            return
        self._stopping.wait(self._period_start + CPU_PERIOD - now)
        self._period_start, self._period_cpu = time.monotonic(), time.thread_time()


def _cause(error: Exception) -> str:
    """The cause of a wasmtime error on one line, without the wasm backtrace."""
    text = str(error)
    head, found, cause = text.partition("Caused by:")
    lines = cause.splitlines() if found else head.split("wasm backtrace:")[0].splitlines()
    parts = [re.sub(r"^\d+: ", "", line.strip()) for line in lines]  # "0: memory fault at ..."
    return "; ".join(part for part in parts if part)[:MESSAGE_LIMIT]
