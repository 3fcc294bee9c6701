"""Run real ``wasmlet`` processes for the integration tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wasmlet import paths
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client
from wasmlet.ops import tokens

WASMLET = str(Path(sys.executable).with_name("wasmlet"))


@dataclass
class WasmletNode:
    name: str
    ip: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def write_bootstrap(admin: Client, data_dir: Path) -> Path:
    token = tokens.create(admin, description="wasmlet integration test node")
    path = data_dir / "config" / "bootstrap.conf"
    tokens.write_bootstrap_kubeconfig(path, kubeconfig.load(paths.admin_kubeconfig()), token.token)
    return path


@contextlib.contextmanager
def running_node(
    admin: Client,
    tmp_path: Path,
    name: str,
    ip: str = "127.0.0.2",
    port: int = 10250,
    *extra: str,
    cgroup: Path | None = None,
) -> Iterator[WasmletNode]:
    """A wasmlet process; with ``cgroup`` (a cgroup directory), it runs in that cgroup from its start."""
    data_dir = tmp_path / name
    write_bootstrap(admin, data_dir)
    output = tmp_path / f"{name}.out"
    with output.open("wb") as out:
        # The shell joins the cgroup, then becomes wasmlet (same pid): nothing runs outside it.
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        joins = [] if cgroup is None else ["/bin/sh", "-c", join, str(cgroup)]
        proc = subprocess.Popen(
            [
                *joins,
                WASMLET,
                "--node-name",
                name,
                "--hostname",
                name,
                "--node-ip",
                ip,
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    node = WasmletNode(name, ip, port, data_dir, proc, output)
    try:
        yield node
    finally:
        node.stop()
        with contextlib.suppress(Exception):
            admin.delete(f"/api/v1/nodes/{name}")
