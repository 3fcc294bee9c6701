"""WASI preview1 ``poll_oneoff`` in Python, so that a stop request can wake a sleeping module.

wasmtime's own ``poll_oneoff`` sleeps inside Rust, where neither epochs nor Python can reach it: a
module in ``sleep(3600)`` would ignore a stop for an hour. The runtime shadows the import with
:func:`poll_oneoff`, which waits through a caller-supplied ``sleep`` (an ``Event.wait`` that
``stop()`` sets) and raises :class:`Interrupted` when that wait is cut short, which traps the
module at once. Clock subscriptions are waited for; fd_read/fd_write subscriptions are reported
ready at once (wasmlet gives modules no sockets, and stdio never blocks), so a module that polls a
descriptor never hangs here.

Layouts (wasi_snapshot_preview1.witx, as asserted in wasi-libc's ``api.h``), little endian:
``subscription`` (48 bytes): userdata u64 @0, tag u8 @8, clock id u32 @16 (or the fd for fd
subscriptions), timeout u64 @24, precision u64 @32, flags u16 @40 (bit 0: absolute time).
``event`` (32 bytes): userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Sequence

import wasmtime

SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
EVENT = struct.Struct("<QHB5xQH6x")
EVENTTYPE_CLOCK = 0
EVENTTYPE_FD_READ = 1
EVENTTYPE_FD_WRITE = 2
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
SUBCLOCK_ABSTIME = 1
ERRNO_SUCCESS = 0
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_NOTSUP = 58


def func_type() -> wasmtime.FuncType:
    """``(in, out, nsubscriptions, nevents_out) -> errno``; a new one per Engine (wasmtime asserts it)."""
    i32 = wasmtime.ValType.i32()
    return wasmtime.FuncType([i32, i32, i32, i32], [i32])


class Interrupted(Exception):
    """The module's sleep was cut short by a stop request; raised into wasm, it traps the module."""


def poll_oneoff(
    memory: wasmtime.Memory,
    store: wasmtime.Caller,
    addresses: Sequence[int],
    sleep: Callable[[float], bool],
    monotonic_origin_ns: int,
) -> int:
    """Serve one ``poll_oneoff(in, out, nsubscriptions, nevents_out)`` call; returns a WASI errno.

    ``sleep(seconds)`` blocks for at most ``seconds`` and returns True when a stop request cut it
    short; :class:`Interrupted` is raised then. ``monotonic_origin_ns`` is the host's
    ``time.monotonic_ns()`` at the moment the guest's monotonic clock read zero (wasmtime counts
    the WASI monotonic clock from the creation of the WASI context).
    """
    in_ptr, out_ptr, count, nevents_ptr = (value & 0xFFFFFFFF for value in addresses)
    if count == 0:
        return ERRNO_INVAL
    raw = memory.read(store, in_ptr, in_ptr + count * SUBSCRIPTION.size)
    if len(raw) != count * SUBSCRIPTION.size:
        return ERRNO_FAULT
    subscriptions = [SUBSCRIPTION.unpack_from(raw, i * SUBSCRIPTION.size) for i in range(count)]
    now = time.monotonic_ns()
    ready: list[tuple[int, int]] = []  # (userdata, event type)
    deadlines: list[tuple[int, int]] = []  # (host monotonic deadline in ns, userdata)
    for userdata, tag, clock_or_fd, timeout, _precision, flags in subscriptions:
        if tag in (EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE):
            ready.append((userdata, tag))
        elif tag != EVENTTYPE_CLOCK:
            return ERRNO_INVAL
        elif not flags & SUBCLOCK_ABSTIME:
            deadlines.append((now + timeout, userdata))
        elif clock_or_fd == CLOCK_MONOTONIC:
            deadlines.append((monotonic_origin_ns + timeout, userdata))
        elif clock_or_fd == CLOCK_REALTIME:
            deadlines.append((now + timeout - time.time_ns(), userdata))
        else:
            return ERRNO_NOTSUP
    if not ready:
        earliest = min(deadline for deadline, _userdata in deadlines)
        if sleep(min(max(earliest - now, 0) / 1e9, threading.TIMEOUT_MAX)):
            raise Interrupted
        now = max(time.monotonic_ns(), earliest)
    ready += [(userdata, EVENTTYPE_CLOCK) for deadline, userdata in deadlines if deadline <= now]
    events = b"".join(EVENT.pack(userdata, ERRNO_SUCCESS, kind, 0, 0) for userdata, kind in ready)
    try:
        memory.write(store, events, out_ptr)
        memory.write(store, struct.pack("<I", len(ready)), nevents_ptr)
    except IndexError:
        return ERRNO_FAULT
    return ERRNO_SUCCESS
