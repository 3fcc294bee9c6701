"""What the tests of serving pods share: HTTP to a pod or Service address, the CGI variables a
WAGI handler (tests/modules/wagi_env.wat) answers with, and the Service's ready endpoints."""

from __future__ import annotations

import http.client

from wasmlet.kube.client import Client


def request(ip: str, port: int, method: str = "GET", path: str = "/", body: bytes = b"") -> tuple[int, str]:
    conn = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        conn.request(method, path, body=body or None)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def cgi_variables(text: str) -> dict[str, str]:
    head = text.partition("body=")[0]
    return dict(line.split("=", 1) for line in head.splitlines() if "=" in line)


def ready_endpoints(admin: Client, service: str, namespace: str = "default") -> list[str]:
    slices = admin.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        {"labelSelector": f"kubernetes.io/service-name={service}"},
    )["items"]
    return sorted(
        address
        for found in slices
        for endpoint in found.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    )


def running_pod_ips(admin: Client, app: str) -> list[str]:
    items = admin.get("/api/v1/namespaces/default/pods", {"labelSelector": f"app={app}"})["items"]
    return sorted(
        p["status"]["podIP"]
        for p in items
        if p.get("status", {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
        and p["status"].get("podIP")
    )
