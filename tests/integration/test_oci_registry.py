"""wasmlet.oci against the real registries (CNCF Distribution, run by the registry role).

``registry``: plain HTTP at 127.0.0.1:5000 (listed as insecure, or not: it is on loopback).
``secure_registry``: TLS with its own CA and basic auth at 127.0.0.1:5001. Failures must be fast:
no retry loops.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
from helpers import Registry, Step, run_modules, task_ok, unique

from wasmlet.oci.client import RegistryClient, RegistryOptions
from wasmlet.oci.credentials import RegistryAuth, auth_from_dockerconfigjson
from wasmlet.oci.errors import NotWasmError, PullError, PushError
from wasmlet.oci.manifest import (
    CNCF_WASM_CONFIG,
    CNCF_WASM_LAYER,
    OCI_INDEX,
    OCI_MANIFEST,
    WASM_TO_OCI_CONFIG,
    WASM_TO_OCI_LAYER,
    build_module_manifest,
)
from wasmlet.oci.pull import ensure_module
from wasmlet.oci.push import push_module
from wasmlet.oci.reference import parse_reference
from wasmlet.oci.store import ModuleStore

pytestmark = pytest.mark.integration

FAST = 5.0  # seconds: a refused pull must fail well within this


def _wasm(tmp_path: Path, payload: bytes = b"", name: str = "module.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\0asm\x01\0\0\0" + bytes(range(256)) * 64 + payload)
    return path


@pytest.fixture
def plain(registry: Registry) -> RegistryOptions:
    return RegistryOptions(insecure_registries=frozenset({registry.host}), timeout=10)


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    return ModuleStore(tmp_path / "store")


def _dockerconfigjson(secure: Registry, key: str | None = None) -> bytes:
    auth = base64.b64encode(f"{secure.username}:{secure.password}".encode()).decode()
    return json.dumps({"auths": {key or f"https://{secure.host}": {"auth": auth}}}).encode()


def _secure_options(secure: Registry) -> RegistryOptions:
    assert secure.ca is not None
    return RegistryOptions(ca_files={secure.host: secure.ca}, timeout=10)


class _NoNetwork(requests.adapters.BaseAdapter):
    """Mounted on a client's session: any request is a test failure."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise AssertionError(f"network used: {request.method} {request.url}")

    def close(self) -> None:
        pass


@pytest.fixture
def offline_client(registry: Registry, plain: RegistryOptions) -> Iterator[RegistryClient]:
    client = RegistryClient.for_registry(registry.host, options=plain)
    client.session.mount("http://", _NoNetwork())
    client.session.mount("https://", _NoNetwork())
    with client:
        yield client


@pytest.fixture
def failure_timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    timings: dict[str, float] = {}
    yield timings
    for what, seconds in timings.items():
        print(f"{request.node.name}: {what} failed in {seconds * 1000:.0f} ms")


# --- pull and push on the plain registry ----------------------------------------------------------


def test_push_wasm_to_oci_then_pull_gives_identical_bytes_and_a_cached_second_pull(
    registry: Registry,
    plain: RegistryOptions,
    store: ModuleStore,
    offline_client: RegistryClient,
    tmp_path: Path,
) -> None:
    src = _wasm(tmp_path)
    ref = f"{registry.host}/{unique('w2o')}/simpleserver:v1"
    pushed = push_module(ref, src, "wasm-to-oci", options=plain)
    assert pushed.uploaded and pushed.manifest_uploaded and len(pushed.blobs_uploaded) == 2

    module = ensure_module(ref, "IfNotPresent", options=plain, store=store)
    assert module.pulled is True
    assert module.path.read_bytes() == src.read_bytes()
    assert module.size == src.stat().st_size
    assert module.digest == pushed.digest
    assert (module.path.parent / "digest.txt").read_text().strip() == pushed.digest
    assert module.path == store.entry_dir(parse_reference(ref)) / "module.wasm"
    assert module.path.parent.parent.parent.parent.name == "127.0.0.1_5000"

    cached = ensure_module(ref, "IfNotPresent", store=store, client=offline_client)
    assert (cached.pulled, cached.digest, cached.path) == (False, pushed.digest, module.path)
    assert ensure_module(ref, "Never", store=store, client=offline_client).digest == pushed.digest

    with RegistryClient.for_registry(registry.host, options=plain) as client:
        manifest = client.get_manifest(parse_reference(ref))
    assert manifest.digest == pushed.digest
    assert manifest.data["config"]["mediaType"] == WASM_TO_OCI_CONFIG
    assert manifest.data["layers"][0]["mediaType"] == WASM_TO_OCI_LAYER


def test_always_pulls_again_only_when_the_tag_moves(
    registry: Registry, plain: RegistryOptions, store: ModuleStore, tmp_path: Path
) -> None:
    ref = f"{registry.host}/{unique('always')}/app:v1"
    first = push_module(ref, _wasm(tmp_path, b"one", "one.wasm"), options=plain)
    assert ensure_module(ref, "Always", options=plain, store=store).pulled is True

    unchanged = ensure_module(ref, "Always", options=plain, store=store)
    assert (unchanged.pulled, unchanged.digest) == (False, first.digest)

    second_src = _wasm(tmp_path, b"two", "two.wasm")
    second = push_module(ref, second_src, options=plain)
    assert second.digest != first.digest
    moved = ensure_module(ref, "Always", options=plain, store=store)
    assert (moved.pulled, moved.digest) == (True, second.digest)
    assert moved.path.read_bytes() == second_src.read_bytes()
    assert ensure_module(ref, "Always", options=plain, store=store).pulled is False


def test_cncf_wasm_artifact_pulls(
    registry: Registry, plain: RegistryOptions, store: ModuleStore, tmp_path: Path
) -> None:
    src = _wasm(tmp_path, b"cncf")
    ref = f"{registry.host}/{unique('cncf')}/app:v1"
    pushed = push_module(ref, src, "cncf", options=plain)
    with RegistryClient.for_registry(registry.host, options=plain) as client:
        manifest = client.get_manifest(parse_reference(ref))
        config_blob = b"".join(
            client.blob_chunks(
                parse_reference(ref),
                build_module_manifest(src.read_bytes(), "cncf")[1],
            )
        )
    assert manifest.data["config"]["mediaType"] == CNCF_WASM_CONFIG
    assert manifest.data["layers"][0]["mediaType"] == CNCF_WASM_LAYER
    assert json.loads(config_blob)["layerDigests"] == [manifest.data["layers"][0]["digest"]]

    module = ensure_module(ref, "IfNotPresent", options=plain, store=store)
    assert (module.pulled, module.digest) == (True, pushed.digest)
    assert module.path.read_bytes() == src.read_bytes()


def test_push_is_idempotent_and_skips_blobs_the_registry_has(
    registry: Registry, plain: RegistryOptions, tmp_path: Path
) -> None:
    src = _wasm(tmp_path, b"idem")
    repo = f"{registry.host}/{unique('idem')}/app"
    first = push_module(f"{repo}:v1", src, options=plain)
    assert first.uploaded

    again = push_module(f"{repo}:v1", src, options=plain)
    assert (again.uploaded, again.blobs_uploaded, again.manifest_uploaded) == (False, (), False)
    assert again.digest == first.digest

    other_tag = push_module(f"{repo}:v2", src, options=plain)
    assert (other_tag.blobs_uploaded, other_tag.manifest_uploaded) == ((), True)
    assert other_tag.digest == first.digest


def _push_container_image(client: RegistryClient, ref: str) -> None:
    """An ordinary container image: an OCI image config and one tar+gzip layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    target = parse_reference(ref)
    layer, _uploaded = client.push_blob(
        target, gzip.compress(buffer.getvalue(), mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    config_descriptor, _uploaded = client.push_blob(
        target, config.encode(), "application/vnd.oci.image.config.v1+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [layer.to_json()],
    }
    client.push_manifest(target, json.dumps(manifest).encode())


def test_container_image_is_not_a_wasm_module(
    registry: Registry, plain: RegistryOptions, store: ModuleStore
) -> None:
    ref = f"{registry.host}/{unique('container')}/app:v1"
    with RegistryClient.for_registry(registry.host, options=plain) as client:
        _push_container_image(client, ref)
    with pytest.raises(NotWasmError) as caught:
        ensure_module(ref, "IfNotPresent", options=plain, store=store)
    message = str(caught.value)
    assert message.startswith(f"not a wasm module: {ref} (registry {registry.host})")
    assert "media types found: config application/vnd.oci.image.config.v1+json" in message
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in message
    assert caught.value.reason == "ErrImagePull"
    assert store.lookup(parse_reference(ref)) is None


def test_image_index_pulls_its_wasm_entry_and_rejects_one_without(
    registry: Registry, plain: RegistryOptions, store: ModuleStore, tmp_path: Path
) -> None:
    repo = f"{registry.host}/{unique('index')}/app"
    src = _wasm(tmp_path, b"index")
    wasm_manifest = push_module(f"{repo}:wasm", src, options=plain)
    with RegistryClient.for_registry(registry.host, options=plain) as client:
        _push_container_image(client, f"{repo}:linux")
        linux = client.get_manifest(parse_reference(f"{repo}:linux"))
        wasm = client.get_manifest(parse_reference(f"{repo}:wasm"))
        assert wasm.digest == wasm_manifest.digest

        def entry(raw: bytes, digest: str, os: str, arch: str) -> dict[str, Any]:
            return {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(raw),
                "platform": {"os": os, "architecture": arch},
            }

        both: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                entry(linux.raw, linux.digest, "linux", "amd64"),
                entry(wasm.raw, wasm.digest, "wasip1", "wasm"),
            ],
        }
        index_digest, _uploaded = client.push_manifest(
            parse_reference(f"{repo}:v1"), json.dumps(both).encode(), OCI_INDEX
        )
        linux_only = {**both, "manifests": both["manifests"][:1]}
        client.push_manifest(
            parse_reference(f"{repo}:linux-only"), json.dumps(linux_only).encode(), OCI_INDEX
        )

    module = ensure_module(f"{repo}:v1", "IfNotPresent", options=plain, store=store)
    assert (module.digest, module.path.read_bytes()) == (index_digest, src.read_bytes())
    with pytest.raises(NotWasmError, match="platforms found: linux/amd64"):
        ensure_module(f"{repo}:linux-only", "IfNotPresent", options=plain, store=store)


def test_pull_by_digest(registry: Registry, store: ModuleStore, tmp_path: Path) -> None:
    repo = f"{registry.host}/{unique('bydigest')}/app"
    insecure = {registry.host}  # the convenience form of options=RegistryOptions(insecure_registries=...)
    pushed = push_module(f"{repo}:v1", _wasm(tmp_path), insecure_registries=insecure)
    module = ensure_module(
        f"{repo}@{pushed.digest}", "IfNotPresent", store=store, insecure_registries=insecure
    )
    assert module.digest == pushed.digest
    assert module.path.parent.name == pushed.digest.replace(":", "_")


# --- failures: fast and clear -------------------------------------------------------------------


def test_missing_tag_fails_fast_with_manifest_unknown(
    registry: Registry,
    plain: RegistryOptions,
    store: ModuleStore,
    tmp_path: Path,
    failure_timings: dict[str, float],
) -> None:
    repo = f"{registry.host}/{unique('missing')}/app"
    push_module(f"{repo}:v1", _wasm(tmp_path), options=plain)
    for ref in (f"{repo}:nope", f"{registry.host}/{unique('norepo')}/app:v1"):
        started = time.monotonic()
        with pytest.raises(PullError) as caught:
            ensure_module(ref, "IfNotPresent", options=plain, store=store)
        failure_timings[ref] = elapsed = time.monotonic() - started
        assert elapsed < FAST
        message = str(caught.value)
        assert caught.value.reason == "ErrImagePull"
        assert message.startswith(f"failed to pull {ref} from registry {registry.host}: ")
        assert "manifest unknown" in message or "name unknown" in message
        assert "HTTP 404" in message
    assert not (store.root / "127.0.0.1_5000").exists()


def test_secure_registry_with_dockerconfigjson_and_its_ca(
    secure_registry: Registry, store: ModuleStore, tmp_path: Path
) -> None:
    options = _secure_options(secure_registry)
    auth = auth_from_dockerconfigjson(_dockerconfigjson(secure_registry), secure_registry.host)
    assert auth is not None and auth.username == secure_registry.username
    src = _wasm(tmp_path, b"secure")
    ref = f"{secure_registry.host}/{unique('secure')}/app:v1"
    pushed = push_module(ref, src, auth=auth, options=options)
    assert pushed.uploaded

    module = ensure_module(ref, "Always", auth=auth, options=options, store=store)
    assert (module.pulled, module.digest) == (True, pushed.digest)
    assert module.path.read_bytes() == src.read_bytes()
    assert ensure_module(ref, "Always", auth=auth, options=options, store=store).pulled is False
    assert push_module(ref, src, auth=auth, options=options).uploaded is False


@pytest.mark.parametrize(
    "auth",
    [None, RegistryAuth("wasmlet-ci", "not-the-password")],
    ids=["anonymous", "wrong-password"],
)
def test_secure_registry_refuses_without_valid_credentials_fast(
    secure_registry: Registry,
    store: ModuleStore,
    tmp_path: Path,
    auth: RegistryAuth | None,
    failure_timings: dict[str, float],
) -> None:
    options = _secure_options(secure_registry)
    good = RegistryAuth(secure_registry.username, secure_registry.password)
    ref = f"{secure_registry.host}/{unique('refused')}/app:v1"
    push_module(ref, _wasm(tmp_path), auth=good, options=options)

    started = time.monotonic()
    with pytest.raises(PullError) as caught:
        ensure_module(ref, "IfNotPresent", auth=auth, options=options, store=store)
    failure_timings["pull"] = elapsed = time.monotonic() - started
    assert elapsed < FAST
    message = str(caught.value)
    assert message.startswith(f"failed to pull {ref} from registry {secure_registry.host}: unauthorized")
    assert caught.value.reason == "ErrImagePull"

    started = time.monotonic()
    with pytest.raises(PushError, match="unauthorized"):  # a push is refused just as fast
        push_module(ref, _wasm(tmp_path, b"x", "x.wasm"), auth=auth, options=options)
    failure_timings["push"] = time.monotonic() - started
    assert failure_timings["push"] < FAST


def test_secure_registry_without_its_ca_is_a_certificate_error(
    secure_registry: Registry, store: ModuleStore, failure_timings: dict[str, float]
) -> None:
    auth = RegistryAuth(secure_registry.username, secure_registry.password)
    ref = f"{secure_registry.host}/{unique('noca')}/app:v1"
    started = time.monotonic()
    with pytest.raises(PullError) as caught:
        ensure_module(ref, "IfNotPresent", auth=auth, options=RegistryOptions(timeout=10), store=store)
    failure_timings["pull"] = elapsed = time.monotonic() - started
    assert elapsed < FAST
    message = str(caught.value)
    assert "x509: certificate signed by unknown authority" in message
    assert f"registry {secure_registry.host}" in message
    assert "plain HTTP" not in message  # on loopback, but a TLS server: never downgraded


# --- plain HTTP: a loopback registry needs no flag, any other does ---------------------------------


def test_plain_loopback_registry_needs_no_flag(
    registry: Registry, store: ModuleStore, tmp_path: Path
) -> None:
    """Nothing listed as insecure: HTTPS is tried, Distribution answers it in plain HTTP (400),
    and the push and the pulls, by 127.0.0.1 and by localhost, go over plain HTTP."""
    no_flag = RegistryOptions(timeout=10)
    src = _wasm(tmp_path, b"loopback")
    repo = f"{unique('loopback')}/app"
    pushed = push_module(f"{registry.host}/{repo}:v1", src, options=no_flag)
    assert pushed.uploaded and pushed.manifest_uploaded
    port = registry.host.rpartition(":")[2]
    for host in (registry.host, f"localhost:{port}"):
        module = ensure_module(f"{host}/{repo}:v1", "Always", options=no_flag, store=store)
        assert (module.pulled, module.digest) == (True, pushed.digest)
        assert module.path.read_bytes() == src.read_bytes()


def test_modules_reach_the_plain_loopback_registry_without_insecure(
    registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/{unique('modules-loopback')}/app:v1"
    src = _wasm(tmp_path, b"modules")
    dest = tmp_path / "pulled.wasm"
    push, info, pull = run_modules(
        tmp_path,
        Step("oci_push", {"path": str(src), "reference": ref}),
        Step("oci_info", {"reference": ref}),
        Step("oci_pull", {"reference": ref, "dest": str(dest)}),
    )
    assert task_ok(push)["changed"] is True
    assert task_ok(info)["is_wasm"] is True
    assert info["digest"] == push["digest"]
    assert task_ok(pull)["digest"] == push["digest"]
    assert dest.read_bytes() == src.read_bytes()


def test_plain_registry_not_on_loopback_says_which_option(
    registry: Registry,
    store: ModuleStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure_timings: dict[str, float],
) -> None:
    """The plain registry by a name that resolves to 127.0.0.1: not loopback (names are never
    resolved by the rule), so HTTPS only, and the error names the caller's option and verb."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "plain-registry.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    host = f"plain-registry.test:{registry.host.rpartition(':')[2]}"
    ref = f"{host}/app:v1"
    started = time.monotonic()
    with pytest.raises(PullError) as caught:
        ensure_module(ref, "IfNotPresent", store=store)
    failure_timings["pull"] = time.monotonic() - started
    assert failure_timings["pull"] < FAST
    message = str(caught.value)
    assert message.startswith(f"failed to pull {ref} from registry {host}: tls: ")
    assert message.endswith(f"; to pull {ref} over plain HTTP, list {host} in --insecure-registries")
    as_the_modules = RegistryOptions(timeout=10, insecure_hint="set insecure: true")
    with pytest.raises(PushError) as refused:
        push_module(ref, _wasm(tmp_path), options=as_the_modules)
    assert str(refused.value).startswith(f"failed to push {ref} to registry {host}: tls: ")
    assert str(refused.value).endswith(f"; to push {ref} over plain HTTP, set insecure: true")


def test_registry_that_is_down_is_connection_refused_fast(
    store: ModuleStore, failure_timings: dict[str, float]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    options = RegistryOptions(insecure_registries=frozenset({host}))
    started = time.monotonic()
    with pytest.raises(PullError) as caught:
        ensure_module(f"{host}/app:v1", "IfNotPresent", options=options, store=store)
    failure_timings["pull"] = time.monotonic() - started
    assert failure_timings["pull"] < FAST
    assert "connection refused" in str(caught.value)
    assert f"registry {host}" in str(caught.value)
