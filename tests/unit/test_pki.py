"""wasmlet.pki: CA and leaf issuance, reuse/re-issue decisions, key files and CSRs."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmlet import pki
from wasmlet.pki import CertSpec, PKIError

CA_SPEC = CertSpec("test-ca", is_ca=True, valid_days=3650, renew_before_days=365)
LEAF_SPEC = CertSpec(
    "kube-apiserver",
    organizations=("system:masters",),
    usages=("server",),
    dns_names=("kubernetes", "kubernetes.default"),
    ip_addresses=("10.96.0.1", "127.0.0.1"),
)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _spki(key: pki.PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def _module_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the module (RSA key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("ca")
    pki.ensure_certificate(CA_SPEC, directory / "ca.crt", directory / "ca.key")
    return directory


@pytest.fixture
def ca(tmp_path: Path, _module_ca: Path) -> tuple[Path, Path]:
    """A private copy of the module CA: (cert path, key path)."""
    directory = tmp_path / "ca"
    shutil.copytree(_module_ca, directory)
    return directory / "ca.crt", directory / "ca.key"


@pytest.fixture
def leaf(tmp_path: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """LEAF_SPEC issued by ``ca``: (cert path, key path)."""
    cert, key = tmp_path / "leaf.crt", tmp_path / "leaf.key"
    pki.ensure_certificate(LEAF_SPEC, cert, key, *ca)
    return cert, key


def _issue(
    spec: CertSpec, leaf: tuple[Path, Path], ca: tuple[Path, Path], check_only: bool = False
) -> pki.EnsureResult:
    return pki.ensure_certificate(spec, leaf[0], leaf[1], ca[0], ca[1], check_only=check_only)


# --- CA -----------------------------------------------------------------------------------


def test_ca_has_critical_ca_basic_constraints(ca: tuple[Path, Path]) -> None:
    ext = pki.load_cert(ca[0]).extensions.get_extension_for_class(x509.BasicConstraints)
    assert ext.critical is True
    assert ext.value.ca is True


def test_ca_key_usage_is_critical_and_allows_cert_signing(ca: tuple[Path, Path]) -> None:
    ext = pki.load_cert(ca[0]).extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical is True
    assert ext.value.key_cert_sign is True
    assert ext.value.crl_sign is True


def test_ca_is_self_signed_with_ski(ca: tuple[Path, Path]) -> None:
    cert = pki.load_cert(ca[0])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def test_ca_is_reused_on_second_ensure(ca: tuple[Path, Path]) -> None:
    before = ca[0].read_bytes()
    result = pki.ensure_certificate(CA_SPEC, *ca)
    assert result.changed is False
    assert result.reason == "reused"
    assert ca[0].read_bytes() == before


def test_ca_spec_with_usages_is_rejected() -> None:
    with pytest.raises(ValueError, match="takes no usages"):
        dataclasses.replace(CA_SPEC, usages=("client", "server"))


# --- leaf issuance ------------------------------------------------------------------------


def test_leaf_verifies_against_issuing_ca(leaf: tuple[Path, Path], ca: tuple[Path, Path]) -> None:
    cert, ca_cert = pki.load_cert(leaf[0]), pki.load_cert(ca[0])
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)


def test_leaf_is_not_a_ca_and_cannot_sign_certificates(leaf: tuple[Path, Path]) -> None:
    cert = pki.load_cert(leaf[0])
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical is True
    assert basic.value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False


def test_leaf_serial_is_positive_and_reported_in_hex(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    result = _issue(LEAF_SPEC, (tmp_path / "l.crt", tmp_path / "l.key"), ca)
    serial = pki.load_cert(tmp_path / "l.crt").serial_number
    assert serial > 0
    assert result.serial == f"{serial:x}"
    assert result.changed is True


def test_leaf_ski_matches_its_key_and_aki_matches_ca_ski(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    cert, ca_cert = pki.load_cert(leaf[0]), pki.load_cert(ca[0])
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest


def test_leaf_subject_and_sans_match_spec(leaf: tuple[Path, Path]) -> None:
    cert = pki.load_cert(leaf[0])
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["kube-apiserver"]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:masters"
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes", "kubernetes.default"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.96.0.1"),
        ipaddress.ip_address("127.0.0.1"),
    ]


def test_leaf_certificate_belongs_to_leaf_key(leaf: tuple[Path, Path]) -> None:
    cert = pki.load_cert(leaf[0])
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _spki(pki.load_key(leaf[1]))


@pytest.mark.parametrize(
    ("usages", "expected"),
    [
        (("server",), {ExtendedKeyUsageOID.SERVER_AUTH}),
        (("client",), {ExtendedKeyUsageOID.CLIENT_AUTH}),
        (("server", "client"), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_leaf_extended_key_usage_matches_requested_usages(
    tmp_path: Path, ca: tuple[Path, Path], usages: tuple[pki.Usage, ...], expected: set[x509.ObjectIdentifier]
) -> None:
    spec = CertSpec("user", usages=usages, key_type="ecdsa")
    _issue(spec, (tmp_path / "l.crt", tmp_path / "l.key"), ca)
    eku = pki.load_cert(tmp_path / "l.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == expected


def test_leaf_without_usages_has_no_extended_key_usage(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    _issue(CertSpec("user", key_type="ecdsa"), (tmp_path / "l.crt", tmp_path / "l.key"), ca)
    with pytest.raises(x509.ExtensionNotFound):
        pki.load_cert(tmp_path / "l.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_ecdsa_leaf_has_ec_key_and_verifies(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    _issue(dataclasses.replace(LEAF_SPEC, key_type="ecdsa"), (tmp_path / "l.crt", tmp_path / "l.key"), ca)
    assert isinstance(pki.load_key(tmp_path / "l.key"), ec.EllipticCurvePrivateKey)
    pki.load_cert(tmp_path / "l.crt").verify_directly_issued_by(pki.load_cert(ca[0]))


def test_private_keys_are_mode_0600_and_certificates_0644(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    assert _mode(ca[1]) == 0o600
    assert _mode(leaf[1]) == 0o600
    assert _mode(ca[0]) == 0o644
    assert _mode(leaf[0]) == 0o644


# --- reuse / re-issue ---------------------------------------------------------------------


def test_unchanged_certificate_is_reused_with_same_serial(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    serial = f"{pki.load_cert(leaf[0]).serial_number:x}"
    before = leaf[0].read_bytes()
    result = _issue(LEAF_SPEC, leaf, ca)
    assert result.changed is False
    assert result.reason == "reused"
    assert result.serial == serial
    assert leaf[0].read_bytes() == before


def test_reuse_ignores_order_of_sans_and_organizations(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    spec = dataclasses.replace(
        LEAF_SPEC,
        dns_names=tuple(reversed(LEAF_SPEC.dns_names)),
        ip_addresses=tuple(reversed(LEAF_SPEC.ip_addresses)),
    )
    assert _issue(spec, leaf, ca).changed is False


@pytest.mark.parametrize(
    "change",
    [
        {"dns_names": ("kubernetes", "kubernetes.default", "kubernetes.default.svc")},
        {"ip_addresses": ("10.96.0.1",)},
        {"common_name": "other-name"},
        {"organizations": ("system:nodes",)},
        {"usages": ("server", "client")},
    ],
    ids=["dns", "ip", "cn", "org", "usages"],
)
def test_certificate_is_reissued_when_spec_changes(
    leaf: tuple[Path, Path], ca: tuple[Path, Path], change: dict[str, object]
) -> None:
    old_serial = pki.load_cert(leaf[0]).serial_number
    spec = dataclasses.replace(LEAF_SPEC, **change)  # type: ignore[arg-type]
    result = _issue(spec, leaf, ca)
    assert result.changed is True
    assert result.reason != "reused"
    cert = pki.load_cert(leaf[0])
    assert cert.serial_number != old_serial
    assert result.serial == f"{cert.serial_number:x}"
    got = pki.describe(cert)
    assert got.common_name == spec.common_name
    assert sorted(got.organizations) == sorted(spec.organizations)
    assert sorted(got.dns_names) == sorted(spec.dns_names)
    assert sorted(got.ip_addresses) == sorted(spec.ip_addresses)
    assert sorted(got.usages) == sorted(spec.usages)
    assert _issue(spec, leaf, ca).changed is False  # and the new one is then reused


def test_reissue_for_changed_sans_keeps_the_private_key(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    key_before = leaf[1].read_bytes()
    _issue(dataclasses.replace(LEAF_SPEC, dns_names=("new.example",)), leaf, ca)
    assert leaf[1].read_bytes() == key_before


def test_certificate_is_reissued_with_new_key_when_key_type_changes(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    result = _issue(dataclasses.replace(LEAF_SPEC, key_type="ecdsa"), leaf, ca)
    assert result.changed is True
    assert isinstance(pki.load_key(leaf[1]), ec.EllipticCurvePrivateKey)
    assert isinstance(pki.load_cert(leaf[0]).public_key(), ec.EllipticCurvePublicKey)


def test_certificate_expiring_within_renew_window_is_reissued(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    spec = CertSpec("short", usages=("client",), valid_days=10, renew_before_days=30, key_type="ecdsa")
    paths = (tmp_path / "l.crt", tmp_path / "l.key")
    first = _issue(spec, paths, ca)
    second = _issue(spec, paths, ca)
    assert second.changed is True
    assert "expire" in second.reason
    assert second.serial != first.serial


def test_certificate_outside_renew_window_is_reused(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    spec = CertSpec("long-enough", usages=("client",), valid_days=40, renew_before_days=30, key_type="ecdsa")
    paths = (tmp_path / "l.crt", tmp_path / "l.key")
    _issue(spec, paths, ca)
    assert _issue(spec, paths, ca).changed is False


def test_certificate_is_reissued_when_ca_changes(tmp_path: Path, leaf: tuple[Path, Path]) -> None:
    new_ca = (tmp_path / "ca2" / "ca.crt", tmp_path / "ca2" / "ca.key")
    pki.ensure_certificate(CA_SPEC, *new_ca)  # same subject, new key
    result = _issue(LEAF_SPEC, leaf, new_ca)
    assert result.changed is True
    assert "CA" in result.reason
    pki.load_cert(leaf[0]).verify_directly_issued_by(pki.load_cert(new_ca[0]))


def test_certificate_is_reissued_when_it_does_not_match_the_key(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    leaf[1].write_bytes(pki.key_pem(pki.generate_key("rsa")))
    result = _issue(LEAF_SPEC, leaf, ca)
    assert result.changed is True
    assert "private key" in result.reason
    assert _spki(pki.load_key(leaf[1])) == pki.load_cert(leaf[0]).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_reused_certificate_with_wrong_key_mode_gets_key_chmod_0600(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    serial = f"{pki.load_cert(leaf[0]).serial_number:x}"
    leaf[1].chmod(0o644)
    result = _issue(LEAF_SPEC, leaf, ca)
    assert result.changed is True
    assert result.reason == "reused"
    assert result.serial == serial
    assert _mode(leaf[1]) == 0o600
    assert _issue(LEAF_SPEC, leaf, ca).changed is False


# --- check mode ---------------------------------------------------------------------------


def test_check_only_for_missing_certificate_reports_change_and_writes_nothing(
    tmp_path: Path, ca: tuple[Path, Path]
) -> None:
    out = tmp_path / "out"
    result = _issue(LEAF_SPEC, (out / "l.crt", out / "l.key"), ca, check_only=True)
    assert result.changed is True
    assert not out.exists()


def test_check_only_with_missing_ca_reports_change_and_writes_nothing(tmp_path: Path) -> None:
    missing_ca = (tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    result = _issue(LEAF_SPEC, (tmp_path / "l.crt", tmp_path / "l.key"), missing_ca, check_only=True)
    assert result.changed is True
    assert sorted(tmp_path.iterdir()) == []


def test_check_only_reports_needed_reissue_without_touching_files(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    cert_before, key_before = leaf[0].read_bytes(), leaf[1].read_bytes()
    leaf[1].chmod(0o640)
    result = _issue(dataclasses.replace(LEAF_SPEC, dns_names=("new.example",)), leaf, ca, check_only=True)
    assert result.changed is True
    assert result.reason != "reused"
    assert leaf[0].read_bytes() == cert_before
    assert leaf[1].read_bytes() == key_before
    assert _mode(leaf[1]) == 0o640


def test_check_only_reports_wrong_key_mode_without_fixing_it(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    leaf[1].chmod(0o644)
    assert _issue(LEAF_SPEC, leaf, ca, check_only=True).changed is True
    assert _mode(leaf[1]) == 0o644


def test_check_only_reports_no_change_for_valid_certificate(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    assert _issue(LEAF_SPEC, leaf, ca, check_only=True).changed is False


# --- errors -------------------------------------------------------------------------------


def test_garbage_key_file_raises_pki_error_naming_the_path(tmp_path: Path) -> None:
    key = tmp_path / "garbage.key"
    key.write_bytes(b"not a key at all")
    with pytest.raises(PKIError, match=str(key)):
        pki.load_key(key)


def test_ensure_certificate_with_garbage_key_raises_pki_error_naming_the_path(
    leaf: tuple[Path, Path], ca: tuple[Path, Path]
) -> None:
    leaf[1].write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(PKIError, match=str(leaf[1])):
        _issue(LEAF_SPEC, leaf, ca)


def test_garbage_ca_key_raises_pki_error_naming_the_path(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    ca[1].write_bytes(b"garbage")
    with pytest.raises(PKIError, match=str(ca[1])):
        _issue(LEAF_SPEC, (tmp_path / "l.crt", tmp_path / "l.key"), ca)


def test_garbage_certificate_file_raises_pki_error_naming_the_path(tmp_path: Path) -> None:
    cert = tmp_path / "garbage.crt"
    cert.write_bytes(b"garbage")
    with pytest.raises(PKIError, match=str(cert)):
        pki.load_cert(cert)


def test_ca_cert_without_ca_key_is_rejected(tmp_path: Path, ca: tuple[Path, Path]) -> None:
    with pytest.raises(PKIError, match="together"):
        pki.ensure_certificate(LEAF_SPEC, tmp_path / "l.crt", tmp_path / "l.key", ca_cert_path=ca[0])


# --- key pairs ----------------------------------------------------------------------------


def test_ensure_key_pair_writes_spki_public_key_of_private_key(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "sa.key", tmp_path / "sa.pub"
    assert pki.ensure_key_pair(key_path, pub_path) is True
    pub_pem = pub_path.read_bytes()
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    pub = serialization.load_pem_public_key(pub_pem)
    assert isinstance(pub, rsa.RSAPublicKey)
    key = pki.load_key(key_path)
    assert pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _spki(key)
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o644


def test_ensure_key_pair_is_idempotent(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "sa.key", tmp_path / "sa.pub"
    pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa")
    key_before, pub_before = key_path.read_bytes(), pub_path.read_bytes()
    assert pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa") is False
    assert pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa", check_only=True) is False
    assert key_path.read_bytes() == key_before
    assert pub_path.read_bytes() == pub_before


def test_ensure_key_pair_restores_missing_public_key_from_existing_private_key(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "sa.key", tmp_path / "sa.pub"
    pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa")
    key_before, pub_before = key_path.read_bytes(), pub_path.read_bytes()
    pub_path.unlink()
    assert pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa") is True
    assert key_path.read_bytes() == key_before
    assert pub_path.read_bytes() == pub_before


def test_ensure_key_pair_check_only_writes_nothing(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "sa.key", tmp_path / "sa.pub"
    assert pki.ensure_key_pair(key_path, pub_path, check_only=True) is True
    assert not key_path.exists()
    assert not pub_path.exists()


def test_ensure_key_pair_fixes_private_key_mode(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "sa.key", tmp_path / "sa.pub"
    pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa")
    key_path.chmod(0o644)
    assert pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa", check_only=True) is True
    assert _mode(key_path) == 0o644
    assert pki.ensure_key_pair(key_path, pub_path, key_type="ecdsa") is True
    assert _mode(key_path) == 0o600


# --- CSRs ---------------------------------------------------------------------------------


def test_build_csr_carries_requested_subject_and_sans() -> None:
    key = pki.generate_key("ecdsa")
    pem = pki.build_csr(key, "system:node:worker-1", ["system:nodes"], ["worker-1"], ["192.168.1.10"])
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        "system:node:worker-1"
    ]
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:nodes"
    ]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["worker-1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.10")]
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _spki(key)


def test_build_csr_without_sans_has_no_san_extension() -> None:
    csr = x509.load_pem_x509_csr(pki.build_csr(pki.generate_key("ecdsa"), "client"))
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
