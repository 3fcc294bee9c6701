"""X.509 keys, certificates and CSRs, in the forms Kubernetes' Go parsers accept.

One implementation for the control-plane PKI (role ``control_plane``), the registry's
TLS (role ``registry``) and the node's TLS bootstrap. Certificates are reused while they
are valid, match what is asked for and are not close to expiry; otherwise they are
re-issued. Private keys are written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmlet.fsutil import PUBLIC_MODE, SECRET_MODE, write_atomic

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyType = Literal["rsa", "ecdsa"]
Usage = Literal["server", "client"]

_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


class PKIError(Exception):
    """A key or certificate could not be read, verified or written."""


@dataclass(frozen=True)
class CertSpec:
    """What a certificate must say. Equality of two specs is what 'reuse' checks."""

    common_name: str
    organizations: tuple[str, ...] = ()
    usages: tuple[Usage, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    is_ca: bool = False
    valid_days: int = 365
    renew_before_days: int = 30
    key_type: KeyType = "rsa"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.is_ca and self.usages:
            raise ValueError(f"CA certificate {self.common_name!r} takes no usages (got {list(self.usages)})")

    def subject(self) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in self.organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, self.common_name))
        return x509.Name(attrs)

    def sans(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ip_addresses]
        return names


def generate_key(key_type: KeyType = "rsa") -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key_pem(data: bytes, source: str = "private key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"cannot read {source}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PKIError(f"{source} is neither RSA nor ECDSA")
    return key


def load_key(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc}") from exc
    return load_key_pem(data, f"private key {path}")


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read certificate {path}: {exc}") from exc


def ensure_key(path: Path, key_type: KeyType = "rsa") -> tuple[PrivateKey, bool]:
    """Load the key at ``path``, or create one. Returns (key, changed)."""
    if path.exists():
        key = load_key(path)
        wanted = ec.EllipticCurvePrivateKey if key_type == "ecdsa" else rsa.RSAPrivateKey
        if isinstance(key, wanted):
            changed = write_atomic(path, path.read_bytes(), SECRET_MODE)  # enforce the mode
            return key, changed
    key = generate_key(key_type)
    write_atomic(path, key_pem(key), SECRET_MODE)
    return key, True


def public_key_fingerprint(path: Path) -> str:
    """SHA-256 of a PEM public key file, hex (empty when the file does not exist)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def ensure_key_pair(
    key_path: Path, pub_path: Path, key_type: KeyType = "rsa", check_only: bool = False
) -> bool:
    """A private key and its SPKI public key (the service-account signing pair)."""
    if check_only:
        if not key_path.exists() or (key_path.stat().st_mode & 0o777) != SECRET_MODE:
            return True
        key = load_key(key_path)
        try:
            return pub_path.read_bytes() != public_key_pem(key)
        except FileNotFoundError:
            return True
    key, changed = ensure_key(key_path, key_type)
    return write_atomic(pub_path, public_key_pem(key), PUBLIC_MODE) or changed


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    pub = issuer.public_key()
    sig_hash = cert.signature_hash_algorithm
    if sig_hash is None:
        return False
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), sig_hash)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def describe(cert: x509.Certificate) -> CertSpec:
    """Read back the parts of a certificate that a CertSpec pins (validity excluded)."""
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(u for u, oid in _EKU.items() if oid in eku)
    except x509.ExtensionNotFound:
        usages = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    key = cert.public_key()
    return CertSpec(
        common_name=str(cn[0].value) if cn else "",
        organizations=tuple(str(o.value) for o in orgs),
        usages=usages,  # type: ignore[arg-type]
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
        key_type="ecdsa" if isinstance(key, ec.EllipticCurvePublicKey) else "rsa",
    )


def _normalized(spec: CertSpec) -> tuple[object, ...]:
    return (
        spec.common_name,
        tuple(sorted(spec.organizations)),
        tuple(sorted(set(spec.usages))),
        tuple(sorted(spec.dns_names)),
        tuple(sorted(str(ipaddress.ip_address(i)) for i in spec.ip_addresses)),
        spec.is_ca,
        spec.key_type,
    )


def reusable(
    cert: x509.Certificate, spec: CertSpec, issuer: x509.Certificate | None, key: PrivateKey
) -> str | None:
    """Why ``cert`` cannot be kept for ``spec`` (None when it can)."""
    if _normalized(describe(cert)) != _normalized(spec):
        return "subject, names or usages differ from what is asked"
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return "certificate does not belong to the private key"
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=spec.renew_before_days):
        return "certificate expires soon"
    if cert.not_valid_before_utc > _now():
        return "certificate is not valid yet"
    if not _signed_by(cert, issuer if issuer is not None else cert):
        return "certificate is not signed by the CA"
    return None


def build_certificate(
    spec: CertSpec,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer_key: PrivateKey,
    issuer: x509.Certificate | None,
) -> x509.Certificate:
    """Sign a certificate for ``public_key``; self-signed when ``issuer`` is None."""
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject())
        .issuer_name(issuer.subject if issuer is not None else spec.subject())
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=spec.valid_days))
        .add_extension(x509.BasicConstraints(ca=spec.is_ca, path_length=None), critical=True)
        .add_extension(ski, critical=False)
    )
    # A CA signs certificates; a leaf signs, and with RSA also enciphers keys (TLS key exchange).
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not spec.is_ca and isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=spec.is_ca,
        crl_sign=spec.is_ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = builder.add_extension(key_usage, critical=True)
    if spec.usages:  # never on a CA (CertSpec refuses that)
        builder = builder.add_extension(x509.ExtendedKeyUsage([_EKU[u] for u in spec.usages]), critical=False)
    if issuer is not None:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    sans = spec.sans()
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


@dataclass(frozen=True)
class EnsureResult:
    changed: bool
    reason: str  # why it was (re)issued, or "reused"
    not_after: dt.datetime
    serial: str = ""  # hex serial of the certificate in place ("" in check mode before issuing)


def ensure_certificate(
    spec: CertSpec,
    cert_path: Path,
    key_path: Path,
    ca_cert_path: Path | None = None,
    ca_key_path: Path | None = None,
    *,
    check_only: bool = False,
) -> EnsureResult:
    """Make ``cert_path``/``key_path`` hold a valid certificate for ``spec``.

    Without a CA the certificate is self-signed (use ``is_ca=True`` for a root CA).
    With ``check_only`` nothing is written; the result says what would happen.
    """
    if check_only and ca_cert_path is not None and not ca_cert_path.exists():
        return EnsureResult(True, "the CA does not exist yet", _now() + dt.timedelta(days=spec.valid_days))
    issuer = load_cert(ca_cert_path) if ca_cert_path else None
    ca_key = load_key(ca_key_path) if ca_key_path else None
    if (issuer is None) != (ca_key is None):
        raise PKIError("ca_cert and ca_key must be given together")

    reason = "certificate does not exist"
    if key_path.exists() and cert_path.exists():
        key = load_key(key_path)
        why = reusable(load_cert(cert_path), spec, issuer, key)
        if why is None:
            mode_changed = (key_path.stat().st_mode & 0o777) != SECRET_MODE
            if mode_changed and not check_only:
                key_path.chmod(SECRET_MODE)
            current = load_cert(cert_path)
            return EnsureResult(
                mode_changed, "reused", current.not_valid_after_utc, f"{current.serial_number:x}"
            )
        reason = why
    if check_only:
        return EnsureResult(True, reason, _now() + dt.timedelta(days=spec.valid_days))

    key = ensure_key(key_path, spec.key_type)[0]
    cert = build_certificate(spec, key.public_key(), ca_key if ca_key else key, issuer)
    write_atomic(cert_path, cert_pem(cert), PUBLIC_MODE)
    return EnsureResult(True, reason, cert.not_valid_after_utc, f"{cert.serial_number:x}")


def build_csr(
    key: PrivateKey,
    common_name: str,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> bytes:
    """A PEM certificate signing request (used by the node's TLS bootstrap)."""
    spec = CertSpec(
        common_name, tuple(organizations), dns_names=tuple(dns_names), ip_addresses=tuple(ip_addresses)
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(spec.subject())
    sans = spec.sans()
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
