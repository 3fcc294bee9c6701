"""Figure 9: pods that serve, loaded from this machine over their pod IPs.

- A WAGI hello handler (a fresh module instance per request) on a bench node: requests/s and
  latency with keep-alive clients; pod created → first 200 response with the module cached; node
  memory per idle handler.
- A ``wasi:http`` component under wasmlet and under bare ``wasmtime serve``
  (bench/serving_components.py).

Load is bounded in count and time, and only ever sent to addresses on this machine
(bench/http_load.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.common import (
    Cluster,
    Context,
    Figure,
    Outcome,
    PodWatcher,
    namespace,
    pod_manifest,
    push,
    rss_bytes,
    running_node,
    summary,
    wait_for,
    wasm,
)
from bench.http_load import CLIENTS, PORT, create_to_first_200, first_200, load, pod_ip, running_count
from bench.serving_components import (
    add_wasi_http_figures,
    build_http_hello,
    wasi_http_bare,
    wasi_http_wasmlet,
    wasmlet_serve_argv,
    wasmtime_cli,
)


def handler_manifest(name: str, node: str, image: str) -> dict[str, Any]:
    manifest = pod_manifest(name, node, image, bind=True)
    manifest["metadata"]["annotations"] = {"wasmlet.dev/wagi": json.dumps({"main": {"route": "/..."}})}
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": PORT}]
    return manifest


def run(ctx: Context) -> Outcome:
    out = Outcome("serving")
    cli = wasmtime_cli()
    component = build_http_hello(ctx.log)
    argv = wasmlet_serve_argv(cli, component, ctx.workdir / "bare-serve")
    cluster: Cluster = ctx.cluster()
    samples = ctx.scale(20, 2)
    idle_pods = ctx.scale(100, 5)
    image = push("wagi-hello", wasm("wagi_hello"), ctx.workdir)
    component_image = push("http-hello", component.read_bytes(), ctx.workdir)
    with (
        cluster.admin() as admin,
        running_node(
            cluster,
            admin,
            ctx.workdir,
            "bench-serving",
            max_pods=1000,
            flags=("--wasmtime-cli", str(cli)),
        ) as node,
        namespace(admin, "bench-serving") as ns,
        PodWatcher(cluster, ns) as watcher,
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

        manifests = [handler_manifest(f"first-{index:03d}", node.name, image) for index in range(samples)]
        to_200 = [create_to_first_200(admin, watcher, path, manifest) for manifest in manifests]
        out.data["create_to_first_200_ms"] = summary(to_200, 1000, 1)

        # The wasi:http component, bare and under wasmlet, back to back on the same machine.
        bare = wasi_http_bare(ctx, argv)
        under = wasi_http_wasmlet(ctx, cli, admin, node, watcher, ns=ns, image=component_image)
        out.data["wasi_http"] = {
            "component": "examples/http-hello",
            "component_bytes": component.stat().st_size,
            "cli": str(cli),
            "flags": [
                arg
                for arg in argv[2:-1]
                if arg != "--systemd-listenfd" and not arg.startswith("-Ccache-config=")
            ],
            "bare": bare,
            "wasmlet": under["load"],
            "create_to_first_200_ms": under["create_to_first_200_ms"],
            "idle": under["idle"],
        }

        time.sleep(2)
        before = rss_bytes(node.pid)
        for index in range(idle_pods):
            admin.post(path, handler_manifest(f"idle-{index:04d}", node.name, image))
        wait_for(
            f"{idle_pods} idle handlers Running",
            lambda: running_count(admin, path, "idle-") == idle_pods or None,
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
    add_wasi_http_figures(out, out.data["wasi_http"])
    return out
