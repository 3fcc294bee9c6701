"""wasmlet.oci, pure logic: references, dockerconfigjson, media types, the store, auth flows.

Registry behaviour is simulated in-process by a ``requests`` transport adapter mounted on the
client's session (no sockets): Docker token auth, Basic challenges, manifests and blobs. The
real registries are exercised by tests/integration/test_oci_registry.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from wasmlet.oci.client import RegistryClient, RegistryOptions
from wasmlet.oci.credentials import Keyring, RegistryAuth, auth_from_dockerconfigjson
from wasmlet.oci.errors import (
    DigestMismatchError,
    ImageNeverPullError,
    InvalidReferenceError,
    NotWasmError,
    PullError,
    http_error_cause,
)
from wasmlet.oci.manifest import (
    CNCF_WASM_CONFIG,
    CNCF_WASM_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    WASM_TO_OCI_CONFIG,
    WASM_TO_OCI_LAYER,
    Descriptor,
    build_module_manifest,
    digest_of,
    manifest_kind,
    select_platform,
    select_wasm_layer,
)
from wasmlet.oci.pull import ensure_module
from wasmlet.oci.reference import Reference, default_pull_policy, parse_reference
from wasmlet.oci.store import ModuleStore, PulledModule
from wasmlet.oci.transport import parse_challenge, request_scope

WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 8
SHA = "sha256:" + "a" * 64

# --- references -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/simpleserver:v1", "127.0.0.1:5000", "simpleserver", "v1", None),
        ("127.0.0.1:5000/simpleserver", "127.0.0.1:5000", "simpleserver", "latest", None),
        ("registry.example.com/team/app@" + SHA, "registry.example.com", "team/app", None, SHA),
        ("registry.example.com/team/app:v2@" + SHA, "registry.example.com", "team/app", "v2", SHA),
        ("hello", "docker.io", "library/hello", "latest", None),
        ("hello:1.0", "docker.io", "library/hello", "1.0", None),
        ("org/hello", "docker.io", "org/hello", "latest", None),
        ("docker.io/hello", "docker.io", "library/hello", "latest", None),
        ("index.docker.io/org/hello:x", "docker.io", "org/hello", "x", None),
        ("localhost/app:v1", "localhost", "app", "v1", None),
        ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", "v1", None),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        ("Registry.Example.com/app", "registry.example.com", "app", "latest", None),
        ("ghcr.io/a.b/c_d/e__f/g--h:V_1.2-rc", "ghcr.io", "a.b/c_d/e__f/g--h", "V_1.2-rc", None),
    ],
)
def test_parse_reference_normalises_like_docker(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert parse_reference(str(ref)) == ref  # the canonical form parses to itself


def test_reference_targets_the_digest_when_pinned_and_docker_hub_api_host() -> None:
    assert parse_reference("app:v1@" + SHA).target == SHA
    assert parse_reference("app:v1").target == "v1"
    assert parse_reference("app").api_host == "index.docker.io"
    assert parse_reference("127.0.0.1:5000/app").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (" app", "whitespace"),
        ("127.0.0.1:5000/App:v1", "lower-case"),
        ("127.0.0.1:5000/app:", "tag"),
        ("127.0.0.1:5000/app:-v1", "tag"),
        ("127.0.0.1:5000/app:" + "t" * 129, "tag"),
        ("127.0.0.1:5000/app@sha256:abc", "digest"),
        ("127.0.0.1:5000/app@md5:" + "a" * 32, "digest"),
        ("127.0.0.1:5000/app@sha256:" + "A" * 64, "digest"),
        ("127.0.0.1:5000/app@", "digest"),
        ("127.0.0.1:5000//app", "repository"),
        ("127.0.0.1:5000/../etc", "repository"),
        ("127.0.0.1:5000/app/", "repository"),
        ("-bad.host:5000/app", "registry"),
        ("host.example/" + "a" * 250, "longer than"),
        ("app:tæg", "tag"),
    ],
)
def test_invalid_reference_is_a_value_error_naming_it(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        parse_reference(text)
    assert isinstance(caught.value, InvalidReferenceError)
    assert caught.value.reason == "InvalidImageName"
    assert repr(text) in str(caught.value)


def test_default_pull_policy_is_always_for_latest_only() -> None:
    assert default_pull_policy(parse_reference("app")) == "Always"
    assert default_pull_policy(parse_reference("app:v1")) == "IfNotPresent"
    assert default_pull_policy(parse_reference("app@" + SHA)) == "IfNotPresent"


# --- dockerconfigjson ---------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_dockerconfigjson_auth_field_is_decoded_at_the_first_colon() -> None:
    config = json.dumps({"auths": {"127.0.0.1:5001": {"auth": _b64("ci:pa:ss")}}})
    auth = auth_from_dockerconfigjson(config, "127.0.0.1:5001")
    assert auth == RegistryAuth(username="ci", password="pa:ss")
    assert "pa:ss" not in repr(auth)


def test_dockerconfigjson_username_and_password_fields_and_bytes_input() -> None:
    config = json.dumps({"auths": {"reg.example": {"username": "u", "password": "p"}}}).encode()
    assert auth_from_dockerconfigjson(config, "reg.example") == RegistryAuth("u", "p")


@pytest.mark.parametrize(
    ("key", "registry", "repository", "matches"),
    [
        ("https://127.0.0.1:5001", "127.0.0.1:5001", "x", True),
        ("https://127.0.0.1:5001/v2/", "127.0.0.1:5001", "x", True),
        ("http://127.0.0.1:5001", "127.0.0.1:5001", "x", True),
        ("127.0.0.1:5001", "127.0.0.1:5000", "x", False),  # the port must match
        ("127.0.0.1", "127.0.0.1:5000", "x", False),
        ("https://index.docker.io/v1/", "docker.io", "library/hello", True),
        ("registry-1.docker.io", "docker.io", "library/hello", True),
        ("*.example.com", "reg.example.com", "x", True),
        ("*.example.com", "a.reg.example.com", "x", False),  # a glob covers one label
        ("reg.example.com/team", "reg.example.com", "team/app", True),
        ("reg.example.com/team", "reg.example.com", "teamx/app", False),
        ("REG.example.com", "reg.example.com", "x", True),
    ],
)
def test_dockerconfigjson_key_matching(key: str, registry: str, repository: str, matches: bool) -> None:
    config = {"auths": {key: {"auth": _b64("u:p")}}}
    found = auth_from_dockerconfigjson(config, registry, repository)
    assert (found is not None) is matches


def test_dockerconfigjson_most_specific_entry_wins() -> None:
    config = {
        "auths": {
            "*.example.com": {"username": "glob", "password": "x"},
            "reg.example.com": {"username": "host", "password": "x"},
            "reg.example.com/team": {"username": "path", "password": "x"},
        }
    }
    assert auth_from_dockerconfigjson(config, "reg.example.com", "team/app") == RegistryAuth("path", "x")
    assert auth_from_dockerconfigjson(config, "reg.example.com", "other/app") == RegistryAuth("host", "x")
    assert auth_from_dockerconfigjson(config, "b.example.com", "app") == RegistryAuth("glob", "x")


def test_dockerconfigjson_tokens_legacy_format_and_errors() -> None:
    tokens = {"r.example": {"registrytoken": "rt", "identitytoken": "it"}}
    assert auth_from_dockerconfigjson({"auths": tokens}, "r.example") == RegistryAuth(
        token="rt", identity_token="it"
    )
    legacy = {"r.example": {"auth": _b64("u:p")}}  # .dockercfg: no "auths" wrapper
    assert auth_from_dockerconfigjson(legacy, "r.example") == RegistryAuth("u", "p")
    assert auth_from_dockerconfigjson({"auths": {}}, "r.example") is None
    with pytest.raises(ValueError, match=r"'r\.example'.*base64"):
        auth_from_dockerconfigjson({"auths": {"r.example": {"auth": "%%%"}}}, "r.example")
    with pytest.raises(ValueError, match="user:password"):
        auth_from_dockerconfigjson({"auths": {"r.example": {"auth": _b64("nocolon")}}}, "r.example")


def test_keyring_uses_the_first_pull_secret_with_a_matching_entry() -> None:
    keyring = Keyring.from_dockerconfigs(
        [
            json.dumps({"auths": {"other.example": {"auth": _b64("a:1")}}}),
            {"auths": {"reg.example": {"auth": _b64("b:2")}}},
            json.dumps({"auths": {"reg.example": {"auth": _b64("c:3")}}}).encode(),
        ]
    )
    assert keyring.lookup("reg.example", "app") == RegistryAuth("b", "2")
    assert keyring.lookup("third.example") == RegistryAuth()
    assert keyring.lookup("third.example").anonymous


def test_malformed_pull_secret_is_a_pull_error_naming_the_image(tmp_path: Path) -> None:
    keyring = Keyring.from_dockerconfigs([{"auths": {"reg.example": {"auth": "!!"}}}])
    with pytest.raises(PullError, match=r"failed to pull reg\.example/app:v1 .*invalid imagePullSecret"):
        ensure_module("reg.example/app:v1", "IfNotPresent", keyring, store=ModuleStore(tmp_path))


def test_registry_options_insecure_and_ca_per_registry(tmp_path: Path) -> None:
    options = RegistryOptions(
        insecure_registries=frozenset({"127.0.0.1:5000"}),
        ca_file=tmp_path / "all.pem",
        ca_files={"127.0.0.1:5001": tmp_path / "ca.crt"},
    )
    assert options.insecure("127.0.0.1:5000")
    assert not options.insecure("127.0.0.1:5001")
    # Not plain HTTP only: loopback is tried over HTTPS first (tests/unit/test_oci_loopback.py).
    assert not RegistryOptions().insecure("127.0.0.1:5000")
    assert options.verify("127.0.0.1:5001") == str(tmp_path / "ca.crt")
    assert options.verify("other.example") == str(tmp_path / "all.pem")
    assert RegistryOptions().verify("other.example") is True


# --- media types ----------------------------------------------------------------------------------


def _descriptor(media_type: str, data: bytes = WASM, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def _manifest(
    layer_type: str, config_type: str = WASM_TO_OCI_CONFIG, media_type: str = OCI_MANIFEST
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _descriptor(config_type, b"{}"),
        "layers": [_descriptor(layer_type)],
    }


@pytest.mark.parametrize(
    ("layer_type", "config_type", "media_type"),
    [
        (WASM_TO_OCI_LAYER, WASM_TO_OCI_CONFIG, OCI_MANIFEST),
        (CNCF_WASM_LAYER, CNCF_WASM_CONFIG, OCI_MANIFEST),
        (WASM_TO_OCI_LAYER, WASM_TO_OCI_CONFIG, DOCKER_MANIFEST),
    ],
)
def test_select_wasm_layer_accepts_both_wasm_media_types(
    layer_type: str, config_type: str, media_type: str
) -> None:
    manifest = _manifest(layer_type, config_type, media_type)
    layer = select_wasm_layer(manifest, reference="r/x:v1", registry="r")
    assert layer == Descriptor(layer_type, digest_of(WASM), len(WASM))


def test_select_wasm_layer_rejects_a_container_image_listing_what_it_found() -> None:
    manifest = _manifest(
        "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.config.v1+json"
    )
    with pytest.raises(NotWasmError) as caught:
        select_wasm_layer(manifest, reference="reg.example/app:v1", registry="reg.example")
    message = str(caught.value)
    assert message.startswith("not a wasm module: reg.example/app:v1 (registry reg.example)")
    assert "media types found: config application/vnd.oci.image.config.v1+json, " in message
    assert "layers application/vnd.oci.image.layer.v1.tar+gzip" in message
    assert caught.value.reason == "ErrImagePull"


def _index(*platforms: dict[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [_descriptor(OCI_MANIFEST, json.dumps(p).encode(), platform=p) for p in platforms],
    }


@pytest.mark.parametrize(
    ("platforms", "chosen"),
    [
        (({"os": "linux", "architecture": "amd64"}, {"os": "wasip1", "architecture": "wasm"}), 1),
        (({"os": "wasi", "architecture": "wasm32"}, {"os": "linux", "architecture": "arm64"}), 0),
        (({"os": "linux", "architecture": "wasm"}, {"os": "wasip1", "architecture": "wasm"}), 1),
        (({"os": "wasip2", "architecture": "wasm"},), 0),
    ],
)
def test_select_platform_prefers_wasip1_wasm(platforms: tuple[dict[str, str], ...], chosen: int) -> None:
    index = _index(*platforms)
    entry = select_platform(index, reference="r/x", registry="r")
    assert entry.platform == platforms[chosen]


def test_select_platform_without_a_wasm_entry_lists_the_platforms() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"}
    )
    with pytest.raises(
        NotWasmError, match=r"not a wasm module: .*platforms found: linux/amd64, linux/arm64/v8"
    ):
        select_platform(index, reference="r/x", registry="r")


def test_manifest_kind_from_media_type_header_or_shape() -> None:
    assert manifest_kind("", {"mediaType": OCI_INDEX}) == "index"
    assert manifest_kind(DOCKER_MANIFEST_LIST + "; charset=utf-8", {}) == "index"
    assert manifest_kind("application/json", {"layers": []}) == "manifest"
    assert manifest_kind("", {"manifests": []}) == "index"
    with pytest.raises(ValueError, match="prettyjws"):
        manifest_kind("application/vnd.docker.distribution.manifest.v1+prettyjws", {"fsLayers": []})


def test_build_module_manifest_wasm_to_oci_and_cncf_are_deterministic() -> None:
    config, config_desc, layer, raw = build_module_manifest(WASM, "wasm-to-oci")
    assert config == b"{}"
    assert (config_desc.media_type, layer.media_type) == (WASM_TO_OCI_CONFIG, WASM_TO_OCI_LAYER)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert "artifactType" not in manifest
    assert manifest["layers"][0]["digest"] == digest_of(WASM)
    assert build_module_manifest(WASM, "wasm-to-oci")[3] == raw

    config, config_desc, layer, raw = build_module_manifest(WASM, "cncf", {"org.example/a": "b"})
    assert json.loads(config) == {"architecture": "wasm", "os": "wasip1", "layerDigests": [digest_of(WASM)]}
    assert (config_desc.media_type, layer.media_type) == (CNCF_WASM_CONFIG, CNCF_WASM_LAYER)
    assert json.loads(raw)["annotations"] == {"org.example/a": "b"}
    assert config_desc.digest == digest_of(config)


def test_build_module_manifest_rejects_non_wasm_and_unknown_types() -> None:
    with pytest.raises(ValueError, match="not a wasm module"):
        build_module_manifest(b"#!/bin/sh\n")
    with pytest.raises(ValueError, match="media_type"):
        build_module_manifest(WASM, "docker")


def test_http_error_cause_reads_the_registry_error_json() -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()
    assert http_error_cause(404, body) == "manifest unknown (HTTP 404)"
    body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).encode()
    assert http_error_cause(401, body) == "unauthorized: authentication required (HTTP 401)"
    assert http_error_cause(404, b"", "blob") == "blob unknown (HTTP 404)"
    assert http_error_cause(500, b"<html>") == "registry error (HTTP 500)"


def test_parse_challenge_and_request_scope() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert request_scope("https://r/v2/a/b/manifests/v1", "HEAD") == "repository:a/b:pull"
    assert request_scope("https://r/v2/a/blobs/uploads/?x=1", "POST") == "repository:a:pull,push"
    assert request_scope("https://r/v2/", "GET") == ""


# --- the store ----------------------------------------------------------------------------------


def test_store_paths_follow_krustlet_with_filesystem_safe_names(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    assert store.entry_dir(parse_reference("127.0.0.1:5000/simpleserver:v1")) == (
        tmp_path / "127.0.0.1_5000" / "simpleserver" / "v1"
    )
    assert (
        store.entry_dir(parse_reference("hello")) == tmp_path / "docker.io" / "library" / "hello" / "latest"
    )
    assert store.entry_dir(parse_reference("r.example/a/b@" + SHA)) == (
        tmp_path / "r.example" / "a" / "b" / ("sha256_" + "a" * 64)
    )


def _chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_store_write_verifies_then_commits_and_lookup_reads_it(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    ref = parse_reference("127.0.0.1:5000/app:v1")
    assert store.lookup(ref) is None
    layer = Descriptor(WASM_TO_OCI_LAYER, digest_of(WASM), len(WASM))
    with store.locked(ref):
        written = store.write(ref, SHA, layer, _chunks(WASM))
    assert written.pulled is True
    assert written.path.read_bytes() == WASM
    assert (written.path.parent / "digest.txt").read_text() == SHA + "\n"
    assert store.lookup(ref) == PulledModule(written.path, SHA, len(WASM), pulled=False)


@pytest.mark.parametrize(
    "served",
    [WASM[:-1] + b"!", WASM + b"extra", WASM[:-10]],
    ids=["corrupt", "too long", "truncated"],
)
def test_store_write_rejects_bad_bytes_and_keeps_the_old_module(tmp_path: Path, served: bytes) -> None:
    store = ModuleStore(tmp_path)
    ref = parse_reference("127.0.0.1:5000/app:v1")
    old = b"\0asm\x01\0\0\0old"
    with store.locked(ref):
        store.write(ref, SHA, Descriptor(WASM_TO_OCI_LAYER, digest_of(old), len(old)), [old])
        with pytest.raises(DigestMismatchError, match=r"127.0.0.1:5000/app:v1 from registry 127.0.0.1:5000"):
            store.write(
                ref,
                "sha256:" + "b" * 64,
                Descriptor(WASM_TO_OCI_LAYER, digest_of(WASM), len(WASM)),
                _chunks(served),
            )
    entry = store.entry_dir(ref)
    assert sorted(p.name for p in entry.iterdir()) == [".lock", "digest.txt", "module.wasm"]
    assert store.lookup(ref) == PulledModule(entry / "module.wasm", SHA, len(old), pulled=False)


def test_store_entry_without_digest_txt_or_with_another_digest_is_absent(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    ref = parse_reference("r.example/app@" + SHA)
    entry = store.entry_dir(ref)
    entry.mkdir(parents=True)
    (entry / "module.wasm").write_bytes(WASM)  # a crash before the commit record
    assert store.lookup(ref) is None
    (entry / "digest.txt").write_text("sha256:" + "b" * 64 + "\n")
    assert store.lookup(ref) is None
    (entry / "digest.txt").write_text(SHA + "\n")
    assert store.lookup(ref) is not None


def test_store_write_removes_leftovers_of_a_killed_pull(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    ref = parse_reference("r.example/app:v1")
    entry = store.entry_dir(ref)
    entry.mkdir(parents=True)
    (entry / ".module.wasm.abc123").write_bytes(b"half")
    with store.locked(ref):
        store.write(ref, SHA, Descriptor(WASM_TO_OCI_LAYER, digest_of(WASM), len(WASM)), [WASM])
    assert not list(entry.glob(".module.wasm.*"))


def test_cached_lookup_is_cheap(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    ref = parse_reference("r.example/app:v1")
    with store.locked(ref):
        store.write(ref, SHA, Descriptor(WASM_TO_OCI_LAYER, digest_of(WASM), len(WASM)), [WASM])
    started = time.perf_counter()
    for _round in range(1000):
        assert ensure_module(ref, "IfNotPresent", store=store).pulled is False
    per_call = (time.perf_counter() - started) / 1000
    assert per_call < 0.001, f"{per_call * 1e6:.0f} µs per cached lookup"


def test_never_policy_without_the_module_says_so(tmp_path: Path) -> None:
    with pytest.raises(ImageNeverPullError) as caught:
        ensure_module("127.0.0.1:5000/app:v1", "Never", store=ModuleStore(tmp_path))
    assert caught.value.reason == "ErrImageNeverPull"
    assert 'container image "127.0.0.1:5000/app:v1" is not present with pull policy of Never' in str(
        caught.value
    )
    assert "registry 127.0.0.1:5000" in str(caught.value)
    with pytest.raises(ValueError, match="imagePullPolicy"):
        ensure_module("app", "Sometimes", store=ModuleStore(tmp_path))


# --- a fake registry, in-process ------------------------------------------------------------------

REGISTRY = "registry.test"
AUTH_HOST = "auth.test"


class FakeRegistry(requests.adapters.BaseAdapter):
    """Distribution's read API with no auth, Basic auth or Docker token auth, and a token service."""

    def __init__(
        self, auth: Literal["none", "basic", "bearer"] = "none", realm: str = f"https://{AUTH_HOST}/token"
    ):
        super().__init__()
        self.auth = auth
        self.realm = realm
        self.credentials = ("ci", "secret")
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.token_requests: list[dict[str, list[str]]] = []

    # content

    def put_blob(self, data: bytes) -> str:
        self.blobs[digest_of(data)] = data
        return digest_of(data)

    def put_manifest(self, repository: str, tag: str, manifest: Mapping[str, Any]) -> str:
        raw = json.dumps(manifest).encode()
        media_type = str(manifest.get("mediaType", OCI_MANIFEST))
        self.manifests[(repository, tag)] = self.manifests[(repository, digest_of(raw))] = (raw, media_type)
        return digest_of(raw)

    def put_module(self, repository: str, tag: str, wasm: bytes = WASM) -> str:
        config, _config, _layer, raw = build_module_manifest(wasm)
        self.put_blob(config)
        self.put_blob(wasm)
        return self.put_manifest(repository, tag, json.loads(raw))

    # transport

    def close(self) -> None:
        pass

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        method, url = request.method or "GET", request.url or ""
        self.log.append((method, url))
        parts = urlsplit(url)
        if parts.netloc == AUTH_HOST:
            return self._token(request, parts.query)
        assert parts.netloc == REGISTRY, url
        denied = self._denied(request, parts.path, method)
        if denied is not None:
            return denied
        repository, kind, target = parts.path.removeprefix("/v2/").rsplit("/", 2)
        if kind == "manifests" and (repository, target) in self.manifests:
            raw, media_type = self.manifests[(repository, target)]
            return _response(
                request, 200, raw, {"Content-Type": media_type, "Docker-Content-Digest": digest_of(raw)}
            )
        if kind == "blobs" and target in self.blobs:
            return _response(request, 200, self.blobs[target])
        code = "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN"
        return _error(request, 404, code, f"{kind[:-1]} unknown")

    def _denied(self, request: requests.PreparedRequest, path: str, method: str) -> requests.Response | None:
        given = request.headers.get("Authorization")
        if self.auth == "basic":
            if given == "Basic " + _b64(":".join(self.credentials)):
                return None
            return _error(
                request,
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": 'Basic realm="fake"'},
            )
        if self.auth == "bearer":
            needed = request_scope(f"https://{REGISTRY}{path}", method)
            granted = (given or "").removeprefix("Bearer token:").split(" ")
            if (
                given
                and given.startswith("Bearer token:")
                and (needed in granted or f"{needed},push" in granted)
            ):
                return None
            challenge = f'Bearer realm="{self.realm}",service="{REGISTRY}",scope="{needed}"'
            return _error(
                request, 401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}
            )
        return None

    def _token(self, request: requests.PreparedRequest, query: str) -> requests.Response:
        params = parse_qs(query)
        self.token_requests.append(params)
        if request.headers.get("Authorization") != "Basic " + _b64(":".join(self.credentials)):
            return _response(request, 401, b'{"details":"incorrect username or password"}')
        assert params["service"] == [REGISTRY]
        token = "token:" + " ".join(params["scope"])
        return _response(request, 200, json.dumps({"token": token, "expires_in": 300}).encode())


def _response(
    request: requests.PreparedRequest,
    status: int,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict(headers or {})
    response._content = b"" if request.method == "HEAD" else body
    response._content_consumed = True  # type: ignore[attr-defined]
    response.url = request.url or ""
    response.request = request
    return response


def _error(
    request: requests.PreparedRequest,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return _response(request, status, body, headers)


def _client(fake: FakeRegistry, auth: RegistryAuth | None = None) -> RegistryClient:
    client = RegistryClient(REGISTRY, auth)
    client.session.mount("https://", fake)
    client.session.mount("http://", fake)
    return client


def _ref(tag: str = "v1") -> Reference:
    return parse_reference(f"{REGISTRY}/team/app:{tag}")


def test_bearer_token_flow_fetches_a_token_per_scope_with_basic_credentials(tmp_path: Path) -> None:
    fake = FakeRegistry("bearer")
    digest = fake.put_module("team/app", "v1")
    with _client(fake, RegistryAuth("ci", "secret")) as client:
        module = ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
        assert (module.digest, module.pulled) == (digest, True)
        assert module.path.read_bytes() == WASM
        # one challenge, one token for the pull scope, reused for the blob
        assert fake.token_requests == [{"service": [REGISTRY], "scope": ["repository:team/app:pull"]}]
        assert sum(1 for method, url in fake.log if AUTH_HOST in url) == 1
        unauthenticated = [url for method, url in fake.log if "manifests" in url]
        assert len(unauthenticated) == 2  # the challenged GET and its retry; the blob went straight through
        assert client.resolve(_ref()) == digest
        assert len(fake.token_requests) == 1


def test_bearer_token_refused_fails_at_once_naming_registry_and_user(tmp_path: Path) -> None:
    fake = FakeRegistry("bearer")
    fake.put_module("team/app", "v1")
    started = time.monotonic()
    with _client(fake, RegistryAuth("ci", "wrong")) as client, pytest.raises(PullError) as caught:
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert time.monotonic() - started < 1
    message = str(caught.value)
    assert caught.value.reason == "ErrImagePull"
    assert message.startswith(f"failed to pull {REGISTRY}/team/app:v1 from registry {REGISTRY}: unauthorized")
    assert "'ci'" in message
    assert len(fake.log) == 2  # the manifest GET and the token request: no retries
    assert not (tmp_path / REGISTRY).exists()


def test_bearer_challenge_with_a_non_url_realm_fails_without_connecting(tmp_path: Path) -> None:
    fake = FakeRegistry("bearer", realm="registry.test-realm")
    fake.put_module("team/app", "v1")
    with _client(fake, RegistryAuth("ci", "secret")) as client, pytest.raises(PullError, match="realm"):
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert len(fake.log) == 1


def test_basic_challenge_without_credentials_fails_on_the_first_answer(tmp_path: Path) -> None:
    fake = FakeRegistry("basic")
    fake.put_module("team/app", "v1")
    with _client(fake) as client, pytest.raises(PullError) as caught:
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert "unauthorized: authentication required" in str(caught.value)
    assert "imagePullSecret" in str(caught.value)
    assert len(fake.log) == 1


def test_basic_auth_is_sent_preemptively_after_the_first_challenge(tmp_path: Path) -> None:
    fake = FakeRegistry("basic")
    fake.put_module("team/app", "v1")
    with _client(fake, RegistryAuth("ci", "secret")) as client:
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert len(fake.log) == 3  # manifest (401), manifest, blob


def test_registry_token_is_sent_as_bearer_without_a_token_request(tmp_path: Path) -> None:
    fake = FakeRegistry("bearer")
    fake.put_module("team/app", "v1")
    token = RegistryAuth(token="token:repository:team/app:pull")
    with _client(fake, token) as client:
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert fake.token_requests == []
    assert len(fake.log) == 2


def test_always_pulls_again_only_when_the_digest_changes(tmp_path: Path) -> None:
    fake = FakeRegistry()
    store = ModuleStore(tmp_path)
    first = fake.put_module("team/app", "v1")
    with _client(fake) as client:
        assert ensure_module(_ref(), "Always", store=store, client=client).pulled is True
        fake.log.clear()
        again = ensure_module(_ref(), "Always", store=store, client=client)
        assert (again.pulled, again.digest) == (False, first)
        assert fake.log == [("HEAD", f"https://{REGISTRY}/v2/team/app/manifests/v1")]
        newer = WASM + b"\0"
        second = fake.put_module("team/app", "v1", newer)
        updated = ensure_module(_ref(), "Always", store=store, client=client)
        assert (updated.pulled, updated.digest) == (True, second)
        assert updated.path.read_bytes() == newer
        fake.log.clear()
        assert ensure_module(_ref(), "IfNotPresent", store=store, client=client).digest == second
        assert fake.log == []


def test_index_with_a_wasm_platform_is_followed_and_its_digest_stored(tmp_path: Path) -> None:
    fake = FakeRegistry()
    wasm_manifest = fake.put_module("team/app", "wasm-only")
    linux = fake.put_manifest("team/app", "linux", _manifest("application/vnd.oci.image.layer.v1.tar+gzip"))
    raw_wasm = fake.manifests[("team/app", wasm_manifest)][0]
    raw_linux = fake.manifests[("team/app", linux)][0]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**_descriptor(OCI_MANIFEST, raw_linux), "platform": {"os": "linux", "architecture": "amd64"}},
            {**_descriptor(OCI_MANIFEST, raw_wasm), "platform": {"os": "wasip1", "architecture": "wasm"}},
        ],
    }
    index_digest = fake.put_manifest("team/app", "v1", index)
    with _client(fake) as client:
        module = ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert module.digest == index_digest
    assert module.path.read_bytes() == WASM


def test_concurrent_pulls_of_one_image_download_it_once(tmp_path: Path) -> None:
    fake = FakeRegistry()
    digest = fake.put_module("team/app", "v1")
    store = ModuleStore(tmp_path)

    def pull(_worker: int) -> PulledModule:
        with _client(fake) as client:  # a client per thread: requests sessions are not shared
            return ensure_module(_ref(), "IfNotPresent", store=store, client=client)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(pull, range(8)))
    assert {result.digest for result in results} == {digest}
    assert sum(result.pulled for result in results) == 1
    assert sum(1 for method, url in fake.log if "/blobs/" in url) == 1
    assert store.lookup(_ref()) is not None


def test_pull_by_digest_verifies_the_manifest_bytes(tmp_path: Path) -> None:
    fake = FakeRegistry()
    digest = fake.put_module("team/app", "v1")
    raw, media_type = fake.manifests[("team/app", digest)]
    fake.manifests[("team/app", digest)] = (raw + b" ", media_type)  # served content no longer matches
    ref = parse_reference(f"{REGISTRY}/team/app@{digest}")
    with _client(fake) as client, pytest.raises(DigestMismatchError, match="manifest digest mismatch"):
        ensure_module(ref, "IfNotPresent", store=ModuleStore(tmp_path), client=client)


def test_tampered_layer_is_never_stored(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.put_module("team/app", "v1")
    fake.blobs[digest_of(WASM)] = WASM[:-1] + b"X"
    store = ModuleStore(tmp_path)
    with _client(fake) as client, pytest.raises(DigestMismatchError, match="layer digest mismatch"):
        ensure_module(_ref(), "IfNotPresent", store=store, client=client)
    assert store.lookup(_ref()) is None
    assert not (store.entry_dir(_ref()) / "module.wasm").exists()


def test_missing_tag_is_manifest_unknown(tmp_path: Path) -> None:
    with _client(FakeRegistry()) as client, pytest.raises(PullError) as caught:
        ensure_module(_ref("nope"), "IfNotPresent", store=ModuleStore(tmp_path), client=client)
    assert str(caught.value) == (
        f"failed to pull {REGISTRY}/team/app:nope from registry {REGISTRY}: manifest unknown (HTTP 404)"
    )
    assert not (tmp_path / REGISTRY).exists()  # a failed pull leaves no directories behind


def test_missing_ca_file_is_a_pull_error(tmp_path: Path) -> None:
    options = RegistryOptions(ca_file=tmp_path / "missing-ca.crt")
    with pytest.raises(PullError, match=r"tls: cannot use the CA file .*missing-ca\.crt"):
        ensure_module(f"{REGISTRY}/team/app:v1", "IfNotPresent", options=options, store=ModuleStore(tmp_path))


def test_client_refuses_a_reference_on_another_registry(tmp_path: Path) -> None:
    with _client(FakeRegistry()) as client, pytest.raises(ValueError, match="not on registry"):
        ensure_module("other.test/app:v1", "Always", store=ModuleStore(tmp_path), client=client)


def test_store_has_and_ensure_delegate_to_ensure_module(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.put_module("team/app", "v1")
    store = ModuleStore(tmp_path)
    image = f"{REGISTRY}/team/app:v1"
    assert not store.has(image)
    with _client(fake) as client:
        assert store.ensure(image, "IfNotPresent", client=client).pulled is True
    assert store.has(image)
    assert store.lookup(image) == store.ensure(image, "Never")


def test_container_image_is_not_wasm(tmp_path: Path) -> None:
    fake = FakeRegistry()
    fake.put_manifest("team/app", "v1", _manifest("application/vnd.oci.image.layer.v1.tar+gzip"))
    with _client(fake) as client, pytest.raises(NotWasmError, match="media types found"):
        ensure_module(_ref(), "IfNotPresent", store=ModuleStore(tmp_path), client=client)


def test_digest_helper_matches_hashlib() -> None:
    assert digest_of(b"x") == "sha256:" + hashlib.sha256(b"x").hexdigest()
