"""Linear memories that hold a module to its memory limit and record every grow they refuse.

wasmtime's store limiter (``Store.set_limits``) refuses a ``memory.grow`` past the limit by
returning -1 to the module and tells the embedder nothing, so whether a failed module was out of
memory could only be guessed from its size. Here the engine's memory creator
(``wasmtime_config_host_memory_creator_set`` of the C API, reached through ``wasmtime._ffi`` as
the epoch callback is) makes every linear memory, and the memory's own grow callback enforces the
limit: a refusal is recorded on the execution's :class:`MemoryLimit` and returned to wasmtime as
an error, which the module sees as ``memory.grow`` = -1, exactly as before. A memory whose initial
size is over the limit is refused (and recorded) the same way, and the module cannot start.

A memory is what wasmtime's own would be: ``reserved_size`` bytes of address space (4 GiB for a
32-bit memory) plus the guard region, reserved with no access and never moved; growing makes the
next pages readable and writable. Compiled code leaves out bounds checks on the strength of that
reservation, and an access past the accessible pages faults and traps as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

log = logging.getLogger(__name__)

HOST_PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_RESERVATION = 4 << 30  # if wasmtime asks for no reservation: a 32-bit memory's, never moved
_PROT_NONE, _PROT_READ_WRITE = 0, 0x1 | 0x2
_MAP_PRIVATE, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x02, 0x20, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mprotect = _libc.mprotect
_mprotect.restype = ctypes.c_int
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = ctypes.cast(0, _FINALIZER)


@dataclass
class MemoryLimit:
    """One execution's memory limit (None: none), and the refusals it made, oldest first."""

    limit_bytes: int | None
    refusals: list[str] = field(default_factory=list)

    def allows(self, size: int, what: str) -> bool:
        """Whether a memory may be ``size`` bytes; a refusal is recorded as ``what``."""
        if self.limit_bytes is None or size <= self.limit_bytes:
            return True
        self.refusals.append(f"{what}: {size} bytes is over the memory limit of {self.limit_bytes} bytes")
        return False


@dataclass
class _Memory:
    base: int
    mapped: int  # bytes reserved: capacity plus the guard region
    capacity: int  # bytes it can grow to without moving
    size: int  # bytes the module may access
    accessible: int  # bytes readable and writable: size rounded up to host pages
    limit: MemoryLimit | None


# By the env wasmtime hands back to the callbacks. No lock: each dict operation is atomic under
# the GIL, and a lock could deadlock when a collection run inside it frees a store (the finalizer).
_memories: dict[int, _Memory] = {}
_ids = itertools.count(1)
_current = threading.local()  # .limit: the MemoryLimit of what this thread instantiates


@contextlib.contextmanager
def limiting(limit: MemoryLimit) -> Iterator[None]:
    """Memories made on this thread meanwhile (by instantiating a module) are held to ``limit``.
    Outside of it a memory has no limit."""
    _current.limit = limit
    try:
        yield
    finally:
        _current.limit = None


def install(config: wasmtime.Config) -> None:
    """Make every linear memory of engines built from ``config`` here (the config copies the struct).

    Copy-on-write initialisation is turned off: it maps a module's data segments over wasmtime's
    own memories only (wasmtime 50 panics with it on a custom memory); they are copied instead.
    """
    ffi.wasmtime_config_memory_init_cow_set(config.ptr(), False)
    creator = ffi.wasmtime_memory_creator_t(None, _NEW_MEMORY, _NO_FINALIZER)
    ffi.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(creator))


def live() -> int:
    """Memories made here and not yet freed."""
    return len(_memories)


def _on_new_memory(
    _env: Any, _ty: Any, minimum: int, _maximum: int, reserved: int, guard: int, ret: Any
) -> int:
    try:
        limit: MemoryLimit | None = getattr(_current, "limit", None)
        if limit is not None and not limit.allows(minimum, "a new memory"):
            return _error(f"memory minimum size of {minimum} bytes exceeds memory limits")
        capacity = _round_up(reserved or max(DEFAULT_RESERVATION, minimum))
        if minimum > capacity:
            return _error(f"memory minimum size of {minimum} bytes is over its reservation")
        mapped = capacity + _round_up(guard)
        base = _mmap(None, mapped, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base is None or base == _MAP_FAILED:
            return _error(f"cannot reserve {mapped} bytes for a memory: {_strerror()}")
        memory = _Memory(base, mapped, capacity, 0, 0, limit)
        if not _make_accessible(memory, minimum):
            failure = _strerror()
            _munmap(base, mapped)
            return _error(f"cannot commit {minimum} bytes of memory: {failure}")
        memory.size = minimum
        key = next(_ids)
        _memories[key] = memory
        out = ret.contents
        out.env = key
        out.get_memory = _GET_MEMORY
        out.grow_memory = _GROW_MEMORY
        out.finalizer = _FINALIZE
        return 0
    except Exception as exc:  # a C callback must not raise: the error goes to wasmtime
        log.exception("making a linear memory failed")
        return _error(f"wasmlet could not make the memory: {exc}")


def _on_get_memory(env: int, size: Any, capacity: Any) -> int:
    memory = _memories[env]
    size[0] = memory.size
    capacity[0] = memory.capacity
    return memory.base


def _on_grow_memory(env: int, new_size: int) -> int:
    try:
        memory = _memories[env]
        if memory.limit is not None and not memory.limit.allows(new_size, "memory.grow"):
            return _error(f"memory limit reached: {new_size} bytes refused")
        if new_size > memory.capacity:
            return _error(f"{new_size} bytes is over the memory's reservation of {memory.capacity}")
        if not _make_accessible(memory, new_size):
            return _error(f"cannot commit {new_size} bytes of memory: {_strerror()}")
        memory.size = new_size
        return 0
    except Exception as exc:  # refused: the module sees -1 rather than pages it cannot use
        log.exception("growing a linear memory failed")
        return _error(f"wasmlet could not grow the memory: {exc}")


def _on_finalize(env: int) -> None:
    memory = _memories.pop(env, None)
    if memory is not None and _munmap(memory.base, memory.mapped) != 0:
        log.error("cannot free a linear memory at %#x: %s", memory.base, _strerror())


# Module-level: wasmtime may call them as long as any engine or memory made with them lives.
_NEW_MEMORY = ffi.wasmtime_new_memory_callback_t(_on_new_memory)
_GET_MEMORY = ffi.wasmtime_memory_get_callback_t(_on_get_memory)
_GROW_MEMORY = ffi.wasmtime_memory_grow_callback_t(_on_grow_memory)
_FINALIZE = _FINALIZER(_on_finalize)


def _make_accessible(memory: _Memory, size: int) -> bool:
    end = _round_up(size)
    if end > memory.accessible:
        grown = end - memory.accessible
        if _mprotect(memory.base + memory.accessible, grown, _PROT_READ_WRITE) != 0:
            return False
        memory.accessible = end
    return True


def _round_up(size: int) -> int:
    return -(-size // HOST_PAGE) * HOST_PAGE


def _strerror() -> str:
    return os.strerror(ctypes.get_errno())


def _error(message: str) -> int:
    error = ffi.wasmtime_error_new(message.encode())
    return ctypes.cast(error, ctypes.c_void_p).value or 0
