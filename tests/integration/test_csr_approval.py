"""The csr_approve module against the real apiserver and signer: a node may not impersonate another.

A rogue node (a real client certificate of the cluster CA, ``system:node:<rogue>`` in
``system:nodes``) registers itself and writes a victim node's hostname and IP into its own
status, then posts serving CSRs written as an attacker would. Every one is refused by the rule
meant for it, and none is approved; the honest ones are approved and signed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from csr_requests import request_pem, signing_key
from helpers import (
    Cluster,
    Step,
    delete_quietly,
    get_csr,
    issued_certificate,
    run_modules,
    task_failed,
    task_ok,
    unique,
    wait_for,
)

from wasmlet import pki
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client

pytestmark = pytest.mark.integration

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SIGNER = "kubernetes.io/kubelet-serving"
EC_USAGES = ("digital signature", "server auth")
RSA_USAGES = ("digital signature", "key encipherment", "server auth")
DOMAIN = "nodes.test"
MAX_EXPIRATION = 86400
ROGUE_IP, VICTIM_IP, OUTSIDE_IP = "127.0.23.1", "127.0.23.2", "10.23.0.1"


@dataclass(frozen=True)
class World:
    """The nodes and identities of one run; names carry a random suffix."""

    rogue: str
    victim: str
    ghost: str  # a node identity whose Node does not exist
    alice: str  # a user that is not a node
    clients: dict[str, Client]  # "rogue", "ghost", "groupless" (rogue's name without system:nodes), "alice"


def _client_for(cluster: Cluster, common_name: str, organizations: tuple[str, ...]) -> Client:
    """A real client certificate signed by the cluster CA, as the apiserver's x509 authn reads it."""
    key = pki.generate_key("ecdsa")
    spec = pki.CertSpec(common_name, organizations, usages=("client",), valid_days=1, key_type="ecdsa")
    ca_cert, ca_key = pki.load_cert(cluster.pki / "ca.crt"), pki.load_key(cluster.pki / "ca.key")
    cert = pki.build_certificate(spec, key.public_key(), ca_key, ca_cert)
    creds = kubeconfig.load(cluster.admin_kubeconfig)
    return Client(
        kubeconfig.Credentials(creds.server, creds.ca_pem, pki.cert_pem(cert), pki.key_pem(key), None)
    )


def _addresses(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"status": {"addresses": [{"type": kind, "address": value} for kind, value in pairs]}}


@pytest.fixture(scope="module")
def world(cluster: Cluster) -> Iterator[World]:
    suffix = unique("csrt")
    rogue, victim, ghost, alice = (f"{suffix}-{role}" for role in ("rogue", "victim", "ghost", "alice"))
    binding = f"{suffix}-may-post-csrs"
    clients = {
        "rogue": _client_for(cluster, f"system:node:{rogue}", ("system:nodes",)),
        "ghost": _client_for(cluster, f"system:node:{ghost}", ("system:nodes",)),
        "groupless": _client_for(cluster, f"system:node:{rogue}", ("wasmlet:not-nodes",)),
        "alice": _client_for(cluster, alice, ()),
    }
    with cluster.admin() as admin:
        # Integration runs never overlap (one flock): a rogue left by a killed run holds our IPs.
        for stale in admin.get("/api/v1/nodes")["items"]:
            if stale["metadata"]["name"].startswith("csrt-"):
                delete_quietly(admin, f"/api/v1/nodes/{stale['metadata']['name']}")
        try:
            # Identities outside system:nodes may post CSRs as kubeadm's bootstrappers may.
            admin.post(
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:node-bootstrapper",
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}
                        for name in (alice, f"system:node:{rogue}")
                    ],
                },
            )
            admin.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": victim}})
            admin.patch(
                f"/api/v1/nodes/{victim}/status", _addresses(("InternalIP", VICTIM_IP), ("Hostname", victim))
            )
            # The rogue registers itself and claims the victim's hostname and IP in its own status.
            as_rogue = clients["rogue"]
            as_rogue.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": rogue}})
            as_rogue.patch(
                f"/api/v1/nodes/{rogue}/status",
                _addresses(
                    ("InternalIP", ROGUE_IP),
                    ("ExternalIP", VICTIM_IP),
                    ("ExternalIP", OUTSIDE_IP),
                    ("Hostname", victim),
                ),
            )
            yield World(rogue, victim, ghost, alice, clients)
        finally:
            for client in clients.values():
                client.close()
            for name in (rogue, victim):
                delete_quietly(admin, f"/api/v1/nodes/{name}")
            delete_quietly(admin, f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")


@dataclass(frozen=True)
class Attempt:
    """One CSR: who posts it, what it asks for, what the module is told, which rules must refuse it."""

    rules: tuple[str, ...]
    needle: str = ""  # the offending value, which the refusal must name ("{rogue}" etc. are filled in)
    identity: str = "rogue"
    key: str = "p256"
    common_names: tuple[str, ...] = ("system:node:{rogue}",)
    organizations: tuple[str, ...] = ("system:nodes",)
    dns: tuple[str, ...] = ("{rogue}",)
    ips: tuple[str, ...] = (ROGUE_IP,)
    other_sans: tuple[x509.GeneralName, ...] = ()
    extra_subject: tuple[x509.NameAttribute[str], ...] = ()
    usages: tuple[str, ...] = EC_USAGES
    expiration: int = 3600
    csr_name: str = "{label}"
    module_args: dict[str, str] = field(default_factory=lambda: {"node": "{rogue}"})


ATTEMPTS = {
    # The scenario and its parts: what the rogue wrote into its status proves nothing.
    "claims-victim-name-and-ip": Attempt(
        ("dns-name", "other-node"), "{victim}", dns=("{rogue}", "{victim}"), ips=(ROGUE_IP, VICTIM_IP)
    ),
    "claims-victim-ip": Attempt(("other-node",), VICTIM_IP, ips=(ROGUE_IP, VICTIM_IP)),
    "claims-victim-hostname": Attempt(("dns-name", "other-node"), "{victim}", dns=("{victim}",)),
    "claims-victim-ip-v4-mapped": Attempt(("other-node",), f"(= {VICTIM_IP})", ips=(f"::ffff:{VICTIM_IP}",)),
    "wildcard-service-domain": Attempt(
        ("wildcard",), "*.svc.cluster.local", dns=("{rogue}", "*.svc.cluster.local")
    ),
    "wildcard-node-domain": Attempt(("wildcard",), f"*.{DOMAIN}", dns=(f"*.{DOMAIN}",)),
    "dns-prefixed-by-node-name": Attempt(("dns-name",), "{rogue}evil", dns=("{rogue}evil",)),
    "dns-node-under-foreign-domain": Attempt(("dns-name",), "{rogue}.evil.io", dns=("{rogue}.evil.io",)),
    "dns-apiserver-name": Attempt(("dns-name",), "kubernetes.default.svc", dns=("kubernetes.default.svc",)),
    "dns-localhost": Attempt(("dns-name",), "localhost", dns=("localhost",)),
    "ip-reported-but-outside-prefixes": Attempt(("ip-prefix",), OUTSIDE_IP, ips=(ROGUE_IP, OUTSIDE_IP)),
    "ip-public": Attempt(("ip-prefix", "ip-node"), "9.9.9.9", ips=("9.9.9.9",)),
    "ip-v6-outside-prefixes": Attempt(
        ("ip-prefix", "ip-node"), "2001:c0fe:beef::14", ips=("2001:c0fe:beef::14",)
    ),
    "ip-not-reported-by-the-node": Attempt(("ip-node",), "127.0.23.99", ips=("127.0.23.99",)),
    "san-email": Attempt(
        ("san-type",), "root@example.com", other_sans=(x509.RFC822Name("root@example.com"),)
    ),
    "san-uri": Attempt(
        ("san-type",), "spiffe://evil/x", other_sans=(x509.UniformResourceIdentifier("spiffe://evil/x"),)
    ),
    "san-missing": Attempt(("san-missing",), "no DNS or IP SAN", dns=(), ips=()),
    # The apiserver refuses these from a node identity itself ("can only create a node CSR with
    # CN=system:node:<self>", test below); posted by the rogue's name outside system:nodes.
    "cn-of-the-victim": Attempt(
        ("groups", "subject-cn"),
        "system:node:{victim}",
        identity="groupless",
        common_names=("system:node:{victim}",),
    ),
    "cn-funny": Attempt(
        ("groups", "subject-cn"),
        "funny-common-name",
        identity="groupless",
        common_names=("funny-common-name",),
    ),
    "o-system-masters": Attempt(("subject-o",), "system:masters", organizations=("system:masters",)),
    "o-nodes-and-masters": Attempt(
        ("subject-o",), "system:masters", organizations=("system:nodes", "system:masters")
    ),
    "subject-extra-ou": Attempt(
        ("subject-extra",),
        "OU=system:masters",
        extra_subject=(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "system:masters"),),
    ),
    "key-rsa-1024": Attempt(("key",), "1024 bits", key="rsa1024", usages=RSA_USAGES),
    "key-ed25519": Attempt(("key",), "Ed25519", key="ed25519"),
    "key-p521": Attempt(("key",), "secp521r1", key="p521"),
    "usages-plus-client-auth": Attempt(("usages",), "client auth", usages=(*EC_USAGES, "client auth")),
    "usages-client-not-server": Attempt(
        ("usages",), "client auth", usages=("digital signature", "client auth")
    ),
    "usages-ecdsa-key-encipherment": Attempt(("usages",), "key encipherment", usages=RSA_USAGES),
    "expiration-too-long": Attempt(("expiration",), str(MAX_EXPIRATION + 1), expiration=MAX_EXPIRATION + 1),
    "requester-without-system-nodes": Attempt(("groups",), "system:authenticated", identity="groupless"),
    "requester-not-a-node": Attempt(
        ("requester", "groups", "owner", "subject-cn", "dns-name", "node"),
        "'{alice}'",
        identity="alice",
        common_names=("{alice}",),
        dns=("{alice}",),
        ips=(),
    ),
    "node-does-not-exist": Attempt(
        ("node",),
        "node {ghost} does not exist",
        identity="ghost",
        common_names=("system:node:{ghost}",),
        dns=("{ghost}",),
        ips=(),
        module_args={"node": "{ghost}"},
    ),
    "named-after-the-victim": Attempt(
        ("owner",), "not by node '{victim}'", csr_name="{victim}-tls", module_args={"name": "{victim}-tls"}
    ),
    "approved-for-the-victim": Attempt(
        ("owner",), "not by node '{victim}'", module_args={"node": "{victim}"}
    ),
    "name-that-names-no-node": Attempt(("owner",), "<node>-tls", module_args={}),
    # Honest requests: approved and signed.
    "good-ecdsa-by-name": Attempt((), csr_name="{rogue}-tls", module_args={"name": "{rogue}-tls"}),
    "good-rsa-with-domain-name": Attempt(
        (), key="rsa2048", usages=RSA_USAGES, dns=("{rogue}", f"{{rogue}}.{DOMAIN}"), ips=()
    ),
}


def _fill(text: str, world: World, label: str) -> str:
    return text.format(
        rogue=world.rogue, victim=world.victim, ghost=world.ghost, alice=world.alice, label=label
    )


def _post(world: World, label: str, attempt: Attempt, prefix: str) -> str:
    name = _fill(attempt.csr_name, world, f"{prefix}-{label}")
    request = request_pem(
        signing_key(attempt.key),
        [_fill(cn, world, label) for cn in attempt.common_names],
        attempt.organizations,
        [_fill(d, world, label) for d in attempt.dns],
        attempt.ips,
        other_sans=attempt.other_sans,
        extra_subject=attempt.extra_subject,
    )
    world.clients[attempt.identity].post(
        CSRS,
        {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(request).decode(),
                "signerName": SIGNER,
                "usages": list(attempt.usages),
                "expirationSeconds": attempt.expiration,
            },
        },
    )
    return name


def test_csr_approve_refuses_every_impersonation_by_its_rule_and_approves_honest_requests(
    cluster: Cluster, admin: Client, world: World, tmp_path: Path
) -> None:
    posted: dict[str, str] = {}
    try:
        for label, attempt in ATTEMPTS.items():
            posted[label] = _post(world, label, attempt, world.rogue)
        steps = []
        for label, attempt in ATTEMPTS.items():
            args: dict[str, Any] = {
                "kubeconfig": str(cluster.admin_kubeconfig),
                "name": posted[label],
                "ip_prefixes": ["127.0.0.0/8"],
                "dns_domain": DOMAIN,
                "max_expiration_seconds": MAX_EXPIRATION,
            }
            args.update({key: _fill(value, world, label) for key, value in attempt.module_args.items()})
            steps.append(Step("csr_approve", args))
        results = dict(zip(ATTEMPTS, run_modules(tmp_path, *steps), strict=True))

        refused = {label: a for label, a in ATTEMPTS.items() if a.rules}
        assert len(refused) >= 25
        for label, attempt in refused.items():
            name, result = posted[label], task_failed(results[label])
            reasons = result["refused"][name]
            assert tuple(r.split(":", 1)[0] for r in reasons) == attempt.rules, (label, reasons)
            assert _fill(attempt.needle, world, label) in "; ".join(reasons), (label, reasons)
            assert name in result["msg"] and result["approved"] == []
            assert not (get_csr(admin, name).get("status") or {}).get("conditions"), label

        for label in (label for label, a in ATTEMPTS.items() if not a.rules):
            name = posted[label]
            assert task_ok(results[label])["approved"] == [name]
            cert = wait_for(f"CSR {name} to be signed", partial(issued_certificate, admin, name))
            cert.verify_directly_issued_by(pki.load_cert(cluster.pki / "ca.crt"))
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(san.get_values_for_type(x509.DNSName)) <= {world.rogue, f"{world.rogue}.{DOMAIN}"}
    finally:
        for name in posted.values():
            delete_quietly(admin, f"{CSRS}/{name}")


@pytest.mark.parametrize("common_name", ["system:node:{victim}", "funny-common-name"])
def test_apiserver_itself_refuses_a_node_csr_for_another_common_name(world: World, common_name: str) -> None:
    attempt = Attempt((), common_names=(common_name,))
    with pytest.raises(ApiError) as refused:
        _post(world, "other-cn", attempt, unique("cn"))
    assert refused.value.status == 403
    assert f"CN=system:node:{world.rogue}" in str(refused.value)


def test_deny_invalid_denies_an_impersonation_naming_the_rule(
    cluster: Cluster, admin: Client, world: World, tmp_path: Path
) -> None:
    attempt = ATTEMPTS["claims-victim-name-and-ip"]
    name = _post(world, "deny", attempt, unique("deny"))
    try:
        args = {
            "kubeconfig": str(cluster.admin_kubeconfig),
            "name": name,
            "node": world.rogue,
            "deny_invalid": True,
        }
        (denied,) = run_modules(tmp_path, Step("csr_approve", args))
        assert task_failed(denied)["refused"][name][0].startswith("dns-name: ")
        conditions = get_csr(admin, name)["status"]["conditions"]
        assert [(c["type"], c["reason"]) for c in conditions] == [("Denied", "WasmletInvalid")]
        assert "other-node: " in conditions[0]["message"] and VICTIM_IP in conditions[0]["message"]
        assert "certificate" not in get_csr(admin, name)["status"]
    finally:
        delete_quietly(admin, f"{CSRS}/{name}")
