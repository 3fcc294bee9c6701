"""Caps on the files a module holds open, so that no pod takes the node's descriptors.

``path_open``, ``fd_close`` and ``fd_renumber`` are shadowed and counted per container
(:class:`FileTable`) and for the node (:class:`NodeFiles`), through a per-store trampoline
instance; why and how: docs/runtime.md.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

log = logging.getLogger(__name__)

WASI = "wasi_snapshot_preview1"
ERRNO_FAULT = 21
ERRNO_MFILE = 33  # too many open files in this container
ERRNO_NFILE = 41  # too many open files on the node
ERRNO_NOTSUP = 58
SHADOWED = ("path_open", "fd_close", "fd_renumber")
_I32, _I64 = "i32", "i64"
_PARAMS = {
    "path_open": (_I32, _I32, _I32, _I32, _I32, _I64, _I64, _I32, _I32),
    "fd_close": (_I32,),
    "fd_renumber": (_I32, _I32),
}
_OPENED_FD = 8  # path_open's argument: where the new descriptor is written
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
RawArgs = Any  # ctypes.POINTER(ffi.wasmtime_val_raw_t): arguments in, the result in [0] out

TRAMPOLINE_WAT = f"""(module
  (import "env" "memory" (memory 0))
  (import "{WASI}" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{WASI}" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "{WASI}" "fd_renumber" (func $fd_renumber (param i32 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "path_open") (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)
    (call $path_open (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (local.get 5) (local.get 6) (local.get 7) (local.get 8)))
  (func (export "fd_close") (param i32) (result i32) (call $fd_close (local.get 0)))
  (func (export "fd_renumber") (param i32 i32) (result i32)
    (call $fd_renumber (local.get 0) (local.get 1))))"""


class NodeFiles:
    """The node's budget of descriptors for modules: what the process may open less a reserve."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._used = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self._used >= self.budget:
                return False
            self._used += 1
            return True

    def release(self, count: int = 1) -> None:
        with self._lock:
            self._used -= count

    @property
    def used(self) -> int:
        return self._used


class Shadows:
    """The real WASI functions and the trampoline module, one per Engine, and the shadows' definition."""

    def __init__(self, engine: wasmtime.Engine, current: Callable[[], FileTable | None]) -> None:
        self.real = wasmtime.Linker(engine)
        self.real.define_wasi()
        self.trampoline = wasmtime.Module(engine, TRAMPOLINE_WAT)
        self._current = current
        self._callbacks: list[Any] = []  # the C callbacks live as long as the linker that calls them

    def define(self, linker: wasmtime.Linker) -> None:
        """Shadow the three functions in ``linker`` (which must allow shadowing)."""
        kinds = {_I32: wasmtime.ValType.i32, _I64: wasmtime.ValType.i64}
        for name in SHADOWED:
            ty = wasmtime.FuncType([kinds[kind]() for kind in _PARAMS[name]], [wasmtime.ValType.i32()])
            callback = ffi.wasmtime_func_unchecked_callback_t(self._shadow(name))
            self._callbacks.append(callback)
            module, field = WASI.encode(), name.encode()
            error = ffi.wasmtime_linker_define_func_unchecked(
                linker.ptr(), module, len(module), field, len(field), ty.ptr(), callback, None, _NO_FINALIZER
            )
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)

    def _shadow(self, name: str) -> Callable[[Any, Any, RawArgs, int], int]:
        def shadow(_env: Any, caller: Any, args: RawArgs, _count: int) -> int:
            # Never raise into wasmtime: a ctypes callback that raises returns 0 (success) with
            # the arguments still in the result slot.
            try:
                table = self._current()
                args[0].i32 = ERRNO_NOTSUP if table is None else getattr(table, name)(caller, args)
            except Exception:
                log.exception("%s failed", name)
                args[0].i32 = ERRNO_FAULT
            return 0

        return shadow


class FileTable:
    """The files one running module holds open, counted against its cap and the node's budget.

    Made per execution; :meth:`close` returns what is still counted to the node (the store closes
    the files themselves). The shadows run on the module's own thread, with the raw arguments.
    """

    def __init__(self, cap: int, node: NodeFiles, shadows: Shadows) -> None:
        self.cap = cap
        self.refused = 0  # path_open calls refused by a cap
        self._node = node
        self._shadows = shadows
        self._funcs: dict[str, Any] = {}  # name -> ffi.wasmtime_func_t of the trampoline's export
        self._memory: Any = None  # ffi.wasmtime_memory_t of the module
        self._open: set[int] = set()

    def path_open(self, caller: Any, args: RawArgs) -> int:
        if len(self._open) >= self.cap:
            self.refused += 1
            return ERRNO_MFILE
        if not self._node.acquire():
            self.refused += 1
            return ERRNO_NFILE
        opened_at = args[_OPENED_FD].i32 & 0xFFFFFFFF  # read before the call: the result overwrites args[0]
        errno = self._call(caller, "path_open", args)
        if errno != 0:
            self._node.release()
            return errno
        self._open.add(self._read_u32(caller, opened_at))
        return 0

    def fd_close(self, caller: Any, args: RawArgs) -> int:
        fd = args[0].i32
        errno = self._call(caller, "fd_close", args)
        if errno == 0 and fd in self._open:
            self._open.discard(fd)
            self._node.release()
        return errno

    def fd_renumber(self, caller: Any, args: RawArgs) -> int:
        source, target = args[0].i32, args[1].i32
        errno = self._call(caller, "fd_renumber", args)
        if errno == 0 and source != target:
            if target in self._open:  # the file at ``target`` was closed
                self._open.discard(target)
                self._node.release()
            if source in self._open:
                self._open.discard(source)
                self._open.add(target)
        return errno

    def close(self) -> None:
        self._node.release(len(self._open))
        self._open.clear()
        self._funcs.clear()
        self._memory = None

    def _call(self, caller: Any, name: str, args: RawArgs) -> int:
        """Call the real ``name`` through this store's trampoline; a trap becomes ``EFAULT``."""
        context = ffi.wasmtime_caller_context(caller)
        func = self._funcs.get(name) or self._instantiate(caller)[name]
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_func_call_unchecked(
            context, ctypes.byref(func), args, len(_PARAMS[name]), ctypes.byref(trap)
        )
        if error:
            ffi.wasmtime_error_delete(error)
            return ERRNO_FAULT
        if trap:
            ffi.wasm_trap_delete(trap)
            return ERRNO_FAULT
        return int(args[0].i32)

    def _read_u32(self, caller: Any, address: int) -> int:
        context = ffi.wasmtime_caller_context(caller)
        size = ffi.wasmtime_memory_data_size(context, ctypes.byref(self._memory))
        if address + 4 > size:  # the real path_open wrote there, so this cannot happen
            raise IndexError(f"descriptor address {address} outside memory of {size} bytes")
        base = ffi.wasmtime_memory_data(context, ctypes.byref(self._memory))
        return int(ctypes.c_uint32.from_address(ctypes.addressof(base.contents) + address).value)

    def _instantiate(self, raw_caller: Any) -> dict[str, Any]:
        """The trampoline for this store, made at the first shadowed call."""
        caller = wasmtime.Caller(raw_caller)
        try:
            memory = caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise TypeError("the module exports no memory")
            real = self._shadows.real
            imports = [memory, *(real.get(caller, WASI, name) for name in SHADOWED)]
            exports = wasmtime.Instance(caller, self._shadows.trampoline, imports).exports(caller)
            for name in SHADOWED:
                func = exports[name]
                if not isinstance(func, wasmtime.Func):
                    raise TypeError(f"trampoline export {name} is not a function")
                self._funcs[name] = func._func
            self._memory = memory._memory
        finally:
            caller._invalidate()
        return self._funcs
