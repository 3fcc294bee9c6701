#!/usr/bin/env bash
# Build the wasmtime CLI that serves wasi:http components (crate wasmtime-cli from crates.io, with
# only `serve` and what it needs: its compiler and its cache) into BIN_DIR/wasmtime.
# Usage: build-wasmtime-cli.sh VERSION RUST_TOOLCHAIN BIN_DIR
# wasmtime-cli declares the Rust it needs (rust-version); rustup installs that toolchain.
set -euo pipefail
version=$1
toolchain=$2
bin_dir=$3
rustup=${RUSTUP:-${CARGO_HOME:-$HOME/.cargo}/bin/rustup}
if ! [ -x "$rustup" ]; then
  echo "build-wasmtime-cli: $rustup not found: wasmtime-cli $version needs rustup's Rust $toolchain" >&2
  exit 1
fi
"$rustup" toolchain install "$toolchain" --profile minimal --no-self-update
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build-wasmtime-cli: building wasmtime-cli $version with Rust $toolchain (a cold build takes minutes)"
"$rustup" run "$toolchain" cargo install "wasmtime-cli@$version" --locked --quiet \
  --no-default-features --features serve,run,component-model-async,cranelift,parallel-compilation,cache \
  --root "$work/root" --target-dir "$work/target"
install -D -m 0755 "$work/root/bin/wasmtime" "$bin_dir/wasmtime"
"$bin_dir/wasmtime" --version
