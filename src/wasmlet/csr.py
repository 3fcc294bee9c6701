"""Validation of kubelet serving CSRs before approving them.

``kubernetes.io/kubelet-serving`` CSRs are never auto-approved by the controller manager
(kubernetes#73356); approving one blindly lets any node identity obtain a serving
certificate for any name. A CSR passes only if (postfinance/kubelet-csr-approver's checks,
made stricter for a node we know):

- its signer is ``kubernetes.io/kubelet-serving`` and it is neither approved, denied nor failed;
- it parses, its CN is ``system:node:<node>`` and equals the requesting user, and its O is
  exactly ``[system:nodes]``;
- its usages are digital signature + server auth (+ key encipherment for RSA);
- it has at least one SAN, no email or URI SANs, its DNS SANs are among the node's names and
  its IP SANs among the Node's ``status.addresses``;
- its requested expiration, if any, is at most ``max_expiration_seconds``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVING_SIGNER = "kubernetes.io/kubelet-serving"
ALLOWED_USAGES = (
    {"digital signature", "server auth"},
    {"digital signature", "key encipherment", "server auth"},
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]
    node: str = ""


def node_names(node: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(DNS names, IPs) a Node may have in its serving certificate."""
    dns = {node["metadata"]["name"]}
    ips: set[str] = set()
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") in {"InternalIP", "ExternalIP"}:
            ips.add(address["address"])
        elif address.get("type") in {"Hostname", "InternalDNS", "ExternalDNS"}:
            dns.add(address["address"])
    return dns, ips


def requested_node(csr: dict[str, Any]) -> str:
    user = str(csr.get("spec", {}).get("username", ""))
    return user.removeprefix("system:node:") if user.startswith("system:node:") else ""


def _identity_problems(request: x509.CertificateSigningRequest, spec: dict[str, Any]) -> list[str]:
    problems = []
    username = str(spec.get("username", ""))
    cn = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if not username.startswith("system:node:"):
        problems.append(f"requested by {username!r}, not by a node identity")
    if cn != [username]:
        problems.append(f"CN {cn} does not match the requesting user {username!r}")
    if orgs != ["system:nodes"]:
        problems.append(f"O is {orgs}, not exactly ['system:nodes']")
    usages = set(spec.get("usages") or [])
    allowed = ALLOWED_USAGES if isinstance(request.public_key(), rsa.RSAPublicKey) else ALLOWED_USAGES[:1]
    if usages not in allowed:
        problems.append(f"usages {sorted(usages)} are not {sorted(allowed[0])}")
    return problems


def _san_problems(
    request: x509.CertificateSigningRequest, node: dict[str, Any] | None, who: str
) -> list[str]:
    problems = []
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    if san.get_values_for_type(x509.RFC822Name) or san.get_values_for_type(x509.UniformResourceIdentifier):
        problems.append("email or URI SANs are not allowed")
    if not dns and not ips:
        problems.append("no DNS or IP SAN")
    if node is None:
        problems.append(f"node {who or '?'} does not exist")
        return problems
    node_dns, node_ips = node_names(node)
    if dns - node_dns:
        problems.append(f"DNS SANs {sorted(dns - node_dns)} are not names of node {who}")
    if ips - node_ips:
        problems.append(f"IP SANs {sorted(ips - node_ips)} are not addresses of node {who}")
    return problems


def validate(csr: dict[str, Any], node: dict[str, Any] | None, max_expiration_seconds: int) -> Verdict:
    """Whether ``csr`` may be approved for ``node`` (the Node object of its requester)."""
    spec = csr.get("spec") or {}
    status = csr.get("status") or {}
    name = csr.get("metadata", {}).get("name", "?")
    if spec.get("signerName") != SERVING_SIGNER:
        return Verdict(False, (f"signer is {spec.get('signerName')!r}, not {SERVING_SIGNER}",))
    conditions = status.get("conditions") or []
    decided = [c["type"] for c in conditions if c.get("type") in {"Approved", "Denied", "Failed"}]
    if decided:
        return Verdict(False, (f"CSR {name} is already {decided[0].lower()}",))
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
    except ValueError as exc:
        return Verdict(False, (f"the request does not parse: {exc}",))
    who = requested_node(csr)
    reasons = _identity_problems(request, spec) + _san_problems(request, node, who)
    expiration = spec.get("expirationSeconds")
    if expiration is not None and int(expiration) > max_expiration_seconds:
        reasons.append(f"expirationSeconds {expiration} exceeds {max_expiration_seconds}")
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
