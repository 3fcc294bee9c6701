"""oci_pull, oci_info and wasm_run run for real, through ansible-playbook, against the local registry.

As in test_collection_modules, each test runs its module tasks through ``helpers.run_modules`` (a
playbook in ``tmp_path`` whose tasks are ``register``-ed with ``ignore_errors``, results read back as JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime
from helpers import ROOT, Registry, Step, run_modules, task_failed, task_ok, unique

from wasmlet.oci.manifest import (
    OCI_MANIFEST,
    WASM_TO_OCI_CONFIG,
    WASM_TO_OCI_LAYER,
    build_module_manifest,
    digest_of,
)

pytestmark = pytest.mark.integration

WAT_DIR = ROOT / "tests" / "modules"

# Writes each argument after argv[0] on its own line to stdout, then returns (exit code 0).
PRINT_ARGS_WAT = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))
  (func (export "_start") (local $i i32) (local $p i32) (local $len i32)
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 0))))
        (local.set $p (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
        (local.set $len (call $strlen (local.get $p)))
        (i32.store8 (i32.add (local.get $p) (local.get $len)) (i32.const 10))
        (i32.store (i32.const 16) (local.get $p))
        (i32.store (i32.const 20) (i32.add (local.get $len) (i32.const 1)))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))
"""


def _wasm(tmp_path: Path, name: str, wat: str) -> Path:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _wat_module(tmp_path: Path, name: str) -> Path:
    return _wasm(tmp_path, name, (WAT_DIR / f"{name}.wat").read_text())


def _push(registry: Registry, wasm: Path, repository: str) -> tuple[str, dict[str, Any]]:
    reference = f"{registry.host}/{repository}:v1"
    return reference, {"path": str(wasm), "reference": reference, "insecure": True}


# --- oci_info / oci_pull ---------------------------------------------------------------------------


def test_oci_info_reports_a_pushed_wasm_module(registry: Registry, tmp_path: Path) -> None:
    wasm = _wasm(tmp_path, "print-args", PRINT_ARGS_WAT)
    reference, push_args = _push(registry, wasm, unique("wasmlet-it/oci-info"))
    info_args = {"reference": reference, "insecure": True}
    pushed, info, info_check = run_modules(
        tmp_path,
        Step("oci_push", push_args),
        Step("oci_info", info_args),
        Step("oci_info", info_args, check_mode=True),
    )
    expected = digest_of(build_module_manifest(wasm.read_bytes())[3])
    assert task_ok(pushed)["digest"] == expected
    for result in (info, info_check):
        assert task_ok(result)["changed"] is False
        assert result["is_wasm"] is True
        assert result["digest"] == expected
        assert result["media_type"] == OCI_MANIFEST
        assert result["config_media_type"] == WASM_TO_OCI_CONFIG
        assert result["layer_media_type"] == WASM_TO_OCI_LAYER
        assert result["layer_digest"] == digest_of(wasm.read_bytes())
        assert result["layer_size"] == len(wasm.read_bytes())


def test_oci_pull_writes_the_same_bytes_once(registry: Registry, tmp_path: Path) -> None:
    wasm = _wat_module(tmp_path, "exit3")
    reference, push_args = _push(registry, wasm, unique("wasmlet-it/oci-pull"))
    dest = tmp_path / "out" / "pulled.wasm"
    dest.parent.mkdir()
    pull_args = {"reference": reference, "dest": str(dest), "insecure": True}
    pushed, check_fresh, first, second, check_again = run_modules(
        tmp_path,
        Step("oci_push", push_args),
        Step("oci_pull", pull_args, check_mode=True),
        Step("oci_pull", pull_args),
        Step("oci_pull", pull_args),
        Step("oci_pull", pull_args, check_mode=True),
    )
    layer_digest = digest_of(wasm.read_bytes())
    assert task_ok(check_fresh)["changed"] is True
    assert check_fresh["layer_digest"] == layer_digest
    assert task_ok(first)["changed"] is True
    assert first["digest"] == task_ok(pushed)["digest"]
    assert first["layer_digest"] == layer_digest
    assert first["size"] == len(wasm.read_bytes())
    assert first["media_type"] == WASM_TO_OCI_LAYER
    assert dest.read_bytes() == wasm.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o644
    assert task_ok(second)["changed"] is False
    assert second["layer_digest"] == layer_digest
    assert task_ok(check_again)["changed"] is False
    assert not list(dest.parent.glob(".*"))  # no temporary file left behind


def test_missing_tag_fails_naming_the_registry(registry: Registry, tmp_path: Path) -> None:
    reference = f"{registry.host}/{unique('wasmlet-it/missing')}:nope"
    dest = tmp_path / "never.wasm"
    info, pull = run_modules(
        tmp_path,
        Step("oci_info", {"reference": reference, "insecure": True}),
        Step("oci_pull", {"reference": reference, "dest": str(dest), "insecure": True}),
    )
    for result in (info, pull):
        message = task_failed(result)["msg"]
        assert reference in message
        assert f"registry {registry.host}" in message
        assert "404" in message
    assert not dest.exists()


# --- wasm_run --------------------------------------------------------------------------------------


def test_wasm_run_outputs_exit_codes_and_timeouts(tmp_path: Path) -> None:
    print_args = _wasm(tmp_path, "print-args", PRINT_ARGS_WAT)
    exit3 = _wat_module(tmp_path, "exit3")
    trap = _wat_module(tmp_path, "trap")
    hello_loop = _wat_module(tmp_path, "hello_loop")
    run_args = {"module": str(print_args), "args": ["hello", "wörld"]}
    printed, checked, exited, trapped, looped = run_modules(
        tmp_path,
        Step("wasm_run", run_args),
        Step("wasm_run", run_args, check_mode=True),
        Step("wasm_run", {"module": str(exit3)}),
        Step("wasm_run", {"module": str(trap)}),
        Step("wasm_run", {"module": str(hello_loop), "timeout": 2}),
    )
    assert task_ok(printed)["changed"] is True
    assert printed["stdout"] == "hello\nwörld\n"
    assert printed["stderr"] == ""
    assert printed["rc"] == 0
    assert printed["reason"] == "Completed"
    assert 0 <= printed["duration"] < 10

    assert checked.get("skipped") is True
    assert checked["changed"] is False

    task_failed(exited)
    assert exited["rc"] == 3
    assert exited["stderr"] == "giving up 3\n"
    assert str(exit3) in exited["msg"]
    assert "exit code 3" in exited["msg"]

    task_failed(trapped)
    assert trapped["rc"] == 134
    assert str(trap) in trapped["msg"]
    assert "unreachable" in trapped["msg"]

    task_failed(looped)
    assert "timed out after 2 s" in looped["msg"]
    assert str(hello_loop) in looped["msg"]
    assert "Hello, World!" in looped["stdout"]
    assert looped["rc"] == 137
    assert looped["timed_out"] is True
    assert 2 <= looped["duration"] < 10


def test_wasm_run_by_oci_reference(registry: Registry, tmp_path: Path) -> None:
    wasm = _wasm(tmp_path, "print-args", PRINT_ARGS_WAT)
    reference, push_args = _push(registry, wasm, unique("wasmlet-it/wasm-run"))
    pushed, ran = run_modules(
        tmp_path,
        Step("oci_push", push_args),
        Step("wasm_run", {"reference": reference, "insecure": True, "args": ["from", "the registry"]}),
    )
    assert task_ok(ran)["changed"] is True
    assert ran["stdout"] == "from\nthe registry\n"
    assert ran["rc"] == 0
    assert ran["digest"] == task_ok(pushed)["digest"]
