"""wasi:http components against a real node: examples/http-hello (Rust, wasm32-wasip2) built with
cargo, pushed to the registry, and served by the real ``wasmtime serve`` (built by the node role's
script) on pod IPs, behind a Service, with its output in the pod's log; components that are not
HTTP handlers are refused with why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from helpers import ROOT, Pods, Registry, unique, wait_for
from http_pods import APPS, CORE, ready_endpoints, request, running_pod_ips, served_deployment
from wasmlet_proc import WasmletNode

from wasmlet import paths
from wasmlet.kube.client import Client
from wasmlet.oci.push import push_module
from wasmlet.serve import wasi_http

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "http-hello"
RUST_TOOLCHAIN = "1.97.0"  # the node role's node_wasmtime_cli_rust


def cargo_home() -> Path:
    return Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))


@pytest.fixture(scope="session")
def wasmtime_cli() -> Path:
    """The node role's wasmtime CLI, built by its script when absent (cached in ~/.wasmlet/bin)."""
    cli = wasi_http.default_cli()
    if not cli.exists():
        script = ROOT / "roles" / "node" / "files" / "build-wasmtime-cli.sh"
        subprocess.run([str(script), wasi_http.WASMTIME_VERSION, RUST_TOOLCHAIN, str(cli.parent)], check=True)
    return cli


@pytest.fixture(scope="session")
def http_hello(registry: Registry, wasmtime_cli: Path) -> str:
    """examples/http-hello built for wasm32-wasip2 (a component) and pushed."""
    target = paths.home() / "build" / "http-hello-tests"
    subprocess.run(
        [
            str(cargo_home() / "bin" / "cargo"),
            "build",
            "--release",
            "--locked",
            "--target=wasm32-wasip2",
            f"--target-dir={target}",
        ],
        cwd=EXAMPLE,
        check=True,
    )
    wasm = target / "wasm32-wasip2" / "release" / "http_hello.wasm"
    ref = f"{registry.host}/{unique('http-hello')}:v1"
    push_module(ref, wasm, insecure_registries={registry.host})
    return ref


@pytest.fixture
def deployment(admin: Client, wasm_node: WasmletNode, http_hello: str) -> Iterator[str]:
    """examples/http-hello/http-hello.yaml's Deployment and Service, on the session node."""
    container: dict[str, Any] = {
        "name": "hello",
        "image": http_hello,
        "ports": [{"containerPort": 8080}],
        "env": [{"name": "GREETING", "value": "Hello from wasmlet's test"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    with served_deployment(
        admin, wasm_node.name, unique("http-hello"), container, replicas=2, grace=5
    ) as name:
        yield name


def serving_processes(node: WasmletNode) -> list[int]:
    """pids of the wasmtime CLI serving a component of ``node``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [str(wasi_http.default_cli()).encode(), b"serve"] and any(
            arg.startswith(str(node.data_dir).encode()) for arg in argv
        ):
            found.append(int(entry.name))
    return found


def test_a_component_serves_behind_a_service_and_its_process_goes_with_its_pod(
    admin: Client, wasm_node: WasmletNode, deployment: str
) -> None:
    def two_ready() -> list[str] | None:
        ips = running_pod_ips(admin, deployment)
        return ips if len(ips) == 2 and ready_endpoints(admin, deployment) == ips else None

    ips = wait_for("2 replicas Running and ready in the Service's EndpointSlice", two_ready, timeout=90)
    for ip in ips:
        status, text = request(ip, 8080, "POST", "/echo?x=1", body=b"ping")
        assert status == 200, text
        assert text == "Hello from wasmlet's test\nmethod=POST\npath=/echo?x=1\nbody=ping\n"
        assert request(ip, 8080, "GET", "/fail") == (500, "failing on purpose\n")
    service_ip = admin.get(f"{CORE}/services/{deployment}")["spec"]["clusterIP"]

    def through_service() -> tuple[int, str] | None:
        try:
            reply = request(service_ip, 80, "GET", "/")
        except OSError:  # kube-proxy has not translated the ClusterIP yet: refused or no route to host
            return None
        return reply if reply[0] == 200 else None

    status, text = wait_for("the ClusterIP to answer", through_service, timeout=30)
    assert text.startswith("Hello from wasmlet's test\nmethod=GET\npath=/\n")

    pods = admin.get(f"{CORE}/pods", {"labelSelector": f"app={deployment}"})["items"]
    logs = Pods(admin, wasm_node).logs(pods[0]["metadata"]["name"])
    assert "GET / 200" in logs  # what the component wrote on stderr, as the container's log
    assert len(serving_processes(wasm_node)) == 2

    admin.patch(f"{APPS}/deployments/{deployment}/scale", {"spec": {"replicas": 0}})
    wait_for("the EndpointSlice to empty", lambda: ready_endpoints(admin, deployment) == [], timeout=60)

    def closed(ip: str) -> bool:
        try:
            request(ip, 8080, "GET", "/")
        except ConnectionRefusedError:
            return True
        return False

    wait_for("every listener to close", lambda: all(closed(ip) for ip in ips), timeout=30)
    wait_for("the wasmtime processes to end", lambda: not serving_processes(wasm_node), timeout=30)


@pytest.mark.parametrize(
    ("wat", "why"),
    [
        ("(component)", "is a component exporting nothing"),
        (
            """(component
              (core module $m (func (export "run") (result i32) (i32.const 0)))
              (core instance $i (instantiate $m))
              (func $run (result (result)) (canon lift (core func $i "run")))
              (instance $cli (export "run" (func $run)))
              (export "wasi:cli/run@0.2.0" (instance $cli)))""",
            "is a command component (wasi:cli/run)",
        ),
    ],
)
def test_a_component_that_is_no_http_handler_is_refused_with_why(
    pods: Pods, registry: Registry, tmp_path: Path, wat: str, why: str
) -> None:
    wasm = tmp_path / "component.wasm"
    wasm.write_bytes(wasmtime.wat2wasm(wat))
    ref = f"{registry.host}/{unique('component')}:v1"
    push_module(ref, wasm, insecure_registries={registry.host})
    name = pods.create(unique("not-http"), ref, restartPolicy="Never")
    waiting = pods.wait_state(name, "waiting", "CreateContainerError")
    assert why in waiting["message"], waiting
    assert "wasi:http/incoming-handler" in waiting["message"]
