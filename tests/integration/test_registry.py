"""The real registry (CNCF Distribution) run by the registry role, driven with oras-py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import oras.client
import pytest
import requests
from helpers import Registry, unique

pytestmark = pytest.mark.integration


def _blob(tmp_path: Path, size: int = 64 * 1024) -> Path:
    path = tmp_path / "module.wasm"
    path.write_bytes(b"\0asm\x01\0\0\0" + bytes(range(256)) * (size // 256))
    return path


def test_blob_round_trips_through_the_registry(registry: Registry, tmp_path: Path) -> None:
    src = _blob(tmp_path)
    target = f"{registry.host}/{unique('roundtrip')}/module:v1"
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(files=[str(src)], target=target, disable_path_validation=True)
    out = tmp_path / "out"
    pulled = client.pull(target=target, outdir=str(out))
    assert len(pulled) == 1
    assert (
        hashlib.sha256(Path(pulled[0]).read_bytes()).hexdigest()
        == hashlib.sha256(src.read_bytes()).hexdigest()
    )


def test_basic_auth_registry_refuses_anonymous_push(secure_registry: Registry) -> None:
    # Raw requests, as any client's first step of a push: start a blob upload, put a manifest.
    # (oras-py's anonymous path retries for minutes on a Basic challenge, so it is not used here.)
    repo = unique("anon")
    base = f"https://{secure_registry.host}/v2/{repo}"
    ca = str(secure_registry.ca)
    upload = requests.post(f"{base}/blobs/uploads/", verify=ca, timeout=10)
    assert upload.status_code == 401
    assert upload.headers["WWW-Authenticate"].startswith("Basic ")
    manifest = requests.put(
        f"{base}/manifests/v1",
        data=b"{}",
        verify=ca,
        timeout=10,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert manifest.status_code == 401
    # Wrong credentials are refused as well; nothing reached the registry.
    wrong = requests.post(
        f"{base}/blobs/uploads/",
        verify=ca,
        timeout=10,
        auth=(secure_registry.username or "", "not-the-password"),
    )
    assert wrong.status_code == 401
    tags = requests.get(
        f"{base}/tags/list",
        verify=ca,
        timeout=10,
        auth=(secure_registry.username or "", secure_registry.password or ""),
    )
    assert tags.status_code == 404


def test_basic_auth_registry_with_custom_ca_accepts_authenticated_push(
    secure_registry: Registry, tmp_path: Path
) -> None:
    src = _blob(tmp_path)
    target = f"{secure_registry.host}/{unique('authed')}/module:v1"
    client = oras.client.OrasClient(
        hostname=secure_registry.host, tls_verify=str(secure_registry.ca), auth_backend="basic"
    )
    client.login(
        username=secure_registry.username or "",
        password=secure_registry.password or "",
        hostname=secure_registry.host,
        tls_verify=str(secure_registry.ca),
    )
    client.push(files=[str(src)], target=target, disable_path_validation=True)
    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert Path(pulled[0]).read_bytes() == src.read_bytes()


def test_tls_registry_is_not_trusted_without_its_ca(secure_registry: Registry) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{secure_registry.host}/v2/", timeout=10)
