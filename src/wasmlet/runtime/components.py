"""WASI preview 2 components: told apart from modules by their bytes, and sorted by what they export.

A module's preamble is ``\\0asm`` and version 1 (``01 00 00 00``); a component's is ``\\0asm``,
version 13 and layer 1 (``0d 00 01 00``). A component that exports ``wasi:http/incoming-handler``
is served (:mod:`wasmlet.serve.wasi_http`); :func:`prepare` keeps its bytes as
``<sha256>.http.wasm`` in the compiled-module cache, which is what the container starter looks for.
Command components (``wasi:cli/run``) do not run yet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import wasmtime
from wasmtime import component

from wasmlet.fsutil import write_atomic

MODULE_PREAMBLE = b"\0asm\x01\x00\x00\x00"
COMPONENT_PREAMBLE = b"\0asm\x0d\x00\x01\x00"
HTTP_HANDLER = "wasi:http/incoming-handler@0.2"
CLI_RUN = "wasi:cli/run@0.2"
HTTP_SUFFIX = ".http.wasm"


class ComponentError(Exception):
    """A component wasmlet cannot run, and why."""


def is_component(data: bytes) -> bool:
    return data[:8] == COMPONENT_PREAMBLE


def is_http_component(path: Path) -> bool:
    """Whether ``path`` is what :func:`prepare` made of a ``wasi:http`` component."""
    return path.name.endswith(HTTP_SUFFIX)


def prepare(engine: wasmtime.Engine, data: bytes, source: Path, cache: Path) -> Path:
    """Validate component ``data`` (read from ``source``) and keep it in ``cache`` by its
    ``sha256`` digest; ComponentError unless it exports ``wasi:http/incoming-handler``."""
    target = cache / f"{hashlib.sha256(data).hexdigest()}{HTTP_SUFFIX}"
    if target.exists():  # validated when it was written
        return target
    try:
        exports = sorted(component.Component(engine, data).type.exports(engine))
    except wasmtime.WasmtimeError as exc:
        raise ComponentError(f"component {source}: invalid: {str(exc).splitlines()[0]}") from exc
    if not any(name.startswith(HTTP_HANDLER) for name in exports):
        kind = (
            "a command component (wasi:cli/run)"
            if any(name.startswith(CLI_RUN) for name in exports)
            else f"a component exporting {', '.join(exports) or 'nothing'}"
        )
        raise ComponentError(
            f"component {source} is {kind}: wasmlet runs WASI preview 1 modules and serves components "
            f"that export {HTTP_HANDLER}.x (wasi:http/proxy)"
        )
    write_atomic(target, data)
    return target
