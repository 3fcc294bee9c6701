"""wasmlet.kube.kubeconfig: render/write/load round trip and error reporting."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from wasmlet.kube import kubeconfig
from wasmlet.kube.kubeconfig import KubeconfigError

CA = b"-----BEGIN CERTIFICATE-----\nCA-BYTES\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"


def _write_doc(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _doc(cluster: dict[str, object], user: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }


def test_written_kubeconfig_round_trips_client_certificate_credentials(tmp_path: Path) -> None:
    path = tmp_path / "admin.kubeconfig"
    content = kubeconfig.render(
        server="https://10.0.0.1:6443", ca_pem=CA, user="admin", client_cert_pem=CERT, client_key_pem=KEY
    )
    assert kubeconfig.write(path, content) is True
    creds = kubeconfig.load(path)
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.ca_pem == CA
    assert creds.client_cert_pem == CERT
    assert creds.client_key_pem == KEY
    assert creds.token is None
    assert creds.insecure is False


def test_written_kubeconfig_round_trips_token(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.kubeconfig"
    kubeconfig.write(
        path,
        kubeconfig.render(
            server="https://api:6443", ca_pem=CA, user="kubelet-bootstrap", token="abc.0123456789abcdef"
        ),
    )
    creds = kubeconfig.load(path)
    assert creds.token == "abc.0123456789abcdef"
    assert creds.client_cert_pem is None
    assert creds.client_key_pem is None
    assert creds.ca_pem == CA


def test_rendered_kubeconfig_embeds_credentials_as_data(tmp_path: Path) -> None:
    doc = yaml.safe_load(
        kubeconfig.render(
            server="https://s", ca_pem=CA, user="u", cluster="k", client_cert_pem=CERT, client_key_pem=KEY
        )
    )
    assert doc["current-context"] == "u@k"
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == CA
    assert set(doc["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}


def test_kubeconfig_is_written_mode_0600_and_rewrite_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "k"
    content = kubeconfig.render(server="https://s", ca_pem=CA, user="u", token="t")
    kubeconfig.write(path, content)
    assert path.stat().st_mode & 0o777 == 0o600
    assert kubeconfig.write(path, content) is False


def test_load_of_missing_file_raises_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.kubeconfig"
    with pytest.raises(KubeconfigError, match=str(path)):
        kubeconfig.load(path)


def test_load_without_current_context_raises_error_naming_the_path(tmp_path: Path) -> None:
    doc = _doc({"server": "https://s"}, {"token": "t"})
    del doc["current-context"]
    path = _write_doc(tmp_path / "k", doc)
    with pytest.raises(KubeconfigError, match=str(path)):
        kubeconfig.load(path)


def test_load_with_current_context_naming_no_context_raises_error(tmp_path: Path) -> None:
    doc = _doc({"server": "https://s"}, {"token": "t"})
    doc["current-context"] = "other"
    path = _write_doc(tmp_path / "k", doc)
    with pytest.raises(KubeconfigError, match=str(path)):
        kubeconfig.load(path)


def test_load_of_empty_file_raises_kubeconfig_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("")
    with pytest.raises(KubeconfigError, match=str(path)):
        kubeconfig.load(path)


def test_relative_credential_file_paths_resolve_against_kubeconfig_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    confdir = tmp_path / "conf"
    (confdir / "pki").mkdir(parents=True)
    (confdir / "pki" / "ca.crt").write_bytes(CA)
    (confdir / "pki" / "client.crt").write_bytes(CERT)
    (confdir / "pki" / "client.key").write_bytes(KEY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pki").mkdir()
    (elsewhere / "pki" / "ca.crt").write_bytes(b"WRONG CA")
    monkeypatch.chdir(elsewhere)
    path = _write_doc(
        confdir / "kubeconfig",
        _doc(
            {"server": "https://s", "certificate-authority": "pki/ca.crt"},
            {"client-certificate": "pki/client.crt", "client-key": "pki/client.key"},
        ),
    )
    creds = kubeconfig.load(path)
    assert creds.ca_pem == CA
    assert creds.client_cert_pem == CERT
    assert creds.client_key_pem == KEY


def test_absolute_certificate_authority_path_is_used_as_is(tmp_path: Path) -> None:
    ca_file = tmp_path / "elsewhere" / "ca.crt"
    ca_file.parent.mkdir()
    ca_file.write_bytes(CA)
    (tmp_path / "conf").mkdir()
    path = _write_doc(
        tmp_path / "conf" / "k", _doc({"server": "https://s", "certificate-authority": str(ca_file)}, {})
    )
    assert kubeconfig.load(path).ca_pem == CA


def test_missing_referenced_ca_file_raises_kubeconfig_error(tmp_path: Path) -> None:
    path = _write_doc(
        tmp_path / "k", _doc({"server": "https://s", "certificate-authority": "missing.crt"}, {})
    )
    with pytest.raises(KubeconfigError, match=str(path)):
        kubeconfig.load(path)


def test_insecure_skip_tls_verify_is_reported(tmp_path: Path) -> None:
    path = _write_doc(tmp_path / "k", _doc({"server": "https://s", "insecure-skip-tls-verify": True}, {}))
    creds = kubeconfig.load(path)
    assert creds.insecure is True
    assert creds.ca_pem is None


def test_corrupt_base64_certificate_data_raises_kubeconfig_error(tmp_path: Path) -> None:
    path = _write_doc(tmp_path / "k", _doc({"server": "https://s", "certificate-authority-data": "abc"}, {}))
    with pytest.raises(KubeconfigError):
        kubeconfig.load(path)


def test_binary_garbage_file_raises_kubeconfig_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KubeconfigError):
        kubeconfig.load(path)
