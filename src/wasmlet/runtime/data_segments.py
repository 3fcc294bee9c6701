"""Fewer active data segments, same memory: what makes Go's modules compile in seconds again.

wasmlet's engine makes every linear memory itself (:mod:`wasmlet.runtime.limited_memory`), so
wasmtime cannot map a module's data as a copy-on-write image and copies each active data segment
at instantiation instead, from a start-up function it compiles for the module: one copy per
segment. Go's linker writes a segment per run of non-zero bytes (33,428 of them in a 2.9 MB
module), and compiling it took 13 to 14 s instead of 2.2 s with copy-on-write, nearly all of the
difference that one function (docs/runtime.md).

:func:`coalesce` rewrites the data section only. Active segments of memory 0 whose offsets are
constants and do not overlap are sorted by offset and joined into runs, with the few bytes
between neighbours (at most :data:`MAX_GAP`) written as the zeros they already are in a new
memory. The memory a module starts with is the same byte for byte; a segment out of bounds
still fails instantiation (a run ends where its last segment ends). Segment indices keep their
meaning: the count is unchanged, the runs take the first active slots, and the other active
slots become empty passive segments, which ``memory.init`` and ``data.drop`` treat as they
treat an active segment after instantiation (length 0). Anything it does not fully understand
(an imported memory, an offset that is not an ``i32.const``, overlapping segments, a malformed
section) leaves the module as it is; wasmtime validates what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass

PREAMBLE = b"\0asm\x01\x00\x00\x00"
IMPORT_SECTION = 2
DATA_SECTION = 11
MAX_GAP = 256  # zero bytes written between two neighbours rather than starting a new run
MIN_SEGMENTS = 64  # fewer active segments than this: not worth touching the module
I32_CONST = 0x41
END = 0x0B
_ACTIVE, _PASSIVE, _ACTIVE_INDEXED = 0, 1, 2
_EMPTY_PASSIVE = bytes((_PASSIVE, 0))


class _Unknown(Exception):
    """Something :func:`coalesce` does not understand: leave the module alone."""


@dataclass(frozen=True)
class _Segment:
    raw: bytes  # the segment as written
    offset: int | None  # constant offset into memory 0 (unsigned), None if not such a segment
    data: bytes


def coalesce(wasm: bytes) -> bytes:
    """``wasm`` with its active data segments joined (see the module docstring), or ``wasm``."""
    try:
        return _coalesce(wasm)
    except (_Unknown, IndexError):
        return wasm


def _coalesce(wasm: bytes) -> bytes:
    if not wasm.startswith(PREAMBLE):
        raise _Unknown
    sections: list[tuple[int, int, int, int]] = []  # (id, where it begins, its payload's start, end)
    pos = len(PREAMBLE)
    while pos < len(wasm):
        size, start = _u32(wasm, pos + 1)
        end = start + size
        if end > len(wasm):
            raise _Unknown
        sections.append((wasm[pos], pos, start, end))
        pos = end
    data_sections = [s for s in sections if s[0] == DATA_SECTION]
    if len(data_sections) != 1:
        raise _Unknown
    for section_id, _begin, start, end in sections:
        if section_id == IMPORT_SECTION and _imports_memory(wasm, start, end):
            raise _Unknown
    _id, begin, start, end = data_sections[0]
    segments = _segments(wasm, start, end)
    active = [s for s in segments if s.offset is not None]
    if len(active) < MIN_SEGMENTS:
        return wasm
    runs = iter(_runs(active))
    body = bytearray(_u32_bytes(len(segments)))
    for segment in segments:
        if segment.offset is None:
            body += segment.raw
            continue
        run = next(runs, None)
        body += _EMPTY_PASSIVE if run is None else _active(*run)
    return wasm[:begin] + bytes((DATA_SECTION,)) + _u32_bytes(len(body)) + bytes(body) + wasm[end:]


def _runs(active: list[_Segment]) -> list[tuple[int, bytes]]:
    """Sorted, non-overlapping segments joined where the gap is small; _Unknown if two overlap."""
    ordered = sorted(active, key=lambda s: s.offset or 0)
    budget = sum(len(s.data) for s in ordered)  # zeros written at most: the module's data, again
    runs: list[tuple[int, bytearray]] = []
    end = -1
    for segment in ordered:
        offset = segment.offset or 0
        if offset < end:
            raise _Unknown  # overlapping: which bytes win depends on the order, keep it
        gap = offset - end
        if runs and gap <= MAX_GAP and gap <= budget:
            budget -= gap
            runs[-1][1].extend(bytes(gap))
            runs[-1][1].extend(segment.data)
        else:
            runs.append((offset, bytearray(segment.data)))
        end = offset + len(segment.data)
    return [(offset, bytes(data)) for offset, data in runs]


def _segments(wasm: bytes, pos: int, end: int) -> list[_Segment]:
    count, pos = _u32(wasm, pos)
    segments = []
    for _segment in range(count):
        begin = pos
        flags, pos = _u32(wasm, pos)
        memory = 0
        if flags == _ACTIVE_INDEXED:
            memory, pos = _u32(wasm, pos)
        offset = None
        if flags in (_ACTIVE, _ACTIVE_INDEXED):
            if wasm[pos] != I32_CONST:
                raise _Unknown  # global.get, say: where it lands is known only at instantiation
            value, pos = _s32(wasm, pos + 1)
            if wasm[pos] != END:
                raise _Unknown
            pos += 1
            offset = value & 0xFFFFFFFF
        elif flags != _PASSIVE:
            raise _Unknown
        size, pos = _u32(wasm, pos)
        data = wasm[pos : pos + size]
        if len(data) != size:
            raise _Unknown
        pos += size
        kept = offset if memory == 0 else None  # other memories: kept as written
        segments.append(_Segment(wasm[begin:pos], kept, data))
    if pos != end:
        raise _Unknown
    return segments


def _imports_memory(wasm: bytes, pos: int, end: int) -> bool:
    count, pos = _u32(wasm, pos)
    for _import in range(count):
        for _name in range(2):
            length, pos = _u32(wasm, pos)
            pos += length
        kind = wasm[pos]
        pos += 1
        if kind == 0x02:
            return True
        if kind in (0x00, 0x04):  # function, tag: a type index (tag: an attribute byte first)
            pos = _u32(wasm, pos + (kind == 0x04))[1]
        elif kind == 0x01:  # table: reference type, then limits
            pos = _limits(wasm, _value_type(wasm, pos))
        elif kind == 0x03:  # global: value type, mutability
            pos = _value_type(wasm, pos) + 1
        else:
            raise _Unknown
    if pos != end:
        raise _Unknown
    return False


def _value_type(wasm: bytes, pos: int) -> int:
    if wasm[pos] in (0x63, 0x64):  # (ref null? heaptype): a signed LEB heap type follows
        return _skip_leb(wasm, pos + 1, 5)  # s33
    return pos + 1


def _limits(wasm: bytes, pos: int) -> int:
    flags = wasm[pos]
    if flags not in (0x00, 0x01, 0x04, 0x05):  # min, min+max, and their 64-bit forms
        raise _Unknown
    pos = _skip_leb(wasm, pos + 1, 10)  # u64
    return _skip_leb(wasm, pos, 10) if flags & 1 else pos


def _u32(wasm: bytes, pos: int) -> tuple[int, int]:
    """An unsigned 32-bit LEB128 at ``pos``: (value, where it ends)."""
    value, end = _leb(wasm, pos, signed=False)
    if value >> 32:
        raise _Unknown
    return value, end


def _s32(wasm: bytes, pos: int) -> tuple[int, int]:
    """A signed 32-bit LEB128 at ``pos``: (value, where it ends)."""
    value, end = _leb(wasm, pos, signed=True)
    if not -(1 << 31) <= value < 1 << 31:
        raise _Unknown
    return value, end


def _leb(wasm: bytes, pos: int, *, signed: bool) -> tuple[int, int]:
    value = shift = 0
    for index in range(5):
        byte = wasm[pos + index]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if signed and byte & 0x40:
                value -= 1 << shift
            return value, pos + index + 1
    raise _Unknown


def _skip_leb(wasm: bytes, pos: int, longest: int) -> int:
    """Where the LEB128 at ``pos`` (at most ``longest`` bytes) ends."""
    for index in range(longest):
        if wasm[pos + index] < 0x80:
            return pos + index + 1
    raise _Unknown


def _u32_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _s32_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _active(offset: int, data: bytes) -> bytes:
    signed = offset - (1 << 32) if offset >= 1 << 31 else offset
    return bytes((_ACTIVE, I32_CONST)) + _s32_bytes(signed) + bytes((END,)) + _u32_bytes(len(data)) + data
