"""WAGI containers (wasmlet.serve.wagi) on a real Runtime, real listeners on loopback and
modules written in WAT; plus Runtime.call with stdin and inline output, which WAGI runs on."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from wasmlet.held_dir import HeldDir, open_beneath
from wasmlet.runtime.engine import EXIT_KILLED, Execution, ExitStatus, RunSpec, Runtime
from wasmlet.serve.cgi import Route
from wasmlet.serve.listeners import HttpServers, Request
from wasmlet.serve.wagi import WagiContainer, WagiOptions, WagiServing

WASI = "wasi_snapshot_preview1"
WAIT = 10.0  # seconds a test waits for what must happen
WAGI_ENV = (Path(__file__).parents[1] / "modules" / "wagi_env.wat").read_text()

# Says "ran" on stderr (the container's log), then answers "ok".
MARKED_OK = f"""(module
  (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "ran\\n")
  (data (i32.const 128) "Content-Type: text/plain\\n\\nok\\n")
  (func $out (param $fd i32) (param $p i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $out (i32.const 2) (i32.const 64) (i32.const 4))
    (call $out (i32.const 1) (i32.const 128) (i32.const 29))))"""

EXIT_3 = f"""(module
  (import "{WASI}" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"""

SPIN = """(module (memory (export "memory") 1) (func (export "_start") (loop $forever (br $forever))))"""


# Sleeps 0.3 s (poll_oneoff on the monotonic clock), then answers "slept".
SLEEPER = f"""(module
  (import "{WASI}" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "Content-Type: text/plain\\n\\nslept\\n")
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 300000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.store (i32.const 200) (i32.const 256))
    (i32.store (i32.const 204) (i32.const 32))
    (drop (call $write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))))"""


def big_writer(check: bool) -> str:
    """Writes a 26-byte CGI head, then 8 KiB of body in one write, then "tail\\n". With ``check``
    it looks at the big write's errno: EIO (29) says "EIO" on stderr and exits 1, any other error
    exits 2. Without, it goes on as if the write had worked, and exits 0."""
    on_error = (
        """(local.set $errno (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (i32.eq (local.get $errno) (i32.const 29))
      (then (call $out (i32.const 2) (i32.const 96) (i32.const 4)) (call $exit (i32.const 1))))
    (if (local.get $errno) (then (call $exit (i32.const 2))))"""
        if check
        else "(drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))"
    )
    return f"""(module
  (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "Content-Type: text/plain\\n\\n")
  (data (i32.const 96) "EIO\\n")
  (data (i32.const 112) "tail\\n")
  (func $out (param $fd i32) (param $p i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $errno i32)
    (call $out (i32.const 1) (i32.const 32) (i32.const 26))
    (i32.store (i32.const 16) (i32.const 4096))
    (i32.store (i32.const 20) (i32.const 8192))
    {on_error}
    (call $out (i32.const 1) (i32.const 112) (i32.const 5))))"""


# Copies stdin to stdout, 64 KiB at a time, until end of file.
CAT = f"""(module
  (import "{WASI}" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (block $done
      (loop $next
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 65536))
        (br_if $done (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.load (i32.const 8)))
        (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (br $next)))))"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    """One WAGI container and what it reported."""

    port: int
    stderr: list[bytes]
    exits: list[ExitStatus] = field(default_factory=list)
    exited: threading.Event = field(default_factory=threading.Event)
    made: list[WagiContainer] = field(default_factory=list)

    @property
    def container(self) -> WagiContainer:
        return self.made[0]

    def on_exit(self, status: ExitStatus) -> None:
        self.exits.append(status)
        self.exited.set()

    def get(self, target: str, method: str = "GET", body: bytes | None = None, **headers: str) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, response.getheader("content-type") or "", response.read())
        finally:
            conn.close()

    def log(self) -> bytes:
        return b"".join(self.stderr)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runtime = Runtime(tmp_path / "cache")
        self.servers = HttpServers(workers=4)
        self.served: list[Served] = []
        self.modules = 0

    def module(self, wat: str) -> Path:
        self.modules += 1
        wasm = self.tmp_path / f"module{self.modules}.wasm"
        wasm.write_bytes(wasmtime.wat2wasm(wat))
        return self.runtime.precompile(wasm)

    def serve(
        self,
        wat: str,
        *,
        route: str = "/...",
        options: WagiOptions | None = None,
        addresses: list[tuple[str, int]] | None = None,
        preopens: tuple[tuple[HeldDir, str, bool], ...] = (),
        env: dict[str, str] | None = None,
    ) -> Served:
        stderr: list[bytes] = []
        template = RunSpec(
            self.module(wat),
            ["main"],
            env or {},
            stdout=lambda data: None,  # a request's output goes to its response
            stderr=stderr.append,
            name="default/web/main",
        )
        serving = WagiServing(self.runtime, self.servers, options or WagiOptions(timeout=5.0))
        port = free_port()
        where = addresses if addresses is not None else [("127.0.0.1", port)]
        served = Served(where[0][1], stderr)
        served.made.append(serving.serve(template, Route(route), where, preopens, served.on_exit))
        self.served.append(served)
        return served

    def close(self) -> None:
        for served in self.served:
            served.container.stop(0)
        for served in self.served:
            served.exited.wait(WAIT)
        self.servers.close()
        self.runtime.close()


@pytest.fixture
def wagi(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    except ConnectionRefusedError:
        return True
    return False


def lines(body: bytes) -> list[str]:
    return body.decode().splitlines()


def test_a_request_runs_the_module_with_the_cgi_environment_and_body(wagi: Harness) -> None:
    served = wagi.serve(WAGI_ENV, route="/hello/...", env={"GREETING": "hi", "PATH_INFO": "/pod"})
    reply = served.get(
        "/hello/w%20x?q=1", "POST", b"the body", **{"X-Test": "yes", "Authorization": "secret"}
    )
    assert (reply.status, reply.content_type) == (200, "text/plain")
    got = lines(reply.body)
    assert got[-1] == "body=the body"
    env = dict(line.split("=", 1) for line in got[:-1])
    assert env["GREETING"] == "hi"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == "/hello"
    assert env["PATH_INFO"] == "/w x"  # the CGI variable, over the container's own
    assert env["X_RAW_PATH_INFO"] == "/w%20x"
    assert env["QUERY_STRING"] == "q=1"
    assert env["HTTP_X_TEST"] == "yes"
    assert env["CONTENT_LENGTH"] == "8"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(served.port))
    assert "HTTP_AUTHORIZATION" not in env
    assert "secret" not in reply.body.decode()


def test_each_request_runs_a_fresh_instance(wagi: Harness) -> None:
    served = wagi.serve(MARKED_OK)
    replies = [served.get(f"/{n}") for n in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, b"ok\n")] * 3
    assert served.log() == b"ran\n" * 3  # the module's stderr is the container's log


def test_a_path_outside_the_route_is_404_and_the_module_does_not_run(wagi: Harness) -> None:
    served = wagi.serve(MARKED_OK, route="/api/...")
    for target in ("/", "/apix", "/other/api", "/ap?x=/api"):
        reply = served.get(target)
        assert (reply.status, reply.content_type, reply.body) == (404, "text/plain", b"not found\n")
    assert served.log() == b""
    assert served.get("/api/x").status == 200
    assert served.log() == b"ran\n"


def test_an_exact_route_serves_only_its_path(wagi: Harness) -> None:
    served = wagi.serve(MARKED_OK, route="/exact")
    assert served.get("/exact?with=query").status == 200
    assert served.get("/exact/more").status == 404


def test_a_module_that_exits_non_zero_is_500_and_the_request_is_logged(wagi: Harness) -> None:
    served = wagi.serve(EXIT_3)
    reply = served.get("/fail?secret=1")
    assert (reply.status, reply.content_type, reply.body) == (500, "text/plain", b"the handler failed\n")
    assert served.log() == b"wasmlet: request GET /fail: Error \n"  # the path, not the query


def test_a_module_that_traps_is_500_with_the_cause_logged(wagi: Harness) -> None:
    served = wagi.serve("""(module (memory (export "memory") 1) (func (export "_start") unreachable))""")
    assert served.get("/x", "DELETE").status == 500
    line = served.log().decode()
    assert line.startswith("wasmlet: request DELETE /x: Error ")
    assert "unreachable" in line


def test_a_module_that_is_not_cgi_is_500(wagi: Harness) -> None:
    served = wagi.serve(CAT)  # echoes the body: "hello" is no CGI head
    reply = served.get("/", "POST", b"hello")
    assert reply.status == 500
    assert reply.body == b"the WAGI handler's response is not CGI: header line 'hello' is not name: value\n"
    echoed = served.get("/", "POST", b"Location: /there\n\n")
    assert echoed.status == 302


def test_a_module_that_runs_past_the_timeout_is_stopped_and_gets_504(wagi: Harness) -> None:
    served = wagi.serve(SPIN, options=WagiOptions(timeout=0.5))
    started = time.monotonic()
    reply = served.get("/")
    took = time.monotonic() - started
    assert (reply.status, reply.content_type, reply.body) == (
        504,
        "text/plain",
        b"the handler ran out of time\n",
    )
    assert 0.4 < took < 5.0
    assert served.log() == b""


def test_after_a_timeout_other_requests_still_get_their_full_time(wagi: Harness) -> None:
    spin = wagi.serve(SPIN, options=WagiOptions(timeout=0.3))
    quick = wagi.serve(MARKED_OK, options=WagiOptions(timeout=0.3))
    assert spin.get("/").status == 504
    assert [quick.get("/").status for _n in range(3)] == [200, 200, 200]


def test_output_over_the_limit_fails_the_modules_write_and_the_request(wagi: Harness) -> None:
    served = wagi.serve(big_writer(check=True), options=WagiOptions(max_response_bytes=4096))
    reply = served.get("/big")
    assert (reply.status, reply.content_type) == (500, "text/plain")
    assert reply.body == b"the handler's response is over 4096 bytes\n"
    assert served.log() == b"EIO\nwasmlet: request GET /big: the response is over 4096 bytes\n"


def test_output_over_the_limit_is_never_served_cut_even_when_the_module_ignores_the_error(
    wagi: Harness,
) -> None:
    served = wagi.serve(big_writer(check=False), options=WagiOptions(max_response_bytes=4096))
    reply = served.get("/big")
    assert reply.status == 500
    assert reply.body == b"the handler's response is over 4096 bytes\n"
    assert served.log() == b"wasmlet: request GET /big: the response is over 4096 bytes\n"


def test_output_within_the_limit_is_served_whole(wagi: Harness) -> None:
    served = wagi.serve(big_writer(check=True), options=WagiOptions(max_response_bytes=26 + 8192 + 5))
    reply = served.get("/")
    assert (reply.status, reply.body) == (200, bytes(8192) + b"tail\n")


def test_stop_closes_the_listeners_and_completes(wagi: Harness, tmp_path: Path) -> None:
    held = open_beneath(tmp_path)
    served = wagi.serve(MARKED_OK, preopens=((held, "/data", True),))
    assert served.get("/").status == 200
    assert not held.closed  # held while the container serves
    served.container.stop(5.0)
    assert refused(served.port)
    assert served.exited.wait(WAIT)
    [status] = served.exits
    assert (status.exit_code, status.reason, status.message) == (0, "Completed", "")
    assert status.started_at <= status.finished_at
    assert held.closed
    served.container.stop(5.0)  # a second stop does nothing
    time.sleep(0.2)
    assert len(served.exits) == 1


def test_a_request_that_outlives_the_grace_period_is_killed(wagi: Harness) -> None:
    served = wagi.serve(SPIN, options=WagiOptions(timeout=30.0))
    replies: list[Reply] = []
    client = threading.Thread(target=lambda: replies.append(served.get("/")))
    client.start()
    assert until(lambda: bool(served.container._in_flight))  # the request's instance runs
    served.container.stop(0.2)
    assert served.exited.wait(WAIT)
    client.join(WAIT)
    [status] = served.exits
    assert (status.exit_code, status.reason) == (EXIT_KILLED, "Killed")
    assert status.message == "killed: requests outlived the grace period"
    assert [r.status for r in replies] == [504]


def test_a_request_in_flight_at_stop_is_answered_within_the_grace_period(wagi: Harness) -> None:
    served = wagi.serve(SLEEPER)
    replies: list[Reply] = []
    client = threading.Thread(target=lambda: replies.append(served.get("/")))
    client.start()
    assert until(lambda: bool(served.container._in_flight))
    served.container.stop(5.0)
    assert refused(served.port)  # no new connection while the last request finishes
    client.join(WAIT)
    assert [(r.status, r.body) for r in replies] == [(200, b"slept\n")]
    assert served.exited.wait(WAIT)
    assert [(s.exit_code, s.reason) for s in served.exits] == [(0, "Completed")]


def test_a_request_that_reaches_an_ended_container_is_503_and_runs_nothing(
    wagi: Harness, tmp_path: Path
) -> None:
    """A request queued behind others can reach the handler after the container ended: its
    mounts' descriptors are closed by then (and their numbers may be another pod's), so it
    must not run."""
    held = open_beneath(tmp_path)
    served = wagi.serve(MARKED_OK, preopens=((held, "/data", True),))
    served.container.stop(0)
    assert served.exited.wait(WAIT) and held.closed
    late = Request("GET", "/", [], b"", ("127.0.0.1", 1), ("127.0.0.1", served.port))
    reply = served.container.handle(late)
    assert (reply.status, reply.body) == (503, b"the handler is stopping\n")


def test_mounts_close_only_once_no_request_runs(wagi: Harness, tmp_path: Path) -> None:
    held = open_beneath(tmp_path)
    served = wagi.serve(SLEEPER, preopens=((held, "/data", True),))
    container = served.container
    at_exit: list[tuple[int, bool]] = []
    report = container._on_exit

    def on_exit(status: ExitStatus) -> None:
        at_exit.append((container._active, held.closed))
        report(status)

    container._on_exit = on_exit
    replies: list[Reply] = []
    client = threading.Thread(target=lambda: replies.append(served.get("/")))
    client.start()
    assert until(lambda: bool(container._in_flight))
    container.stop(0)  # no grace: the request's instance is stopped
    assert served.exited.wait(WAIT)
    client.join(WAIT)
    assert at_exit == [(0, True)]  # closed after the request returned
    assert [r.status for r in replies] == [504]


def test_requests_run_their_instances_in_parallel(wagi: Harness) -> None:
    served = wagi.serve(SLEEPER)
    replies: list[Reply] = []
    clients = [threading.Thread(target=lambda: replies.append(served.get("/"))) for _n in range(4)]
    started = time.monotonic()
    for client in clients:
        client.start()
    for client in clients:
        client.join(WAIT)
    took = time.monotonic() - started
    assert [r.status for r in replies] == [200] * 4
    assert took < 1.0  # one after another would take 1.2 s


def test_a_taken_port_ends_the_container_with_an_error_naming_the_address(
    wagi: Harness, tmp_path: Path
) -> None:
    held = open_beneath(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        served = wagi.serve(
            MARKED_OK, addresses=[("127.0.0.1", free), ("127.0.0.1", port)], preopens=((held, "/d", False),)
        )
        assert served.exited.is_set()  # at once, from serve()
        [status] = served.exits
        assert (status.exit_code, status.reason) == (1, "Error")
        assert status.message == f"cannot listen on 127.0.0.1:{port}: Address already in use"
        assert refused(free)  # the address that could be had is given up
        assert held.closed
        served.container.stop(1.0)  # the pod worker stops what it started: no second exit
        time.sleep(0.3)
        assert len(served.exits) == 1


def test_runtime_call_feeds_stdin_and_has_all_the_inline_output_when_it_returns(wagi: Harness) -> None:
    chunks: list[bytes] = []
    watched: list[tuple[Execution, bool]] = []
    data = bytes(range(256)) * 1000  # 256 000 bytes: several reads and writes
    spec = RunSpec(
        wagi.module(CAT),
        ["cat"],
        {},
        chunks.append,
        lambda data: None,
        stdin=data,
        inline_output=True,
        name="t/cat",
    )
    status = wagi.runtime.call(spec, watch=lambda execution: watched.append((execution, execution.running)))
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert b"".join(chunks) == data  # all of it, when call returns
    assert len(chunks) > 1
    [(execution, running_when_watched)] = watched
    assert running_when_watched
    assert not execution.running


# Writes "A" to stdout, "B" to stderr, "C" to stdout.
INTERLEAVED = f"""(module
  (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "ABC")
  (func $out (param $fd i32) (param $p i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $out (i32.const 1) (i32.const 64))
    (call $out (i32.const 2) (i32.const 65))
    (call $out (i32.const 1) (i32.const 66))))"""


def test_inline_output_is_delivered_as_each_write_happens(wagi: Harness) -> None:
    """Each write reaches its callback before the module goes on: stdout and stderr stay in the
    order written (through pipes, each would be pumped on its own)."""
    seen: list[tuple[str, bytes]] = []
    spec = RunSpec(
        wagi.module(INTERLEAVED),
        ["m"],
        {},
        lambda data: seen.append(("out", data)),
        lambda data: seen.append(("err", data)),
        inline_output=True,
    )
    for _attempt in range(20):
        seen.clear()
        assert wagi.runtime.call(spec).reason == "Completed"
        assert seen == [("out", b"A"), ("err", b"B"), ("out", b"C")]


def test_runtime_call_with_no_stdin_reads_end_of_file(wagi: Harness) -> None:
    chunks: list[bytes] = []
    spec = RunSpec(wagi.module(CAT), ["cat"], {}, chunks.append, lambda data: None, inline_output=True)
    status = wagi.runtime.call(spec)
    assert (status.exit_code, chunks) == (0, [])


def test_runtime_call_gives_stderr_inline_too(wagi: Harness) -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    spec = RunSpec(wagi.module(MARKED_OK), ["m"], {}, out.append, err.append, inline_output=True)
    assert wagi.runtime.call(spec).reason == "Completed"
    assert (b"".join(out), b"".join(err)) == (b"Content-Type: text/plain\n\nok\n", b"ran\n")


def until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
