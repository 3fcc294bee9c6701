"""What the tests of serving pods share: a Deployment behind a Service, HTTP to a pod or Service
address, the CGI variables a WAGI handler (tests/modules/wagi_env.wat) answers with, and the
Service's ready endpoints."""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Iterator
from typing import Any

from helpers import SEED_TOLERATIONS, delete_quietly

from wasmlet.kube.client import Client

APPS = "/apis/apps/v1/namespaces/default"
CORE = "/api/v1/namespaces/default"


@contextlib.contextmanager
def served_deployment(
    admin: Client,
    node: str,
    name: str,
    container: dict[str, Any],
    *,
    replicas: int,
    annotations: dict[str, str] | None = None,
    grace: int = 2,
) -> Iterator[str]:
    """A Deployment ``name`` of ``replicas`` pods of ``container`` on ``node`` and a ClusterIP
    Service of the same name (80 → 8080); both deleted afterwards."""
    labels = {"app": name}
    template: dict[str, Any] = {
        "metadata": {"labels": labels, "annotations": annotations or {}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": SEED_TOLERATIONS,
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
        },
    }
    admin.post(
        f"{APPS}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        },
    )
    try:
        admin.post(
            f"{CORE}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        )
        yield name
    finally:
        delete_quietly(admin, f"{APPS}/deployments/{name}")
        delete_quietly(admin, f"{CORE}/services/{name}")


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
