"""wasi:http containers (wasmlet.serve.wasi_http) with a stand-in for the wasmtime CLI: a Python
script that takes the socket handover as ``wasmtime serve --systemd-listenfd`` does and answers
what it finds in its process (environment, mounts, network). The exec helper, the namespaces, the
descriptors and the signals are the real ones; the real CLI serves a real component in
tests/integration/test_wasi_http.py."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wasmlet.held_dir import HeldDir, open_beneath
from wasmlet.runtime.engine import EXIT_KILLED, ExitStatus, RunSpec
from wasmlet.serve.wasi_http import WasiHttpContainer, WasiHttpServing, host_env_refusal

WAIT = 10.0

# Serves until SIGINT (then exits 0), one request per connection: a JSON report of its argv, the
# variables named by --env, its descriptors, whether each --dir is writable, and whether it can
# connect to TARGET_PORT on loopback. FAKE=fail fails at once; FAKE=stubborn ignores SIGINT.
FAKE_CLI = """#!{python}
import json, os, signal, socket, sys
args = sys.argv[1:]
mode = os.environ.get("FAKE", "serve")
if mode == "fail":
    sys.stderr.write("Error: failed to compile the component\\nCaused by: not a component\\n")
    sys.exit(2)
if mode == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
assert os.environ["LISTEN_PID"] == str(os.getpid()) and os.environ["LISTEN_FDS"] == "1"
listener = socket.socket(fileno=3)
print("serving", flush=True)

def writable(path):
    try:
        with open(os.path.join(path, "probe"), "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

def outbound():
    try:
        socket.create_connection(("127.0.0.1", int(os.environ["TARGET_PORT"])), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__

while True:
    conn, _ = listener.accept()
    conn.recv(65536)
    names = [a.split("=", 1)[1] for a in args if a.startswith("--env=")]
    dirs = [a.split("=", 1)[1].split("::") for a in args if a.startswith("--dir=")]
    report = {{
        "args": args,
        "env": {{n: os.environ.get(n) for n in names}},
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "dirs": {{g: {{"writable": writable(h), "files": sorted(os.listdir(h))}} for h, g in dirs}},
        "outbound": outbound(),
    }}
    body = json.dumps(report).encode()
    head = b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\nconnection: close\\r\\n\\r\\n" % len(body)
    conn.sendall(head + body)
    conn.close()
"""


@pytest.fixture(scope="module")
def fake_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "wasmtime"
    path.write_text(FAKE_CLI.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def serving(fake_cli: Path, tmp_path: Path) -> Iterator[WasiHttpServing]:
    serving = WasiHttpServing(fake_cli, tmp_path / "wasi-http")
    yield serving
    serving.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    port: int
    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    exits: list[ExitStatus] = field(default_factory=list)
    exited: threading.Event = field(default_factory=threading.Event)

    def on_exit(self, status: ExitStatus) -> None:
        self.exits.append(status)
        self.exited.set()

    def report(self) -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request("GET", "/")
            result: dict[str, object] = json.loads(conn.getresponse().read())
            return result
        finally:
            conn.close()

    def ended(self) -> ExitStatus:
        assert self.exited.wait(WAIT), "the container did not end"
        assert len(self.exits) == 1
        return self.exits[0]


def serve(
    serving: WasiHttpServing,
    env: dict[str, str],
    preopens: list[tuple[HeldDir, str, bool]] | None = None,
    addresses: list[tuple[str, int]] | None = None,
) -> tuple[WasiHttpContainer, Served]:
    served = Served(free_port())
    spec = RunSpec(
        module=Path("/nonexistent/component.http.wasm"),
        argv=["component"],
        env=env,
        stdout=served.stdout.append,
        stderr=served.stderr.append,
        memory_limit_bytes=64 * 2**20,
        name="default/web/main",
    )
    container = serving.serve(spec, addresses or [("127.0.0.1", served.port)], preopens or [], served.on_exit)
    return container, served


def test_serves_on_the_handed_over_socket_with_the_pod_environment_and_mounts(
    serving: WasiHttpServing, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "key").write_text("value")
    data, config = open_beneath(tmp_path, "data"), open_beneath(tmp_path, "config")
    with socket.socket() as outside:  # a listener of the host's network: the process must not reach it
        outside.bind(("127.0.0.1", 0))
        outside.listen()
        env = {"GREETING": "hello world", "SECRET": "s3cret", "TARGET_PORT": str(outside.getsockname()[1])}
        container, served = serve(serving, env, [(data, "/data", False), (config, "/config", True)])
        report = served.report()
    assert report["env"] == env
    args = report["args"]
    assert isinstance(args, list)
    assert "s3cret" not in " ".join(args)  # values never on the command line
    assert args[:3] == ["serve", "--systemd-listenfd", "--no-logging-prefix"]
    assert "--max-concurrent-connections=256" in args
    assert f"-Wmax-memory-size={64 * 2**20}" in args
    assert report["dirs"] == {
        "/data": {"writable": True, "files": ["probe"]},
        "/config": {"writable": False, "files": ["key"]},
    }
    assert (tmp_path / "data" / "probe").read_text() == "x"  # the host's directory, not a copy
    assert report["outbound"] in ("OSError", "ConnectionRefusedError")  # no route out of its namespace
    # stdio, the listening socket, the accepted connection and the listing's own descriptor: the
    # mounts' descriptors and whatever the node inherited are closed before wasmtime starts
    assert report["fds"] == [0, 1, 2, 3, 4, 5]
    assert data.closed and config.closed  # the node keeps none of them
    container.stop(WAIT)
    status = served.ended()
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert b"".join(served.stdout) == b"serving\n"
    with pytest.raises(ConnectionRefusedError):  # the socket went with the process
        socket.create_connection(("127.0.0.1", served.port), timeout=WAIT).close()


def test_a_process_that_fails_ends_the_container_with_the_end_of_its_stderr(serving: WasiHttpServing) -> None:
    _container, served = serve(serving, {"FAKE": "fail"})
    status = served.ended()
    assert (status.exit_code, status.reason) == (2, "Error")
    assert status.message == "Caused by: not a component"
    assert b"failed to compile" in b"".join(served.stderr)  # the whole of it is in the log


def test_a_process_that_ignores_the_stop_is_killed_after_the_grace_period(serving: WasiHttpServing) -> None:
    container, served = serve(serving, {"FAKE": "stubborn", "TARGET_PORT": "1"})
    served.report()  # serving
    container.stop(0.3)
    status = served.ended()
    assert (status.exit_code, status.reason) == (EXIT_KILLED, "Killed")


@pytest.mark.parametrize("name", ["LD_PRELOAD", "GLIBC_TUNABLES", "WASMTIME_LOG", "LISTEN_FDS"])
def test_variables_the_wasmtime_process_would_read_are_refused(serving: WasiHttpServing, name: str) -> None:
    _container, served = serve(serving, {name: "evil.so"})
    status = served.ended()
    assert status.reason == "Error"
    assert status.message == host_env_refusal([name])
    assert name in status.message and "wasmtime process" in status.message
    assert host_env_refusal(["PATH", "RUST_LOG", "HOME"]) == ""


def test_no_cli_ends_the_container_with_why(tmp_path: Path) -> None:
    serving = WasiHttpServing(tmp_path / "missing" / "wasmtime", tmp_path / "wasi-http")
    held = open_beneath(tmp_path)
    _container, served = serve(serving, {}, [(held, "/data", False)])
    status = served.ended()
    assert status.reason == "Error"
    assert f"no wasmtime CLI at {tmp_path / 'missing' / 'wasmtime'}" in status.message
    assert held.closed


def test_a_host_port_is_refused(serving: WasiHttpServing) -> None:
    _container, served = serve(
        serving, {}, addresses=[("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    )
    status = served.ended()
    assert "hostPort is not served for wasi:http components" in status.message


def test_a_taken_port_ends_the_container(serving: WasiHttpServing) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _container, served = serve(serving, {}, addresses=[("127.0.0.1", port)])
        status = served.ended()
    assert status.reason == "Error"
    assert status.message.startswith(f"cannot listen on 127.0.0.1:{port}:")


def test_the_pod_environment_never_reaches_the_exec_helper(serving: WasiHttpServing, tmp_path: Path) -> None:
    """PATH and IFS of a pod would steer a shell; the helper is Python in isolated mode with an
    empty environment, and only wasmtime gets the pod's variables."""
    container, served = serve(serving, {"PATH": str(tmp_path), "PYTHONSTARTUP": "/x", "TARGET_PORT": "1"})
    report = served.report()
    assert report["env"] == {"PATH": str(tmp_path), "PYTHONSTARTUP": "/x", "TARGET_PORT": "1"}
    container.stop(WAIT)
    assert served.ended().reason == "Completed"
    assert os.environ.get("PYTHONSTARTUP") != "/x"
