"""Modules on wasmtime: the engine, their outputs, the WASI shims, their memory."""
