"""wasmlet.oci.manifest.read_module: the module file oci_push pushes and wasm_run runs (.wasm or .wat)."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from wasmlet.oci.manifest import WASM_TO_OCI_LAYER, build_module_manifest, digest_of, read_module
from wasmlet.oci.push import push_module
from wasmlet.oci.reference import Reference

HELLO_WAT = Path(__file__).parents[2] / "examples" / "hello.wat"
TINY_WAT = '(module (func (export "_start")))'


def test_wat_file_is_converted_to_the_binary_wat2wasm_makes(tmp_path: Path) -> None:
    path = tmp_path / "tiny.wat"
    path.write_text(TINY_WAT)
    assert read_module(path) == wasmtime.wat2wasm(TINY_WAT)


def test_wat_suffix_is_recognised_in_any_case(tmp_path: Path) -> None:
    path = tmp_path / "TINY.WAT"
    path.write_text(TINY_WAT)
    assert read_module(str(path)).startswith(b"\0asm")


def test_binary_wasm_is_returned_byte_for_byte(tmp_path: Path) -> None:
    data = b"\0asm\x01\0\0\0" + bytes(range(256))  # only the magic is checked, as for a push
    path = tmp_path / "module.wasm"
    path.write_bytes(data)
    assert read_module(path) == data


def test_shipped_hello_wat_converts_deterministically_to_a_wasi_command() -> None:
    first, second = read_module(HELLO_WAT), read_module(HELLO_WAT)
    assert first == second
    module = wasmtime.Module(wasmtime.Engine(), first)
    assert "_start" in [export.name for export in module.exports]
    assert [(imp.module, imp.name) for imp in module.imports] == [("wasi_snapshot_preview1", "fd_write")]


def test_the_same_text_always_gives_the_same_manifest_digest(tmp_path: Path) -> None:
    path = tmp_path / "tiny.wat"
    path.write_text(TINY_WAT)

    def manifest_digest() -> str:
        return digest_of(build_module_manifest(read_module(path))[3])

    assert manifest_digest() == manifest_digest()


def test_invalid_wat_names_the_file_and_the_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.wat"
    path.write_text('(module (func (export "_start")) oops)')
    with pytest.raises(ValueError, match="not valid WebAssembly text") as excinfo:
        read_module(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ")
    assert f"--> {path}:1:" in message
    assert "<anon>" not in message


def test_wat_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.wat"
    path.write_bytes(b"(module) ;; caf\xe9")
    with pytest.raises(ValueError, match=r"latin1\.wat: not WebAssembly text: not UTF-8"):
        read_module(path)


def test_text_in_a_wasm_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "hello.wasm"
    path.write_text(TINY_WAT)
    with pytest.raises(ValueError, match=r"hello\.wasm: not a wasm module: .*named \*\.wat"):
        read_module(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_module(tmp_path / "absent.wat")


def test_push_module_pushes_the_converted_wat(tmp_path: Path) -> None:
    """push_module reads its path through read_module: a .wat pushes the same bytes as its .wasm."""
    wat = tmp_path / "tiny.wat"
    wat.write_text(TINY_WAT)
    pushed: list[tuple[bytes, str]] = []

    class Client:
        def push_blob(self, ref: Reference, content: bytes, media_type: str) -> tuple[str, bool]:
            pushed.append((content, media_type))
            return digest_of(content), True

        def push_manifest(self, ref: Reference, manifest: bytes) -> tuple[str, bool]:
            return digest_of(manifest), True

    result = push_module("127.0.0.1:5000/tiny:v1", wat, client=Client())  # type: ignore[arg-type]
    binary = bytes(wasmtime.wat2wasm(TINY_WAT))
    assert pushed[0] == (binary, WASM_TO_OCI_LAYER)
    assert result.digest == digest_of(build_module_manifest(binary)[3])
