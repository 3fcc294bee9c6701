"""HTTP load for figure 9 (bench/serving.py, bench/serving_components.py): keep-alive clients
against one address on this machine, bounded in count and time, and polling for a first 200."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from typing import Any

from bench.common import CpuMeter, PodWatcher, summary
from wasmlet.kube.client import ApiError, Client

PORT = 8080
CLIENTS = 4


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


def first_200(ip: str, deadline: float, port: int = PORT) -> float:
    """Poll ``ip:port`` until it answers 200; the time it did."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(ip, port, timeout=2)
        try:
            if get(conn) == 200:
                return time.monotonic()
        except OSError:
            time.sleep(0.002)
        finally:
            conn.close()
    raise TimeoutError(f"{ip}:{port} did not answer 200")


def load(ip: str, seconds: float, max_requests: int, port: int = PORT) -> tuple[int, list[float], int]:
    """CLIENTS keep-alive clients for ``seconds`` or ``max_requests`` in all: (ok/s, latencies, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(ip, port, timeout=10)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < until and len(mine) < max_requests // CLIENTS:
            started = time.perf_counter()
            try:
                ok = get(conn) == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(ip, port, timeout=10)
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measured(rate: int, latencies: list[float], errors: int, cpu: CpuMeter) -> dict[str, Any]:
    per_request = {
        name: round(seconds / len(latencies) * 1e6, 1) if latencies else None
        for name, seconds in cpu.seconds.items()
    }
    return {
        "requests_per_s": rate,
        "latency_ms": summary(latencies, 1000, 2),
        "errors": errors,
        "clients": CLIENTS,
        "cpu_us_per_request": per_request,
    }


def running_count(admin: Client, path: str, prefix: str) -> int:
    return len(
        [
            p
            for p in admin.get(path)["items"]
            if p["metadata"]["name"].startswith(prefix) and (p.get("status") or {}).get("phase") == "Running"
        ]
    )


def create_to_first_200(
    admin: Client, watcher: PodWatcher, path: str, manifest: dict[str, Any], port: int = PORT
) -> float:
    """Seconds from just before ``manifest``'s POST to its pod's first 200, then the pod is
    deleted. The pod's IP comes from ``watcher``'s watch as soon as its status has it (a poll of
    the API would add up to its interval), and the address is then polled every 2 ms."""
    name = manifest["metadata"]["name"]
    watcher.mark_created(name)
    created = time.monotonic()
    admin.post(path, manifest)

    def has_ip() -> bool:
        times = watcher.times[name]
        return times.phase == "Running" and bool(times.status.get("podIP"))

    watcher.wait(f"pod {name}'s IP", has_ip, 60)
    took = first_200(str(watcher.times[name].status["podIP"]), created + 60, port) - created
    admin.delete(f"{path}/{name}?gracePeriodSeconds=0")
    return took
