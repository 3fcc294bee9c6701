"""Figure 9: pods that serve. A WAGI hello handler (a fresh module instance per request) on a
bench node, loaded from this machine over its pod IP: requests/s and latency with keep-alive
clients; pod created → first 200 response with the module cached; node memory per idle handler.

Load is bounded in count and time, and only ever sent to the pod's address on this machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from typing import Any

from bench.common import (
    Cluster,
    Context,
    Figure,
    Outcome,
    namespace,
    pod_manifest,
    push,
    rss_bytes,
    running_node,
    summary,
    wait_for,
    wasm,
)
from wasmlet.kube.client import ApiError, Client

PORT = 8080
CLIENTS = 4


def handler_manifest(name: str, node: str, image: str) -> dict[str, Any]:
    manifest = pod_manifest(name, node, image, bind=True)
    manifest["metadata"]["annotations"] = {"wasmlet.dev/wagi": json.dumps({"main": {"route": "/..."}})}
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": PORT}]
    return manifest


def pod_ip(admin: Client, ns: str, name: str) -> str | None:
    with contextlib.suppress(ApiError):
        status = admin.get(f"/api/v1/namespaces/{ns}/pods/{name}").get("status") or {}
        if status.get("phase") == "Running":
            return str(status.get("podIP") or "") or None
    return None


def get(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    return response.status


def first_200(ip: str, deadline: float) -> float:
    """Poll ``ip`` until it answers 200; the time it did."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(ip, PORT, timeout=2)
        try:
            if get(conn) == 200:
                return time.monotonic()
        except OSError:
            time.sleep(0.002)
        finally:
            conn.close()
    raise TimeoutError(f"{ip}:{PORT} did not answer 200")


def load(ip: str, seconds: float, max_requests: int) -> tuple[int, list[float], int]:
    """CLIENTS keep-alive clients for ``seconds`` or ``max_requests`` in all: (ok, latencies, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(ip, PORT, timeout=10)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < until and len(mine) < max_requests // CLIENTS:
            started = time.perf_counter()
            try:
                ok = get(conn) == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(ip, PORT, timeout=10)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                failed += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client) for _index in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return round(len(latencies) / elapsed), latencies, errors[0]


def run(ctx: Context) -> Outcome:
    out = Outcome("serving")
    cluster: Cluster = ctx.cluster()
    samples = ctx.scale(20, 2)
    idle_pods = ctx.scale(100, 5)
    image = push("wagi-hello", wasm("wagi_hello"), ctx.workdir)
    with (
        cluster.admin() as admin,
        running_node(cluster, admin, ctx.workdir, "bench-serving", max_pods=1000) as node,
        namespace(admin, "bench-serving") as ns,
    ):
        path = f"/api/v1/namespaces/{ns}/pods"
        admin.post(path, handler_manifest("warm", node.name, image))  # pulls and compiles once
        ip = wait_for("the warm handler", lambda: pod_ip(admin, ns, "warm"), 60)
        first_200(ip, time.monotonic() + 30)
        ctx.quiet()
        rate, latencies, errors = load(ip, ctx.seconds(10, 1), ctx.scale(40000, 400))
        out.data["wagi_hello"] = {
            "requests_per_s": rate,
            "latency_ms": summary(latencies, 1000, 2),
            "errors": errors,
            "clients": CLIENTS,
        }
        admin.delete(f"{path}/warm?gracePeriodSeconds=0")

        to_200 = []
        for index in range(samples):
            name = f"first-{index:03d}"
            created = time.monotonic()
            admin.post(path, handler_manifest(name, node.name, image))
            ip = wait_for(f"pod {name}'s IP", lambda n=name: pod_ip(admin, ns, n), 60)  # type: ignore[misc]
            to_200.append(first_200(ip, created + 60) - created)
            admin.delete(f"{path}/{name}?gracePeriodSeconds=0")
        out.data["create_to_first_200_ms"] = summary(to_200, 1000, 1)

        time.sleep(2)
        before = rss_bytes(node.pid)
        for index in range(idle_pods):
            admin.post(path, handler_manifest(f"idle-{index:04d}", node.name, image))
        wait_for(
            f"{idle_pods} idle handlers Running",
            lambda: (
                len(
                    [
                        p
                        for p in admin.get(path)["items"]
                        if p["metadata"]["name"].startswith("idle-")
                        and (p.get("status") or {}).get("phase") == "Running"
                    ]
                )
                == idle_pods
                or None
            ),
            300,
        )
        time.sleep(2)
        per_pod = (rss_bytes(node.pid) - before) / idle_pods
        out.data["idle_handler_rss_bytes"] = round(per_pod)
    wagi = out.data["wagi_hello"]
    out.add(
        Figure(
            "9a",
            "WAGI hello handler, requests/s (fresh instance each)",
            wagi["requests_per_s"],
            "req/s",
            1000,
            ">=",
            f"{CLIENTS} keep-alive clients on this machine; p50 {wagi['latency_ms'].get('p50')} ms, "
            f"p99 {wagi['latency_ms'].get('p99')} ms, {wagi['errors']} errors",
        )
    )
    first = out.data["create_to_first_200_ms"]
    out.add(
        Figure(
            "9b",
            "pod created → first 200 (module cached), p50",
            first.get("p50"),
            "ms",
            100,
            "<=",
            f"{samples} pods bound to the node one after another; p99 {first.get('p99')} ms",
        )
    )
    out.add(
        Figure(
            "9c",
            "node memory per idle HTTP pod",
            round(out.data["idle_handler_rss_bytes"] / 1024, 1),
            "KiB",
            1024,
            "<=",
            f"RSS growth of the wasmlet process over {idle_pods} idle WAGI handlers",
        )
    )
    out.not_measured.append(
        "wasi:http components under wasmlet vs bare `wasmtime serve`: components are issue #15's"
    )
    return out
