"""A real wasmlet process joins the real cluster: TLS bootstrap, Node, Lease, kubelet API."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Cluster, approve_csr, delete_quietly, unique, wait_for
from wasmlet_proc import WASMLET, WasmletNode, running_node, write_bootstrap

from wasmlet import __version__, pki
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client
from wasmlet.ops import tokens

pytestmark = pytest.mark.integration
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


@pytest.fixture
def joined(wasm_node: WasmletNode) -> WasmletNode:
    return wasm_node


def test_node_joins_ready_with_its_ip_version_labels_and_taints(admin: Client, joined: WasmletNode) -> None:
    node = admin.get(f"/api/v1/nodes/{joined.name}")
    status = node["status"]
    assert {"type": "InternalIP", "address": "127.0.0.2"} in status["addresses"]
    assert status["nodeInfo"]["kubeletVersion"] == __version__
    assert status["nodeInfo"]["architecture"] == "wasm32-wasi"
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("wasmtime://")
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
    assert int(status["capacity"]["pods"]) == 110
    assert int(status["capacity"]["cpu"]) >= 1
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == "wasm32-wasi"
    assert labels["type"] == "wasmlet"
    taints = {(t["key"], t.get("value"), t["effect"]) for t in node["spec"]["taints"]}
    assert ("kubernetes.io/arch", "wasm32-wasi", "NoSchedule") in taints
    assert ("kubernetes.io/arch", "wasm32-wasi", "NoExecute") in taints


def test_node_renews_its_lease(admin: Client, joined: WasmletNode) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{joined.name}"
    first = admin.get(path)["spec"]["renewTime"]
    renewed = wait_for("the lease to be renewed", lambda: admin.get(path)["spec"]["renewTime"] != first, 25)
    assert renewed
    assert admin.get(path)["spec"]["holderIdentity"] == joined.name


def test_node_records_kubelets_node_events(cluster: Cluster, admin: Client, joined: WasmletNode) -> None:
    node = admin.get(f"/api/v1/nodes/{joined.name}")
    selector = f"involvedObject.kind=Node,involvedObject.name={joined.name}"
    wanted = {
        "Starting": "Starting wasmlet.",
        "NodeReady": f"Node {joined.name} status is now: NodeReady",
        "NodeHasSufficientMemory": f"Node {joined.name} status is now: NodeHasSufficientMemory",
        "NodeAllocatableEnforced": "Updated Node Allocatable limit across pods",
    }

    def recorded() -> dict[str, dict[str, Any]] | None:
        items = admin.get("/api/v1/namespaces/default/events", {"fieldSelector": selector})["items"]
        by_reason = {event["reason"]: event for event in items}
        return by_reason if wanted.keys() <= by_reason.keys() else None

    events = wait_for("the node's events", recorded, 30)
    for reason, message in wanted.items():
        event = events[reason]
        assert (event["type"], event["message"]) == ("Normal", message)
        assert event["involvedObject"]["uid"] == node["metadata"]["uid"]
        assert "namespace" not in event["involvedObject"]
        assert event["source"] == {"component": "wasmlet", "host": joined.name}
    # What an operator reads: kubectl describe node lists them.
    kubectl = [str(cluster.kubectl), "--kubeconfig", str(cluster.admin_kubeconfig)]
    described = subprocess.run(
        [*kubectl, "describe", "node", joined.name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    events_part = described.split("Events:", 1)[1]
    for reason in wanted:
        assert reason in events_part


def test_client_and_serving_certificates_are_written_and_private(
    cluster: Cluster, joined: WasmletNode
) -> None:
    config = joined.data_dir / "config"
    for secret in ("kubeconfig", "wasmlet.key"):
        assert (config / secret).stat().st_mode & 0o777 == 0o600
    cert = pki.load_cert(config / "wasmlet.crt")
    cert.verify_directly_issued_by(pki.load_cert(cluster.pki / "ca.crt"))
    spec = pki.describe(cert)
    assert spec.common_name == f"system:node:{joined.name}"
    assert "127.0.0.2" in spec.ip_addresses
    assert joined.name in spec.dns_names


def _kubelet(cluster: Cluster, cert: str | None = None, token: str | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(cluster.pki / f"{cert}.crt"), str(cluster.pki / f"{cert}.key"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(verify=ctx, headers=headers, timeout=10)


def test_kubelet_api_authenticates_and_authorizes(
    cluster: Cluster, admin: Client, joined: WasmletNode
) -> None:
    base = f"https://127.0.0.2:{joined.port}"
    with _kubelet(cluster) as anonymous:
        assert anonymous.get(f"{base}/healthz").status_code == 401
    # The apiserver's kubelet client identity is bound to system:kubelet-api-admin.
    with _kubelet(cluster, cert="apiserver-kubelet-client") as apiserver:
        ok = apiserver.get(f"{base}/healthz")
        assert (ok.status_code, ok.text.strip()) == (200, "ok")
        assert apiserver.get(f"{base}/pods").json()["kind"] == "PodList"
        exec_ = apiserver.post(f"{base}/exec/default/p/c")
        assert exec_.status_code == 501
        assert "not supported by wasmlet" in exec_.text
    # A bootstrap token authenticates (TokenReview) but may not use the kubelet API.
    token = tokens.create(admin, description="kubelet API 403 test")
    try:
        with _kubelet(cluster, token=token.token) as bootstrapper:
            denied = bootstrapper.get(f"{base}/healthz")
        assert denied.status_code == 403
        assert f"system:bootstrap:{token.token_id}" in denied.text
    finally:
        tokens.delete(admin, token.token_id)
    with _kubelet(cluster, token="abcdef.0123456789abcdef") as forged:
        assert forged.get(f"{base}/healthz").status_code == 401


def test_kubelet_serving_certificate_is_verified_by_the_apiserver_path(
    cluster: Cluster, joined: WasmletNode
) -> None:
    # kubectl logs goes apiserver → kubelet with --kubelet-certificate-authority: the node's
    # certificate must verify against the cluster CA for its IP.
    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    with httpx.Client(verify=ctx) as client:
        assert client.get(f"https://127.0.0.2:{joined.port}/healthz").status_code == 401


def test_restarted_node_reuses_its_certificates(cluster: Cluster, tmp_path: Path) -> None:
    admin = cluster.admin()
    name = unique("restart-node")
    with running_node(admin, tmp_path, name, "127.0.0.3", 10250) as node:
        wait_for("the approval message", lambda: "certificate approve" in node.log(), timeout=60)
        approve_csr(admin, f"{name}-tls")
        wait_for("the kubelet API to listen", lambda: "kubelet API on https://" in node.log(), timeout=30)
        assert node.stop() == 0
        crt = (node.data_dir / "config" / "wasmlet.crt").read_bytes()
        output = tmp_path / "again.out"
        with output.open("wb") as out:
            again = subprocess.Popen(
                [
                    WASMLET,
                    "--node-name",
                    name,
                    "--hostname",
                    name,
                    "--node-ip",
                    "127.0.0.3",
                    "--data-dir",
                    str(node.data_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                "the restarted node's kubelet API",
                lambda: "kubelet API on https://" in output.read_text(),
                60,
            )
            assert "BOOTSTRAP:" not in output.read_text()
            assert (node.data_dir / "config" / "wasmlet.crt").read_bytes() == crt
        finally:
            again.terminate()
            again.wait(timeout=15)
    delete_quietly(admin, f"{CSRS}/{name}-tls")
    admin.close()


def test_unreadable_bootstrap_file_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [WASMLET, "--node-name", "no-bootstrap", "--node-ip", "127.0.0.9", "--data-dir", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len([line for line in err if line.startswith("wasmlet: error:")]) == 1
    assert "Traceback" not in proc.stderr
    assert "bootstrap" in proc.stderr


def test_bad_flag_is_a_one_line_error() -> None:
    proc = subprocess.run(
        [WASMLET, "--max-pods", "lots"], capture_output=True, text=True, check=False, timeout=30
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--max-pods" in proc.stderr


def test_expired_bootstrap_token_is_refused(cluster: Cluster, admin: Client, tmp_path: Path) -> None:
    path = write_bootstrap(admin, tmp_path)
    token = kubeconfig.load(path).token or ""
    tokens.delete(admin, token.split(".", maxsplit=1)[0])
    proc = subprocess.run(
        [WASMLET, "--node-name", "expired-token", "--node-ip", "127.0.0.9", "--data-dir", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "401" in proc.stderr or "Unauthorized" in proc.stderr
    assert "Traceback" not in proc.stderr
