"""PKCS#10 requests as an attacker writes them: any subject, any SANs, any key.

Shared by the unit tests of ``wasmlet.ops.csr`` and the integration test that posts the same
requests to the real apiserver (``pki.build_csr`` makes only well-formed node requests).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def signing_key(kind: str) -> SigningKey:
    """A fresh key: ``p256``, ``p384``, ``p521``, ``ed25519`` or ``rsa<bits>``."""
    curves: dict[str, ec.EllipticCurve] = {
        "p256": ec.SECP256R1(),
        "p384": ec.SECP384R1(),
        "p521": ec.SECP521R1(),
    }
    if kind in curves:
        return ec.generate_private_key(curves[kind])
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind.removeprefix("rsa")))
    raise ValueError(f"unknown key kind {kind!r}")


def request_pem(
    key: SigningKey,
    common_names: Sequence[str],
    organizations: Sequence[str] = ("system:nodes",),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    *,
    other_sans: Sequence[x509.GeneralName] = (),
    extra_subject: Sequence[x509.NameAttribute[str]] = (),
) -> bytes:
    """A PEM CSR with exactly these subject attributes and SANs, signed by ``key``."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs += [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names]
    attrs += list(extra_subject)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += list(other_sans)
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)
