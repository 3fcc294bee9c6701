"""TLS bootstrap against the real control plane: tokens, client and serving CSRs."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import (
    Cluster,
    create_bootstrap_token,
    delete_quietly,
    get_csr,
    issued_certificate,
    post_csr,
    unique,
    wait_for,
)

from wasmlet import pki
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"

pytestmark = pytest.mark.integration


@pytest.fixture
def bootstrap_client(cluster: Cluster, admin: Client) -> Iterator[tuple[Client, str]]:
    token = create_bootstrap_token(admin)
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    bootstrap = kubeconfig.Credentials(creds.server, creds.ca_pem, None, None, token)
    with Client(bootstrap) as client:
        yield client, token
    delete_quietly(
        admin, f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{token.split('.', maxsplit=1)[0]}"
    )


def test_bootstrap_token_authenticates_as_bootstrap_user(bootstrap_client: tuple[Client, str]) -> None:
    client, token = bootstrap_client
    review = client.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "SelfSubjectReview",
        },
    )
    user = review["status"]["userInfo"]
    assert user["username"] == f"system:bootstrap:{token.split('.', maxsplit=1)[0]}"
    assert "system:bootstrappers" in user["groups"]
    assert "system:bootstrappers:kubeadm:default-node-token" in user["groups"]


def test_wrong_bootstrap_token_is_rejected(cluster: Cluster) -> None:
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    forged = kubeconfig.Credentials(creds.server, creds.ca_pem, None, None, "abcdef.0123456789abcdef")
    with Client(forged) as client, pytest.raises(ApiError) as err:
        client.get("/api/v1/namespaces/default/pods")
    assert err.value.status == 401


def test_client_csr_posted_with_bootstrap_token_is_auto_approved_and_signed(
    cluster: Cluster, admin: Client, bootstrap_client: tuple[Client, str]
) -> None:
    client = bootstrap_client[0]
    node = unique("bootstrap-node")
    key = post_csr(client, node, CLIENT_SIGNER, ["digital signature", "client auth"], node)
    try:
        cert = wait_for(f"CSR {node} to be signed", lambda: issued_certificate(admin, node))
        conditions = get_csr(admin, node)["status"]["conditions"]
        assert [(c["type"], c["reason"]) for c in conditions] == [("Approved", "AutoApproved")]
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{node}"
        assert [o.value for o in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
            "system:nodes"
        ]
        cert.verify_directly_issued_by(pki.load_cert(cluster.pki / "ca.crt"))
        assert cert.public_key() == key.public_key()

        # The signed certificate really is a node identity: the Node authorizer lets it read Nodes.
        creds = kubeconfig.load(cluster.admin_kubeconfig)
        node_creds = kubeconfig.Credentials(
            creds.server, creds.ca_pem, pki.cert_pem(cert), pki.key_pem(key), None
        )
        with Client(node_creds) as as_node:
            review = as_node.post(
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "SelfSubjectReview",
                },
            )
        assert review["status"]["userInfo"]["username"] == f"system:node:{node}"
    finally:
        delete_quietly(admin, f"{CSRS}/{node}")


def test_kubelet_serving_csr_stays_pending_until_approved_then_is_signed(
    admin: Client, bootstrap_client: tuple[Client, str]
) -> None:
    client = bootstrap_client[0]
    node = unique("serving-node")
    serving = f"{node}-tls"
    marker = f"{node}-marker"
    post_csr(
        client,
        serving,
        SERVING_SIGNER,
        ["digital signature", "server auth"],
        node,
        dns_names=(node,),
        ip_addresses=("127.0.0.1",),
    )
    try:
        # A client CSR posted after it is auto-approved: the approver has seen the serving
        # CSR by then, and left it alone.
        post_csr(client, marker, CLIENT_SIGNER, ["digital signature", "client auth"], marker)
        wait_for("the marker client CSR to be signed", lambda: issued_certificate(admin, marker))
        pending = get_csr(admin, serving)
        assert "certificate" not in pending.get("status", {})
        assert not pending.get("status", {}).get("conditions")

        pending["status"] = {
            "conditions": [
                {
                    "type": "Approved",
                    "status": "True",
                    "reason": "IntegrationTest",
                    "message": "approved by the wasmlet integration test",
                }
            ]
        }
        admin.put(f"{CSRS}/{serving}/approval", pending)
        cert = wait_for(f"CSR {serving} to be signed", lambda: issued_certificate(admin, serving))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [node]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    finally:
        delete_quietly(admin, f"{CSRS}/{serving}")
        delete_quietly(admin, f"{CSRS}/{marker}")


def test_cluster_info_is_readable_anonymously_and_holds_the_ca(cluster: Cluster) -> None:
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    anonymous = kubeconfig.Credentials(creds.server, creds.ca_pem, None, None, None)
    with Client(anonymous) as client:
        cm = client.get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
        with pytest.raises(ApiError) as err:
            client.get("/api/v1/namespaces/kube-public/configmaps")
    assert err.value.status == 403
    embedded = cm["data"]["kubeconfig"]
    assert creds.server in embedded
    assert base64.b64encode(creds.ca_pem or b"").decode() in embedded
