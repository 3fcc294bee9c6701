"""Caps on the files a module holds open, so that no pod takes the node's descriptors.

Every file a WASI preview1 module opens is a descriptor of the one wasmlet process that runs all
pods; a module opening files in a loop took the node to its limit (``kubectl logs`` of other pods
failed, new pods could not get output pipes). A module opens files only through ``path_open``
(wasmlet gives it no sockets), so the runtime shadows ``path_open``, ``fd_close`` and
``fd_renumber`` and counts, per container (:class:`FileTable`, ``--max-open-files-per-container``)
and for the node (:class:`NodeFiles`: the process's limit less a reserve the node keeps for its own
pipes, sockets and logs). Past the container's cap ``path_open`` fails with ``EMFILE``; past the
node's budget with ``ENFILE``: the module sees "too many open files", as under a kernel limit.

The real functions cannot be called from the shadow directly: wasmtime's WASI functions read the
*calling instance's* ``memory`` export, and a function called from Python has no calling instance.
So each store gets a tiny trampoline instance (:data:`TRAMPOLINE_WAT`) that imports the module's
memory, re-exports it, and calls the real functions; the shadow calls the trampoline.
"""

from __future__ import annotations

import ctypes
import struct
import threading

import wasmtime
from wasmtime import _ffi as ffi

WASI = "wasi_snapshot_preview1"
ERRNO_FAULT = 21
ERRNO_MFILE = 33  # too many open files in this container
ERRNO_NFILE = 41  # too many open files on the node
SHADOWED = ("path_open", "fd_close", "fd_renumber")
_I32, _I64 = ffi.WASMTIME_I32.value, ffi.WASMTIME_I64.value  # wasmtime_valkind_t
_PARAMS = {
    "path_open": (_I32, _I32, _I32, _I32, _I32, _I64, _I64, _I32, _I32),
    "fd_close": (_I32,),
    "fd_renumber": (_I32, _I32),
}
_FD = struct.Struct("<I")

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


def func_type(name: str) -> wasmtime.FuncType:
    """The type of a shadowed function; a new one per Engine (wasmtime asserts it)."""
    kinds = {_I32: wasmtime.ValType.i32, _I64: wasmtime.ValType.i64}
    return wasmtime.FuncType([kinds[kind]() for kind in _PARAMS[name]], [wasmtime.ValType.i32()])


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


class FileTable:
    """The files one running module holds open, counted against its cap and the node's budget.

    Made per execution; :meth:`close` returns what is still counted to the node (the store closes
    the files themselves). The shadows run on the module's own thread.
    """

    def __init__(self, cap: int, node: NodeFiles, real: wasmtime.Linker, trampoline: wasmtime.Module) -> None:
        self.cap = cap
        self.refused = 0  # path_open calls refused by a cap
        self._node = node
        self._real = real
        self._trampoline = trampoline
        self._exports: dict[str, wasmtime.Func] = {}
        self._open: set[int] = set()

    def path_open(self, caller: wasmtime.Caller, args: tuple[int, ...]) -> int:
        if len(self._open) >= self.cap:
            self.refused += 1
            return ERRNO_MFILE
        if not self._node.acquire():
            self.refused += 1
            return ERRNO_NFILE
        errno = self._call(caller, "path_open", args)
        if errno != 0:
            self._node.release()
            return errno
        memory = caller.get("memory")
        if isinstance(memory, wasmtime.Memory):  # the trampoline's call succeeded: it is there
            self._open.add(_FD.unpack(memory.read(caller, args[8], args[8] + 4))[0])
        return 0

    def fd_close(self, caller: wasmtime.Caller, args: tuple[int, ...]) -> int:
        errno = self._call(caller, "fd_close", args)
        if errno == 0 and args[0] in self._open:
            self._open.discard(args[0])
            self._node.release()
        return errno

    def fd_renumber(self, caller: wasmtime.Caller, args: tuple[int, ...]) -> int:
        errno = self._call(caller, "fd_renumber", args)
        source, target = args
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
        self._exports.clear()

    def _call(self, caller: wasmtime.Caller, name: str, args: tuple[int, ...]) -> int:
        """Call the real ``name`` through this store's trampoline; a trap becomes ``EFAULT``."""
        func = self._exports.get(name)
        if func is None:
            func = self._instantiate(caller)[name]
        kinds = _PARAMS[name]
        params = (ffi.wasmtime_val_t * len(kinds))()
        for slot, kind, value in zip(params, kinds, args, strict=True):
            slot.kind = kind
            if kind == _I32:
                slot.of.i32 = value
            else:
                slot.of.i64 = value
        results = (ffi.wasmtime_val_t * 1)()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_func_call(
            caller._context(), ctypes.byref(func._func), params, len(kinds), results, 1, ctypes.byref(trap)
        )
        if error:
            ffi.wasmtime_error_delete(error)
            return ERRNO_FAULT
        if trap:
            ffi.wasm_trap_delete(trap)
            return ERRNO_FAULT
        return int(results[0].of.i32)

    def _instantiate(self, caller: wasmtime.Caller) -> dict[str, wasmtime.Func]:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise wasmtime.WasmtimeError("the module exports no memory")
        imports = [memory, *(self._real.get(caller, WASI, name) for name in SHADOWED)]
        exports = wasmtime.Instance(caller, self._trampoline, imports).exports(caller)
        for name in SHADOWED:
            func = exports[name]
            if not isinstance(func, wasmtime.Func):
                raise TypeError(f"trampoline export {name} is not a function")
            self._exports[name] = func
        return self._exports
