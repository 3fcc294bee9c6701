"""wasmlet.runtime.data_segments: joined segments give the same memory, byte for byte, on real wasmtime."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmlet.runtime import data_segments
from wasmlet.runtime.engine import RunSpec, Runtime

PAGE = 65536


def segments_wat(segments: list[tuple[int, bytes]], *, pages: int = 2, extra: str = "") -> str:
    data = "\n".join(f'  (data (i32.const {offset}) "{_escape(body)}")' for offset, body in segments)
    return f'(module\n  (memory (export "memory") {pages})\n{data}\n{extra})'


def wat2wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _escape(body: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in body)


def active_count(wasm: bytes) -> int:
    """Active data segments in ``wasm`` (through the module's own parser)."""
    start, end = _data_section(wasm)
    return sum(
        1
        for segment in data_segments._segments(wasm, start, end)
        if segment.offset is not None and segment.data
    )


def _data_section(wasm: bytes) -> tuple[int, int]:
    pos = 8
    while pos < len(wasm):
        size, start = data_segments._u32(wasm, pos + 1)
        if wasm[pos] == data_segments.DATA_SECTION:
            return start, start + size
        pos = start + size
    raise AssertionError("no data section")


def instantiate(wasm: bytes) -> bytes | str:
    """The memory a new instance starts with, or wasmtime's error."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    try:
        instance = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [])
    except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
        return type(exc).__name__
    memory = instance.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    return ctypes.string_at(memory.data_ptr(store), memory.data_len(store))


def many(count: int, stride: int = 24, size: int = 16) -> list[tuple[int, bytes]]:
    """Go-like: one short segment per symbol, a few zero bytes between them."""
    return [(64 + index * stride, bytes([index % 251 + 1]) * size) for index in range(count)]


def test_go_like_segments_become_one_and_the_memory_is_the_same() -> None:
    original = wat2wasm(segments_wat(many(2000)))
    joined = data_segments.coalesce(original)
    assert active_count(original) == 2000
    assert active_count(joined) == 1
    assert instantiate(joined) == instantiate(original)


def test_gaps_over_max_gap_start_a_new_run_and_order_in_the_file_does_not_matter() -> None:
    near = many(100)
    far = [(40000 + index * 8, b"\xaa\xbb") for index in range(100)]
    original = wat2wasm(segments_wat(far + near))  # written out of order, as Go's linker does
    joined = data_segments.coalesce(original)
    assert active_count(joined) == 2
    assert instantiate(joined) == instantiate(original)


def test_padding_is_bounded_by_the_module_s_own_data() -> None:
    sparse = [(index * (data_segments.MAX_GAP + 1), b"\x01") for index in range(200)]
    original = wat2wasm(segments_wat(sparse, pages=1))
    joined = data_segments.coalesce(original)
    assert len(joined) <= 2 * len(original)
    assert instantiate(joined) == instantiate(original)


def test_a_segment_out_of_bounds_still_fails_instantiation() -> None:
    segments = [*many(100), (PAGE - 2, b"\x01\x02\x03\x04")]
    original = wat2wasm(segments_wat(segments, pages=1))
    joined = data_segments.coalesce(original)
    assert joined != original
    assert isinstance(instantiate(original), str)
    assert instantiate(joined) == instantiate(original)


def test_passive_segments_keep_their_indices_and_active_slots_act_dropped() -> None:
    # Segment 100 is passive; memory.init copies it at 60000. memory.init of a (dropped) active
    # segment with length 0 succeeds and with length 1 traps, before and after.
    extra = """  (data $passive "\\de\\ad\\be\\ef")
  (func (export "init") (memory.init $passive (i32.const 60000) (i32.const 0) (i32.const 4)))
  (func (export "init_active_empty") (memory.init 5 (i32.const 0) (i32.const 0) (i32.const 0)))
  (func (export "init_active_one") (memory.init 5 (i32.const 0) (i32.const 0) (i32.const 1)))
  (func (export "drop_active") (data.drop 7))"""
    original = wat2wasm(segments_wat(many(100), extra=extra))
    joined = data_segments.coalesce(original)
    assert joined != original
    assert calls(joined) == calls(original)
    results = calls(joined)
    assert results["init"][60000:60004] == b"\xde\xad\xbe\xef"
    assert results["init_active_one"] == "Trap"


def calls(wasm: bytes) -> dict[str, bytes | str]:
    engine = wasmtime.Engine()
    out: dict[str, bytes | str] = {}
    for name in ("init", "init_active_empty", "init_active_one", "drop_active"):
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [])
        exports = instance.exports(store)
        func, memory = exports[name], exports["memory"]
        assert isinstance(func, wasmtime.Func) and isinstance(memory, wasmtime.Memory)
        try:
            func(store)
            out[name] = ctypes.string_at(memory.data_ptr(store), memory.data_len(store))
        except wasmtime.Trap:
            out[name] = "Trap"
    return out


@pytest.mark.parametrize(
    ("why", "wat"),
    [
        ("few segments", segments_wat(many(10))),
        ("overlapping", segments_wat([*many(100), (70, b"\xff" * 8)])),
        (
            "offset from a global",
            '(module (global $g i32 (i32.const 8)) (memory 1) (data (global.get $g) "x") '
            + " ".join(f'(data (i32.const {64 + 8 * i}) "y")' for i in range(100))
            + ")",
        ),
        (
            "imported memory",
            '(module (import "env" "memory" (memory 1)) '
            + " ".join(f'(data (i32.const {64 + 8 * i}) "y")' for i in range(100))
            + ")",
        ),
        ("no data", '(module (memory 1) (func (export "_start")))'),
    ],
)
def test_modules_it_does_not_understand_or_need_not_touch_are_left_alone(why: str, wat: str) -> None:
    original = wat2wasm(wat)
    assert data_segments.coalesce(original) is original, why


@given(st.integers(min_value=0, max_value=5000))
def test_malformed_bytes_are_returned_as_they_are(cut: int) -> None:
    original = wat2wasm(segments_wat(many(100)))
    truncated = original[: min(cut, len(original) - 1)]
    assert data_segments.coalesce(truncated) is truncated


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2 * PAGE), st.binary(min_size=0, max_size=40)),
        min_size=data_segments.MIN_SEGMENTS,
        max_size=150,
    )
)
def test_any_segments_give_the_same_memory_or_the_same_failure(segments: list[tuple[int, bytes]]) -> None:
    original = wat2wasm(segments_wat(segments))
    assert instantiate(data_segments.coalesce(original)) == instantiate(original)


def test_the_runtime_compiles_the_joined_module_and_the_module_reads_its_data(tmp_path: Path) -> None:
    # A module that prints the bytes of its 300th segment: joined, they are where they were.
    segments = [(1024 + index * 20, f"segment-{index:04d}\n".encode()) for index in range(400)]
    wat = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
{chr(10).join(f'  (data (i32.const {offset}) "{_escape(body)}")' for offset, body in segments)}
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const {segments[300][0]}))
    (i32.store (i32.const 4) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"""
    source = tmp_path / "segments.wasm"
    source.write_bytes(wat2wasm(wat))
    runtime = Runtime(tmp_path / "compiled")
    try:
        out: list[bytes] = []
        spec = RunSpec(
            module=runtime.precompile(source), argv=["m"], env={}, stdout=out.append, stderr=out.append
        )
        status = runtime.start(spec, lambda _status: None).wait(10)
    finally:
        runtime.close()
    assert status is not None and status.exit_code == 0, status
    assert b"".join(out) == b"segment-0300\n"
