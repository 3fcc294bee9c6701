"""wasmlet.csr: which kubelet serving CSRs may be approved, and the approval body."""

from __future__ import annotations

import base64
import copy
import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from wasmlet import csr, pki

NODE = "n1"
USER = f"system:node:{NODE}"
NODE_IP = "127.0.0.2"
ECDSA_USAGES = ("digital signature", "server auth")
RSA_USAGES = ["digital signature", "key encipherment", "server auth"]
MAX_EXPIRATION = 86400


@pytest.fixture(scope="module")
def ec_key() -> pki.PrivateKey:
    return pki.generate_key("ecdsa")


@pytest.fixture(scope="module")
def rsa_key() -> pki.PrivateKey:
    return pki.generate_key("rsa")


def _request(
    key: pki.PrivateKey,
    common_name: str = USER,
    organizations: Sequence[str] = ("system:nodes",),
    dns_names: Sequence[str] = (NODE,),
    ip_addresses: Sequence[str] = (NODE_IP,),
) -> bytes:
    return pki.build_csr(key, common_name, organizations, dns_names, ip_addresses)


def _csr_object(
    request: bytes,
    *,
    name: str = f"{NODE}-tls",
    username: str = USER,
    signer: str = csr.SERVING_SIGNER,
    usages: Sequence[str] = ECDSA_USAGES,
    expiration: int | None = 3600,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "request": base64.b64encode(request).decode(),
        "signerName": signer,
        "usages": list(usages),
        "username": username,
        "groups": ["system:nodes", "system:authenticated"],
    }
    if expiration is not None:
        spec["expirationSeconds"] = expiration
    item: dict[str, Any] = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "uid": "0b5e6c1e-0000-4000-8000-000000000001"},
        "spec": spec,
        "status": {},
    }
    if conditions is not None:
        item["status"] = {"conditions": conditions}
    return item


def _node(name: str = NODE, addresses: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    if addresses is None:
        addresses = (("InternalIP", NODE_IP), ("Hostname", name))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": kind, "address": value} for kind, value in addresses]},
    }


def _validate(item: dict[str, Any], node: dict[str, Any] | None = None) -> csr.Verdict:
    return csr.validate(item, _node() if node is None else node, MAX_EXPIRATION)


def _assert_refused(verdict: csr.Verdict, *needles: str) -> None:
    assert not verdict.ok
    assert verdict.reasons
    text = "; ".join(verdict.reasons)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {verdict.reasons}"


# --- node_names / requested_node ------------------------------------------------------------------


def test_node_names_collects_dns_and_ip_addresses_by_type() -> None:
    node = _node(
        addresses=(
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "203.0.113.7"),
            ("Hostname", "host-n1"),
            ("InternalDNS", "n1.internal"),
            ("ExternalDNS", "n1.example.com"),
            ("SomethingElse", "ignored"),
        )
    )
    dns, ips = csr.node_names(node)
    assert dns == {NODE, "host-n1", "n1.internal", "n1.example.com"}
    assert ips == {"10.0.0.5", "203.0.113.7"}


def test_node_names_of_a_node_without_status_is_its_name_only() -> None:
    assert csr.node_names({"metadata": {"name": NODE}}) == ({NODE}, set())
    assert csr.node_names({"metadata": {"name": NODE}, "status": {"addresses": None}}) == ({NODE}, set())


def test_requested_node_is_the_node_part_of_a_node_username(ec_key: pki.PrivateKey) -> None:
    assert csr.requested_node(_csr_object(_request(ec_key))) == NODE
    assert csr.requested_node(_csr_object(_request(ec_key), username="system:bootstrap:abcdef")) == ""
    assert csr.requested_node({}) == ""


# --- validate: the good cases ---------------------------------------------------------------------


def test_correct_ecdsa_serving_csr_passes(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key)))
    assert verdict == csr.Verdict(True, (), NODE)


def test_correct_rsa_serving_csr_passes_with_key_encipherment(rsa_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(rsa_key), usages=RSA_USAGES))
    assert verdict.ok, verdict.reasons
    assert verdict.node == NODE


def test_rsa_serving_csr_without_key_encipherment_passes_too(rsa_key: pki.PrivateKey) -> None:
    assert _validate(_csr_object(_request(rsa_key), usages=ECDSA_USAGES)).ok


def test_dns_only_and_ip_only_csrs_pass(ec_key: pki.PrivateKey) -> None:
    assert _validate(_csr_object(_request(ec_key, ip_addresses=()))).ok
    assert _validate(_csr_object(_request(ec_key, dns_names=()))).ok


def test_hostname_address_and_external_ip_are_allowed_sans(ec_key: pki.PrivateKey) -> None:
    node = _node(addresses=(("Hostname", "n1.lan"), ("ExternalIP", "198.51.100.4")))
    request = _request(ec_key, dns_names=(NODE, "n1.lan"), ip_addresses=("198.51.100.4",))
    assert _validate(_csr_object(request), node).ok


def test_csr_without_expiration_passes_and_the_maximum_itself_is_allowed(ec_key: pki.PrivateKey) -> None:
    assert _validate(_csr_object(_request(ec_key), expiration=None)).ok
    assert _validate(_csr_object(_request(ec_key), expiration=MAX_EXPIRATION)).ok


# --- validate: one defect each --------------------------------------------------------------------


def test_wrong_signer_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key), signer="kubernetes.io/kube-apiserver-client-kubelet")
    _assert_refused(_validate(item), "signer", "kubernetes.io/kube-apiserver-client-kubelet")


def test_missing_signer_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    del item["spec"]["signerName"]
    _assert_refused(_validate(item), "signer")


@pytest.mark.parametrize(
    ("condition", "word"), [("Approved", "approved"), ("Denied", "denied"), ("Failed", "failed")]
)
def test_decided_csr_is_refused(ec_key: pki.PrivateKey, condition: str, word: str) -> None:
    item = _csr_object(
        _request(ec_key), conditions=[{"type": condition, "status": "True", "reason": "Test", "message": ""}]
    )
    _assert_refused(_validate(item), f"{NODE}-tls", f"already {word}")


def test_unparsable_request_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(b"-----BEGIN CERTIFICATE REQUEST-----\nnot a csr\n-----END CERTIFICATE REQUEST-----\n")
    _assert_refused(_validate(item), "does not parse")


def test_request_that_is_not_base64_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    item["spec"]["request"] = "%%% not base64 %%%"
    _assert_refused(_validate(item), "does not parse")


def test_empty_request_is_refused() -> None:
    item = _csr_object(b"")
    _assert_refused(_validate(item), "does not parse")


def test_requester_that_is_not_a_node_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key), username="system:bootstrap:abcdef")
    verdict = _validate(item)
    _assert_refused(verdict, "'system:bootstrap:abcdef'", "not by a node identity")
    assert verdict.node == ""


def test_cn_other_than_the_requesting_user_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key, common_name="system:node:n2"))
    verdict = _validate(item)
    _assert_refused(verdict, "CN", "system:node:n2", "does not match the requesting user")
    assert len(verdict.reasons) == 1


@pytest.mark.parametrize(
    "organizations",
    [
        pytest.param(("system:nodes", "system:masters"), id="extra-org"),
        pytest.param((), id="missing-org"),
        pytest.param(("system:masters",), id="other-org"),
    ],
)
def test_organizations_other_than_exactly_system_nodes_are_refused(
    ec_key: pki.PrivateKey, organizations: tuple[str, ...]
) -> None:
    verdict = _validate(_csr_object(_request(ec_key, organizations=organizations)))
    _assert_refused(verdict, f"O is {list(organizations)}", "not exactly ['system:nodes']")
    assert len(verdict.reasons) == 1


def test_client_auth_usage_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key), usages=[*ECDSA_USAGES, "client auth"])
    verdict = _validate(item)
    _assert_refused(verdict, "usages", "client auth")
    assert len(verdict.reasons) == 1


def test_client_auth_instead_of_server_auth_is_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key), usages=["digital signature", "client auth"])
    _assert_refused(_validate(item), "usages", "client auth")


def test_ecdsa_key_may_not_ask_for_key_encipherment(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key), usages=RSA_USAGES))
    _assert_refused(verdict, "usages", "key encipherment")
    assert len(verdict.reasons) == 1


def test_missing_usages_are_refused(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    del item["spec"]["usages"]
    _assert_refused(_validate(item), "usages [] are not")


def test_csr_without_sans_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key, dns_names=(), ip_addresses=())))
    _assert_refused(verdict, "no DNS or IP SAN")
    assert len(verdict.reasons) == 1


def test_dns_san_that_is_not_a_node_name_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key, dns_names=(NODE, "kubernetes.default"))))
    _assert_refused(verdict, "DNS SANs ['kubernetes.default']", f"not names of node {NODE}")
    assert len(verdict.reasons) == 1


def test_dns_san_naming_another_node_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key, dns_names=("n2",))))
    _assert_refused(verdict, "DNS SANs ['n2']")


def test_ip_san_that_is_not_a_node_address_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key, ip_addresses=(NODE_IP, "10.1.2.3"))))
    _assert_refused(verdict, "IP SANs ['10.1.2.3']", f"not addresses of node {NODE}")
    assert len(verdict.reasons) == 1


def test_ip_sans_are_refused_when_the_node_reports_no_addresses(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key)), _node(addresses=()))
    _assert_refused(verdict, f"IP SANs ['{NODE_IP}']")


def test_hostname_address_does_not_allow_an_ip_san_and_vice_versa(ec_key: pki.PrivateKey) -> None:
    # An address of type Hostname that looks like an IP does not make the IP an allowed IP SAN.
    node = _node(addresses=(("Hostname", NODE_IP),))
    _assert_refused(_validate(_csr_object(_request(ec_key)), node), "IP SANs")


def _email_san_request(key: pki.PrivateKey) -> bytes:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, USER),
        ]
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName(NODE),
        x509.IPAddress(ipaddress.ip_address(NODE_IP)),
        x509.RFC822Name("admin@example.com"),
    ]
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def test_email_san_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_email_san_request(ec_key)))
    _assert_refused(verdict, "email or URI SANs")
    assert len(verdict.reasons) == 1


def test_uri_san_is_refused(ec_key: pki.PrivateKey) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, USER),
        ]
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName(NODE),
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/x"),
    ]
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ec_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    _assert_refused(_validate(_csr_object(request)), "email or URI SANs")


def test_expiration_above_the_maximum_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = _validate(_csr_object(_request(ec_key), expiration=MAX_EXPIRATION + 1))
    _assert_refused(verdict, f"expirationSeconds {MAX_EXPIRATION + 1}", f"exceeds {MAX_EXPIRATION}")
    assert len(verdict.reasons) == 1


def test_missing_node_is_refused(ec_key: pki.PrivateKey) -> None:
    verdict = csr.validate(_csr_object(_request(ec_key)), None, MAX_EXPIRATION)
    _assert_refused(verdict, f"node {NODE} does not exist")
    assert len(verdict.reasons) == 1


def test_missing_node_of_a_non_node_requester_is_refused_naming_no_node(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key), username="alice")
    _assert_refused(csr.validate(item, None, MAX_EXPIRATION), "node ? does not exist", "'alice'")


def test_every_defect_is_reported_at_once(ec_key: pki.PrivateKey) -> None:
    request = _request(
        ec_key,
        common_name="system:node:n2",
        organizations=("system:masters",),
        dns_names=("evil.example.com",),
        ip_addresses=("10.9.9.9",),
    )
    item = _csr_object(request, usages=[*RSA_USAGES, "client auth"], expiration=MAX_EXPIRATION * 2)
    verdict = _validate(item)
    _assert_refused(verdict, "CN", "O is", "usages", "DNS SANs", "IP SANs", "expirationSeconds")
    assert len(verdict.reasons) == 6


def test_validate_does_not_mutate_its_inputs(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key, ip_addresses=("10.1.2.3",)))
    node = _node()
    item_before, node_before = copy.deepcopy(item), copy.deepcopy(node)
    csr.validate(item, node, MAX_EXPIRATION)
    assert item == item_before
    assert node == node_before


# --- approval -------------------------------------------------------------------------------------


def test_approval_appends_an_approved_condition_without_mutating_the_input(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    item["status"] = {"conditions": [{"type": "Other", "status": "True"}], "certificate": ""}
    before = copy.deepcopy(item)
    body = csr.approval(item, "WasmletValidated", "looks fine")
    assert item == before
    assert body["spec"] == item["spec"]
    assert body["metadata"] == item["metadata"]
    assert body["status"]["certificate"] == ""
    assert body["status"]["conditions"] == [
        {"type": "Other", "status": "True"},
        {"type": "Approved", "status": "True", "reason": "WasmletValidated", "message": "looks fine"},
    ]


def test_approval_can_deny(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    before = copy.deepcopy(item)
    body = csr.approval(item, "WasmletInvalid", "IP SANs wrong", approve=False)
    assert item == before
    assert body["status"]["conditions"] == [
        {"type": "Denied", "status": "True", "reason": "WasmletInvalid", "message": "IP SANs wrong"}
    ]


def test_approval_of_a_csr_without_status(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    del item["status"]
    body = csr.approval(item, "R", "m")
    assert "status" not in item
    assert [c["type"] for c in body["status"]["conditions"]] == ["Approved"]


def test_approved_csr_no_longer_validates(ec_key: pki.PrivateKey) -> None:
    item = _csr_object(_request(ec_key))
    assert _validate(item).ok
    _assert_refused(_validate(csr.approval(item, "R", "m")), "already approved")
    _assert_refused(_validate(csr.approval(item, "R", "m", approve=False)), "already denied")
