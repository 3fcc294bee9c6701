"""Validation of kubelet serving CSRs before approving them.

A CSR passes only if every rule holds; each refusal is one line ``<rule>: <what is wrong>``.
The rules, the threat they answer and the options: docs/security.md ("CSR approval").
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

SERVING_SIGNER = "kubernetes.io/kubelet-serving"
NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
SERVING_USAGES = frozenset({"digital signature", "server auth"})
RSA_SERVING_USAGES = frozenset({"digital signature", "key encipherment", "server auth"})
MIN_RSA_BITS = 2048
ALLOWED_CURVES = ("secp256r1", "secp384r1")
DEFAULT_MAX_EXPIRATION_SECONDS = 31536000
# Private-use and loopback ranges: what nodes on a private network (or all on one host) have.
# A public address must be listed explicitly; list exactly your nodes' subnets where you can.
DEFAULT_IP_PREFIXES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7", "::1/128")
_IP_TYPES = {"InternalIP", "ExternalIP"}
_DNS_TYPES = {"Hostname", "InternalDNS", "ExternalDNS"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Policy:
    """What the operator allows: the SAN space and the longest validity."""

    ip_prefixes: tuple[IPNetwork, ...]
    dns_domain: str = ""
    max_expiration_seconds: int = DEFAULT_MAX_EXPIRATION_SECONDS

    @classmethod
    def from_options(
        cls,
        ip_prefixes: Sequence[str] | None = None,
        dns_domain: str | None = None,
        max_expiration_seconds: int = DEFAULT_MAX_EXPIRATION_SECONDS,
    ) -> Policy:
        """The policy from user options; ValueError naming the option and the bad value."""
        networks = []
        for prefix in DEFAULT_IP_PREFIXES if ip_prefixes is None else ip_prefixes:
            try:
                networks.append(ipaddress.ip_network(str(prefix), strict=True))
            except ValueError as exc:
                raise ValueError(f"ip_prefixes: {prefix!r} is not a network prefix ({exc})") from None
        domain = (dns_domain or "").lower()
        if domain and not _is_hostname(domain):
            raise ValueError(f"dns_domain: {dns_domain!r} is not a DNS domain (no wildcard, no leading dot)")
        if max_expiration_seconds < 600:
            raise ValueError(
                f"max_expiration_seconds: {max_expiration_seconds} is below the API's minimum 600"
            )
        return cls(tuple(networks), domain, max_expiration_seconds)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]
    node: str = ""

    @property
    def rules(self) -> tuple[str, ...]:
        """The names of the rules that refused, in order."""
        return tuple(reason.split(":", 1)[0] for reason in self.reasons)


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


def _ip(value: str | IPAddress) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip_text(text: str) -> str:
    """The SAN as written, and the IPv4 address it stands for when it is IPv4-mapped."""
    ip = _ip(text)
    return f"{text} (= {ip})" if ip is not None and str(ip) != text else text


def node_names(node: dict[str, Any]) -> tuple[set[str], set[IPAddress]]:
    """(DNS names, IPs) a Node has: its name and the addresses in its status."""
    dns = {str(node.get("metadata", {}).get("name", ""))} - {""}
    ips: set[IPAddress] = set()
    for address in (node.get("status") or {}).get("addresses") or []:
        value = str(address.get("address", ""))
        if address.get("type") in _IP_TYPES and (ip := _ip(value)) is not None:
            ips.add(ip)
        elif address.get("type") in _DNS_TYPES and value:
            dns.add(value)
    return dns, ips


def requested_node(csr: dict[str, Any]) -> str:
    user = str(csr.get("spec", {}).get("username", ""))
    return user.removeprefix(NODE_USER_PREFIX) if user.startswith(NODE_USER_PREFIX) else ""


def name_owner(csr_name: str) -> str:
    """The node a CSR's name says it belongs to (``<node>-tls``, Krustlet's convention), or ''."""
    return csr_name.removesuffix("-tls") if csr_name.endswith("-tls") else ""


def _requester_problems(spec: dict[str, Any], who: str, owner: str | None) -> list[str]:
    problems = []
    username = str(spec.get("username", ""))
    if not who:
        problems.append(f"requester: spec.username {username!r} is not {NODE_USER_PREFIX}<node>")
    groups = [str(g) for g in spec.get("groups") or []]
    if NODES_GROUP not in groups:
        problems.append(f"groups: spec.groups {groups} do not include {NODES_GROUP}")
    if owner is not None and who != owner:
        problems.append(
            f"owner: requested by {username!r}, not by node {owner!r}"
            if owner
            else f"owner: requested by {username!r}, but the CSR's name does not say it is that node's "
            "(<node>-tls); name the node to approve it"
        )
    return problems


def _subject_problems(request: x509.CertificateSigningRequest, who: str) -> list[str]:
    problems = []
    cn = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if not who or cn != [f"{NODE_USER_PREFIX}{who}"]:
        problems.append(
            f"subject-cn: CN {cn} is not exactly the requesting node's {NODE_USER_PREFIX}{who or '<node>'}"
        )
    if orgs != [NODES_GROUP]:
        problems.append(f"subject-o: O {orgs} is not exactly [{NODES_GROUP!r}]")
    extra = [
        a.rfc4514_string()
        for a in request.subject
        if a.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
    ]
    if extra:
        problems.append(f"subject-extra: the subject has attributes besides CN and O: {extra}")
    return problems


def _key_problems(request: x509.CertificateSigningRequest, usages: set[str]) -> list[str]:
    problems = []
    key = request.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        allowed: tuple[frozenset[str], ...] = (SERVING_USAGES, RSA_SERVING_USAGES)
        if key.key_size < MIN_RSA_BITS:
            problems.append(f"key: RSA key of {key.key_size} bits is shorter than {MIN_RSA_BITS}")
    else:
        allowed = (SERVING_USAGES,)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            problems.append(
                f"key: {type(key).__name__.removesuffix('PublicKey')} keys are not allowed (RSA or ECDSA)"
            )
        elif key.curve.name not in ALLOWED_CURVES:
            problems.append(f"key: ECDSA curve {key.curve.name} is not one of {list(ALLOWED_CURVES)}")
    if usages not in allowed:
        problems.append(f"usages: {sorted(usages)} are not {' or '.join(str(sorted(u)) for u in allowed)}")
    return problems


def _sans(request: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    # Not an empty SubjectAlternativeName: cryptography 51 refuses to construct one.
    try:
        return list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _san_problems(
    request: x509.CertificateSigningRequest,
    who: str,
    node: dict[str, Any] | None,
    others: Iterable[dict[str, Any]],
    policy: Policy,
) -> list[str]:
    problems = []
    san = _sans(request)
    dns = [name.value for name in san if isinstance(name, x509.DNSName)]
    ips = [
        (_ip_text(str(name.value)), _ip(str(name.value))) for name in san if isinstance(name, x509.IPAddress)
    ]
    odd = [str(name.value) for name in san if not isinstance(name, x509.DNSName | x509.IPAddress)]
    if odd:
        problems.append(f"san-type: only DNS and IP SANs are allowed, not {odd}")
    if not dns and not ips:
        problems.append("san-missing: the request has no DNS or IP SAN")
    wildcards = [d for d in dns if "*" in d]
    if wildcards:
        problems.append(f"wildcard: DNS SANs {wildcards} are wildcards")
    allowed_dns = ({who, f"{who}.{policy.dns_domain}"} if policy.dns_domain else {who}) if who else set()
    foreign = [d for d in dns if d not in allowed_dns and d not in wildcards]
    if foreign:
        problems.append(
            f"dns-name: DNS SANs {foreign} are not the node's name (allowed: {sorted(allowed_dns)})"
        )
    outside = [text for text, ip in ips if ip is None or not any(ip in net for net in policy.ip_prefixes)]
    if outside:
        prefixes = [str(net) for net in policy.ip_prefixes]
        problems.append(f"ip-prefix: IP SANs {outside} are outside the allowed prefixes {prefixes}")
    if node is None:
        problems.append(f"node: node {who or '<none>'} does not exist")
    else:
        own_ips = node_names(node)[1]
        unreported = [text for text, ip in ips if ip not in own_ips]
        if unreported:
            problems.append(f"ip-node: IP SANs {unreported} are not addresses node {who} reports")
    taken = _names_of_others(others)
    claimed = [(d, d) for d in dns if d in taken] + [
        (text, ip) for text, ip in ips if ip is not None and ip in taken
    ]
    if claimed:
        owners = sorted({taken[key] for _text, key in claimed})
        problems.append(f"other-node: SANs {[text for text, _key in claimed]} belong to node(s) {owners}")
    return problems


def _names_of_others(others: Iterable[dict[str, Any]]) -> dict[str | IPAddress, str]:
    taken: dict[str | IPAddress, str] = {}
    for other in others:
        dns, ips = node_names(other)
        for key in (*dns, *ips):
            taken[key] = str(other["metadata"]["name"])
    return taken


def validate(
    csr: dict[str, Any], nodes: Sequence[dict[str, Any]], policy: Policy, owner: str | None = None
) -> Verdict:
    """Whether ``csr`` may be approved, given every Node in the cluster (``nodes``).

    ``owner``, when given, is the node the caller means to approve for: the requester must be it.
    """
    spec = csr.get("spec") or {}
    status = csr.get("status") or {}
    name = csr.get("metadata", {}).get("name", "?")
    if spec.get("signerName") != SERVING_SIGNER:
        return Verdict(False, (f"signer: {spec.get('signerName')!r} is not {SERVING_SIGNER}",))
    conditions = status.get("conditions") or []
    decided = [c["type"] for c in conditions if c.get("type") in {"Approved", "Denied", "Failed"}]
    if decided or status.get("certificate"):
        return Verdict(False, (f"pending: CSR {name} is already {(decided or ['signed'])[0].lower()}",))
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", ""), validate=True))
    except ValueError as exc:
        return Verdict(False, (f"request: the request does not parse: {exc}",))
    if not request.is_signature_valid:
        return Verdict(False, ("request: the request is not signed by its own key",))
    who = requested_node(csr)
    node = next((n for n in nodes if who and n.get("metadata", {}).get("name") == who), None)
    others = [n for n in nodes if n is not node]
    usages = {str(u) for u in spec.get("usages") or []}
    reasons = (
        _requester_problems(spec, who, owner)
        + _subject_problems(request, who)
        + _key_problems(request, usages)
        + _san_problems(request, who, node, others, policy)
    )
    expiration = spec.get("expirationSeconds")
    if expiration is not None and int(expiration) > policy.max_expiration_seconds:
        reasons.append(f"expiration: expirationSeconds {expiration} exceeds {policy.max_expiration_seconds}")
    return Verdict(not reasons, tuple(reasons), who)


def approval(csr: dict[str, Any], reason: str, message: str, approve: bool = True) -> dict[str, Any]:
    """The CSR with an Approved (or Denied) condition, for PUT .../approval."""
    body = dict(csr)
    conditions = list((csr.get("status") or {}).get("conditions") or [])
    conditions.append(
        {"type": "Approved" if approve else "Denied", "status": "True", "reason": reason, "message": message}
    )
    body["status"] = {**(csr.get("status") or {}), "conditions": conditions}
    return body
