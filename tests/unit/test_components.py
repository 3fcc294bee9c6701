"""wasmlet.runtime.components on real wasmtime: components told from modules, wasi:http ones kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import component

from wasmlet.runtime import components
from wasmlet.runtime.components import ComponentError
from wasmlet.runtime.engine import ModuleError, Runtime

HTTP = "wasi:http/incoming-handler@0.2.0"
CLI = "wasi:cli/run@0.2.0"


def component_exporting(*exports: tuple[str, str]) -> bytes:
    """A component exporting, for each (interface, function), an instance with that function."""
    instances = "\n".join(
        f"""  (instance $inst{n} (export "{function}" (func $f)))
  (export "{interface}" (instance $inst{n}))"""
        for n, (interface, function) in enumerate(exports)
    )
    return bytes(
        wasmtime.wat2wasm(
            f"""(component
  (core module $m (func (export "h") (param i32 i32)))
  (core instance $i (instantiate $m))
  (type $ft (func (param "a" u32) (param "b" u32)))
  (func $f (type $ft) (canon lift (core func $i "h")))
{instances}
)"""
        )
    )


HTTP_COMPONENT = component_exporting((HTTP, "handle"))
COMMAND_COMPONENT = component_exporting((CLI, "run"))
EMPTY_COMPONENT = bytes(wasmtime.wat2wasm("(component)"))


def write(tmp_path: Path, data: bytes, name: str = "app.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- telling components from modules ------------------------------------------------------------


def test_a_component_is_told_from_a_module_by_its_preamble() -> None:
    assert components.is_component(EMPTY_COMPONENT)
    assert components.is_component(HTTP_COMPONENT)
    assert not components.is_component(bytes(wasmtime.wat2wasm("(module)")))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0asm",
        b"\0asm\x0d\x00\x01",  # a component's preamble, one byte short
        b"\0asm\x0d\x00\x02\x00",  # version 13, another layer
        b"\0asm\x01\x00\x00\x00",  # a module's preamble
        b"garbage, not WebAssembly at all",
        b"\x00" * 64,
    ],
)
def test_short_or_foreign_bytes_are_not_a_component(data: bytes) -> None:
    assert not components.is_component(data)


def test_is_http_component_by_the_name_prepare_gives(tmp_path: Path) -> None:
    assert components.is_http_component(tmp_path / f"{'a' * 64}.http.wasm")
    assert not components.is_http_component(tmp_path / f"{'a' * 64}.cwasm")
    assert not components.is_http_component(tmp_path / "app.wasm")


# -- prepare ------------------------------------------------------------------------------------


def test_an_http_component_is_kept_by_its_digest_with_the_same_bytes(tmp_path: Path) -> None:
    engine = wasmtime.Engine()
    cache = tmp_path / "cache"
    source = write(tmp_path, HTTP_COMPONENT)
    kept = components.prepare(engine, HTTP_COMPONENT, source, cache)
    assert kept == cache / f"{hashlib.sha256(HTTP_COMPONENT).hexdigest()}.http.wasm"
    assert kept.read_bytes() == HTTP_COMPONENT
    assert components.is_http_component(kept)
    assert [path.name for path in cache.iterdir()] == [kept.name]  # no temporary file left behind


def test_a_kept_component_is_reused_without_validating_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = wasmtime.Engine()
    cache = tmp_path / "cache"
    source = write(tmp_path, HTTP_COMPONENT)
    kept = components.prepare(engine, HTTP_COMPONENT, source, cache)
    os.utime(kept, (1_000_000, 1_000_000))

    def no_compiling(*_args: Any) -> None:
        raise AssertionError("the kept component was compiled again")

    monkeypatch.setattr(component, "Component", no_compiling)
    assert components.prepare(engine, HTTP_COMPONENT, source, cache) == kept
    assert kept.stat().st_mtime == 1_000_000  # not written again either
    assert kept.read_bytes() == HTTP_COMPONENT


def test_a_component_exporting_the_http_handler_among_others_is_kept(tmp_path: Path) -> None:
    data = component_exporting((CLI, "run"), (HTTP, "handle"))
    kept = components.prepare(wasmtime.Engine(), data, write(tmp_path, data), tmp_path / "cache")
    assert kept.name.endswith(".http.wasm") and kept.read_bytes() == data


def test_an_empty_component_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path, EMPTY_COMPONENT)
    with pytest.raises(ComponentError) as caught:
        components.prepare(wasmtime.Engine(), EMPTY_COMPONENT, source, tmp_path / "cache")
    assert f"component {source} is a component exporting nothing" in str(caught.value)
    assert "wasi:http/incoming-handler@0.2" in str(caught.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_component_exporting_something_else_is_refused_naming_its_exports(tmp_path: Path) -> None:
    data = component_exporting(("local:demo/greet@0.1.0", "greet"))
    source = write(tmp_path, data)
    with pytest.raises(ComponentError) as caught:
        components.prepare(wasmtime.Engine(), data, source, tmp_path / "cache")
    assert f"component {source} is a component exporting local:demo/greet@0.1.0:" in str(caught.value)


def test_a_command_component_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path, COMMAND_COMPONENT)
    with pytest.raises(ComponentError) as caught:
        components.prepare(wasmtime.Engine(), COMMAND_COMPONENT, source, tmp_path / "cache")
    assert f"component {source} is a command component (wasi:cli/run)" in str(caught.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_invalid_component_bytes_are_refused(tmp_path: Path) -> None:
    data = components.COMPONENT_PREAMBLE + b"garbage after a valid preamble"
    source = write(tmp_path, data)
    with pytest.raises(ComponentError) as caught:
        components.prepare(wasmtime.Engine(), data, source, tmp_path / "cache")
    assert str(caught.value).startswith(f"component {source}: invalid: ")
    assert "\n" not in str(caught.value)  # the first line of wasmtime's message only
    assert isinstance(caught.value.__cause__, wasmtime.WasmtimeError)


# -- Runtime.precompile -------------------------------------------------------------------------


def test_precompile_keeps_an_http_component_as_http_wasm(tmp_path: Path) -> None:
    runtime = Runtime(tmp_path / "cache")
    source = write(tmp_path, HTTP_COMPONENT)
    kept = runtime.precompile(source)
    assert kept == tmp_path / "cache" / f"{hashlib.sha256(HTTP_COMPONENT).hexdigest()}.http.wasm"
    assert kept.read_bytes() == HTTP_COMPONENT
    assert runtime.precompile(source) == kept
    assert not list((tmp_path / "cache").glob("*.cwasm"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (EMPTY_COMPONENT, "is a component exporting nothing"),
        (COMMAND_COMPONENT, "is a command component (wasi:cli/run)"),
        (components.COMPONENT_PREAMBLE + b"garbage", ": invalid: "),
    ],
    ids=["empty", "command", "invalid"],
)
def test_precompile_refuses_other_components_with_module_error(
    tmp_path: Path, data: bytes, message: str
) -> None:
    source = write(tmp_path, data)
    with pytest.raises(ModuleError) as caught:
        Runtime(tmp_path / "cache").precompile(source)
    assert str(caught.value).startswith(f"component {source}")
    assert message in str(caught.value)
    assert isinstance(caught.value.__cause__, ComponentError)
