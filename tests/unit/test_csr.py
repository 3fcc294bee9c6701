"""wasmlet.ops.csr: which kubelet serving CSRs may be approved, each refusal naming its rule."""

from __future__ import annotations

import base64
import copy
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from csr_requests import SigningKey, request_pem, signing_key

from wasmlet.ops import csr

NODE = "n1"
USER = f"system:node:{NODE}"
NODE_IP = "127.0.0.2"
OTHER = "n2"
OTHER_IP = "127.0.0.3"
EC_USAGES = ("digital signature", "server auth")
RSA_USAGES = ("digital signature", "key encipherment", "server auth")
POLICY = csr.Policy.from_options(["127.0.0.0/8"], "nodes.test", 86400)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {kind: signing_key(kind) for kind in ("p256", "p384", "p521", "ed25519", "rsa1024", "rsa2048")}


def _node(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"addresses": [{"type": kind, "address": value} for kind, value in addresses]},
    }


def _nodes() -> list[dict[str, Any]]:
    return [
        _node(NODE, ("InternalIP", NODE_IP), ("Hostname", NODE), ("ExternalIP", "10.1.2.3")),
        _node(OTHER, ("InternalIP", OTHER_IP), ("Hostname", "n2-host")),
    ]


def _csr_object(
    request: bytes,
    *,
    name: str = f"{NODE}-tls",
    username: str = USER,
    groups: Sequence[str] = ("system:nodes", "system:authenticated"),
    signer: str = csr.SERVING_SIGNER,
    usages: Sequence[str] = EC_USAGES,
    expiration: int | None = 3600,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "request": base64.b64encode(request).decode(),
        "signerName": signer,
        "usages": list(usages),
        "username": username,
        "groups": list(groups),
    }
    if expiration is not None:
        spec["expirationSeconds"] = expiration
    return {"metadata": {"name": name}, "spec": spec, "status": {}}


@dataclass(frozen=True)
class Case:
    """One CSR: its request's parts and spec, and exactly the rules that must refuse it."""

    rules: tuple[str, ...]
    needle: str = ""  # the offending value, which the message must name
    key: str = "p256"
    common_names: tuple[str, ...] = (USER,)
    organizations: tuple[str, ...] = ("system:nodes",)
    dns: tuple[str, ...] = (NODE,)
    ips: tuple[str, ...] = (NODE_IP,)
    other_sans: tuple[x509.GeneralName, ...] = ()
    extra_subject: tuple[x509.NameAttribute[str], ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None


CASES = {
    "good-ecdsa": Case(()),
    "good-p384-with-domain-name": Case((), key="p384", dns=(NODE, f"{NODE}.nodes.test")),
    "good-rsa-with-key-encipherment": Case((), key="rsa2048", spec={"usages": RSA_USAGES}),
    "good-rsa-without-key-encipherment": Case((), key="rsa2048"),
    "good-ip-only": Case((), dns=()),
    "good-dns-only-and-no-expiration": Case((), ips=(), spec={"expiration": None}),
    "good-owner-named": Case((), owner=NODE),
    "requester-not-a-node": Case(
        ("requester", "subject-cn", "dns-name", "node"),
        "'alice'",
        common_names=("alice",),
        dns=("alice",),
        ips=(),
        spec={"username": "alice"},
    ),
    "requester-bootstrap-token": Case(
        ("requester", "groups", "subject-cn", "dns-name", "node", "other-node"),
        "system:bootstrap:abcdef",
        spec={"username": "system:bootstrap:abcdef", "groups": ("system:bootstrappers",)},
    ),
    "groups-without-system-nodes": Case(
        ("groups",), "['system:authenticated']", spec={"groups": ("system:authenticated",)}
    ),
    "owner-is-another-node": Case(("owner",), f"not by node {OTHER!r}", owner=OTHER),
    "owner-unnamed": Case(("owner",), "<node>-tls", owner=""),
    "node-missing": Case(
        ("subject-cn", "dns-name", "node", "other-node"),
        "node ghost does not exist",
        ips=(),
        spec={"username": "system:node:ghost"},
    ),
    "cn-of-another-node": Case(("subject-cn",), "system:node:n2", common_names=(f"system:node:{OTHER}",)),
    "cn-funny": Case(("subject-cn",), "funny-common-name", common_names=("funny-common-name",)),
    "cn-twice": Case(("subject-cn",), USER, common_names=(USER, USER)),
    "o-masters": Case(("subject-o",), "system:masters", organizations=("system:masters",)),
    "o-extra-masters": Case(
        ("subject-o",), "system:masters", organizations=("system:nodes", "system:masters")
    ),
    "o-missing": Case(("subject-o",), "O []", organizations=()),
    "subject-ou": Case(
        ("subject-extra",),
        "OU=system:masters",
        extra_subject=(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "system:masters"),),
    ),
    "key-rsa-1024": Case(("key",), "1024 bits", key="rsa1024", spec={"usages": RSA_USAGES}),
    "key-ed25519": Case(("key",), "Ed25519", key="ed25519"),
    "key-p521": Case(("key",), "secp521r1", key="p521"),
    "usages-client-auth": Case(("usages",), "client auth", spec={"usages": (*EC_USAGES, "client auth")}),
    "usages-no-server-auth": Case(
        ("usages",), "client auth", spec={"usages": ("digital signature", "client auth")}
    ),
    "usages-ecdsa-key-encipherment": Case(("usages",), "key encipherment", spec={"usages": RSA_USAGES}),
    "usages-missing": Case(("usages",), "[]", spec={"usages": ()}),
    "san-missing": Case(("san-missing",), "no DNS or IP SAN", dns=(), ips=()),
    "san-email": Case(("san-type",), "admin@example.com", other_sans=(x509.RFC822Name("admin@example.com"),)),
    "san-uri": Case(
        ("san-type",),
        "spiffe://cluster.local/x",
        other_sans=(x509.UniformResourceIdentifier("spiffe://cluster.local/x"),),
    ),
    "wildcard-svc": Case(("wildcard",), "*.svc.cluster.local", dns=(NODE, "*.svc.cluster.local")),
    "wildcard-node-domain": Case(("wildcard",), "*.nodes.test", dns=("*.nodes.test",)),
    "dns-kubernetes-default": Case(("dns-name",), "kubernetes.default", dns=(NODE, "kubernetes.default")),
    "dns-prefixed-by-node-name": Case(("dns-name",), "n1evil", dns=("n1evil",)),
    "dns-node-under-foreign-domain": Case(("dns-name",), "n1.evil.io", dns=("n1.evil.io",)),
    "dns-trailing-dot": Case(("dns-name",), "'n1.'", dns=("n1.",)),
    "dns-localhost": Case(("dns-name",), "localhost", dns=("localhost",)),
    "dns-other-node-name": Case(("dns-name", "other-node"), "['n2']", dns=(OTHER,)),
    "dns-other-node-hostname": Case(("dns-name", "other-node"), "n2-host", dns=("n2-host",)),
    "ip-outside-prefixes-but-reported": Case(("ip-prefix",), "10.1.2.3", ips=(NODE_IP, "10.1.2.3")),
    "ip-public": Case(("ip-prefix", "ip-node"), "9.9.9.9", ips=("9.9.9.9",)),
    "ip-v6": Case(("ip-prefix", "ip-node"), "2001:c0fe:beef::14", ips=("2001:c0fe:beef::14",)),
    "ip-not-reported": Case(("ip-node",), "127.0.0.99", ips=("127.0.0.99",)),
    "ip-of-other-node": Case(("ip-node", "other-node"), OTHER_IP, ips=(OTHER_IP,)),
    "ip-v4-mapped-other-node": Case(
        ("ip-node", "other-node"), f"(= {OTHER_IP})", ips=(f"::ffff:{OTHER_IP}",)
    ),
    "expiration-too-long": Case(("expiration",), "86401", spec={"expiration": 86401}),
}


def _build(case: Case, keys: dict[str, SigningKey]) -> dict[str, Any]:
    request = request_pem(
        keys[case.key],
        case.common_names,
        case.organizations,
        case.dns,
        case.ips,
        other_sans=case.other_sans,
        extra_subject=case.extra_subject,
    )
    return _csr_object(request, **case.spec)


@pytest.mark.parametrize("label", list(CASES))
def test_each_csr_is_refused_by_exactly_its_rules_naming_the_offending_value(
    label: str, keys: dict[str, SigningKey]
) -> None:
    case = CASES[label]
    verdict = csr.validate(_build(case, keys), _nodes(), POLICY, case.owner)
    assert verdict.rules == case.rules, verdict.reasons
    assert verdict.ok == (not case.rules)
    for reason in verdict.reasons:
        assert reason.startswith(f"{reason.split(':', 1)[0]}: ") and len(reason) > 20, reason
    assert case.needle in "; ".join(verdict.reasons)


def test_the_table_covers_every_rule_that_needs_a_parsed_request() -> None:
    covered = {rule for case in CASES.values() for rule in case.rules}
    assert covered == {
        "requester", "groups", "owner", "node", "subject-cn", "subject-o", "subject-extra", "key", "usages",
        "san-missing", "san-type", "wildcard", "dns-name", "ip-prefix", "ip-node", "other-node", "expiration",
    }  # fmt: skip


def test_good_csr_names_its_node(keys: dict[str, SigningKey]) -> None:
    assert csr.validate(_build(CASES["good-ecdsa"], keys), _nodes(), POLICY) == csr.Verdict(True, (), NODE)


# --- refusals before the request is judged --------------------------------------------------------


def _good(keys: dict[str, SigningKey]) -> dict[str, Any]:
    return _build(CASES["good-ecdsa"], keys)


Mutation = Callable[[dict[str, Any]], None]


@pytest.mark.parametrize(
    ("mutate", "rule", "needle"),
    [
        pytest.param(
            lambda c: c["spec"].update(signerName="example.com/x"), "signer", "example.com/x", id="signer"
        ),
        pytest.param(lambda c: c["spec"].pop("signerName"), "signer", "None", id="no-signer"),
        pytest.param(
            lambda c: c["status"].update(conditions=[{"type": "Denied", "status": "True"}]),
            "pending",
            "already denied",
            id="denied",
        ),
        pytest.param(
            lambda c: c["status"].update(certificate="AAAA"), "pending", "already signed", id="signed"
        ),
        pytest.param(
            lambda c: c["spec"].update(request="%%% not base64"), "request", "does not parse", id="b64"
        ),
        pytest.param(lambda c: c["spec"].update(request=""), "request", "does not parse", id="empty"),
        pytest.param(
            lambda c: c["spec"].update(
                request=base64.b64encode(b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n").decode()
            ),
            "request",
            "does not parse",
            id="garbage-pem",
        ),
    ],
)
def test_csr_that_is_not_a_pending_parseable_serving_request_is_refused_alone(
    keys: dict[str, SigningKey], mutate: Mutation, rule: str, needle: str
) -> None:
    item = _good(keys)
    mutate(item)
    verdict = csr.validate(item, _nodes(), POLICY)
    assert verdict.rules == (rule,)
    assert needle in verdict.reasons[0]


def test_request_whose_signature_does_not_match_its_key_is_refused(keys: dict[str, SigningKey]) -> None:
    request = x509.load_pem_x509_csr(request_pem(keys["p256"], (USER,), dns_names=(NODE,)))
    der = request.public_bytes(serialization.Encoding.DER)
    tampered = bytearray(der)
    tampered[-5] ^= 0x01  # inside the signature
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(tampered))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    verdict = csr.validate(_csr_object(pem), _nodes(), POLICY)
    assert verdict.rules == ("request",)
    assert "not signed by its own key" in verdict.reasons[0]


def test_every_defect_is_reported_at_once(keys: dict[str, SigningKey]) -> None:
    request = request_pem(
        keys["rsa1024"], ("system:node:n2",), ("system:masters",), ("*.evil.io",), ("9.9.9.9",)
    )
    item = _csr_object(request, usages=(*RSA_USAGES, "client auth"), expiration=86400 * 2, groups=())
    rules = {"groups", "subject-cn", "subject-o", "key", "usages", "wildcard", "ip-prefix", "ip-node"}
    assert set(csr.validate(item, _nodes(), POLICY).rules) == rules | {"expiration"}


def test_validate_does_not_mutate_its_inputs(keys: dict[str, SigningKey]) -> None:
    item, nodes = _build(CASES["ip-of-other-node"], keys), _nodes()
    before = copy.deepcopy((item, nodes))
    csr.validate(item, nodes, POLICY, OTHER)
    assert (item, nodes) == before


# --- policy, names ---------------------------------------------------------------------------------


def test_default_policy_allows_private_and_loopback_ranges_only() -> None:
    policy = csr.Policy.from_options()
    assert [str(n) for n in policy.ip_prefixes] == list(csr.DEFAULT_IP_PREFIXES)
    inside = {"10.2.3.4", "172.31.0.1", "192.168.8.9", "127.0.0.5", "fd00::1", "::1"}
    outside = {"9.9.9.9", "172.32.0.1", "169.254.1.1", "100.64.0.1", "2001:db8::1", "fe80::1"}
    for ip in inside | outside:
        assert any(ipaddress.ip_address(ip) in n for n in policy.ip_prefixes) == (ip in inside), ip
    assert policy.dns_domain == ""
    assert policy.max_expiration_seconds == 31536000


def test_role_default_and_documented_default_prefixes_are_the_libraries() -> None:
    role = Path(__file__).resolve().parents[2] / "roles" / "csr_approve"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    documented = specs["argument_specs"]["main"]["options"]["csr_approve_ip_prefixes"]["default"]
    assert defaults["csr_approve_ip_prefixes"] == documented == list(csr.DEFAULT_IP_PREFIXES)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        pytest.param({"ip_prefixes": ["10.0.0.1/8"]}, "ip_prefixes: '10.0.0.1/8'", id="host-bits"),
        pytest.param({"ip_prefixes": ["nonsense"]}, "ip_prefixes: 'nonsense'", id="not-a-prefix"),
        pytest.param({"dns_domain": "*.example.com"}, "dns_domain: '*.example.com'", id="wildcard-domain"),
        pytest.param({"dns_domain": ".example.com"}, "dns_domain: '.example.com'", id="leading-dot"),
        pytest.param({"max_expiration_seconds": 60}, "max_expiration_seconds: 60", id="too-short"),
    ],
)
def test_bad_policy_options_are_refused_naming_the_option(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        csr.Policy.from_options(**options)
    assert needle in str(err.value)


def test_empty_prefix_list_allows_no_ip_san(keys: dict[str, SigningKey]) -> None:
    policy = csr.Policy.from_options([], None, 86400)
    assert csr.validate(_good(keys), _nodes(), policy).rules == ("ip-prefix",)


def test_without_a_domain_only_the_bare_node_name_is_allowed(keys: dict[str, SigningKey]) -> None:
    item = _build(CASES["good-p384-with-domain-name"], keys)
    verdict = csr.validate(item, _nodes(), csr.Policy.from_options(["127.0.0.0/8"]))
    assert verdict.rules == ("dns-name",)
    assert "n1.nodes.test" in verdict.reasons[0]


def test_node_names_collects_dns_and_ip_addresses_by_type() -> None:
    node = _node(
        NODE,
        ("InternalIP", "10.0.0.5"),
        ("ExternalIP", "::ffff:203.0.113.7"),
        ("Hostname", "host-n1"),
        ("InternalDNS", "n1.internal"),
        ("ExternalDNS", "n1.example.com"),
        ("InternalIP", "not-an-ip"),
        ("SomethingElse", "ignored"),
    )
    dns, ips = csr.node_names(node)
    assert dns == {NODE, "host-n1", "n1.internal", "n1.example.com"}
    assert ips == {ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("203.0.113.7")}
    assert csr.node_names({"metadata": {"name": NODE}, "status": {"addresses": None}}) == ({NODE}, set())


def test_requested_node_and_name_owner() -> None:
    assert csr.requested_node({"spec": {"username": USER}}) == NODE
    assert csr.requested_node({"spec": {"username": "system:bootstrap:abcdef"}}) == ""
    assert csr.requested_node({}) == ""
    assert csr.name_owner("wasm-1-tls") == "wasm-1"
    assert csr.name_owner("csr-8x2kq") == ""


# --- approval --------------------------------------------------------------------------------------


def test_approval_appends_an_approved_condition_without_mutating_the_input(
    keys: dict[str, SigningKey],
) -> None:
    item = _good(keys)
    item["status"] = {"conditions": [{"type": "Other", "status": "True"}], "certificate": ""}
    before = copy.deepcopy(item)
    body = csr.approval(item, "WasmletValidated", "looks fine")
    assert item == before
    assert body["spec"] == item["spec"]
    assert body["status"]["certificate"] == ""
    assert body["status"]["conditions"] == [
        {"type": "Other", "status": "True"},
        {"type": "Approved", "status": "True", "reason": "WasmletValidated", "message": "looks fine"},
    ]


def test_approval_can_deny_and_a_decided_csr_no_longer_validates(keys: dict[str, SigningKey]) -> None:
    item = _good(keys)
    denied = csr.approval(item, "WasmletInvalid", "dns-name: wrong", approve=False)
    assert denied["status"]["conditions"] == [
        {"type": "Denied", "status": "True", "reason": "WasmletInvalid", "message": "dns-name: wrong"}
    ]
    assert csr.validate(item, _nodes(), POLICY).ok
    assert csr.validate(csr.approval(item, "R", "m"), _nodes(), POLICY).reasons == (
        f"pending: CSR {NODE}-tls is already approved",
    )
