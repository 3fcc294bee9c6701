"""Loopback registries over plain HTTP with no flag (HTTPS first), as Docker and containerd do.

Real local servers (tests/unit/hostile_registry.py): a plain-HTTP registry on 127.0.0.1 or
``localhost`` is pulled from and pushed to without ``insecure_registries``; one on a
non-loopback address, or named by a name that merely resolves to 127.0.0.1, is refused before
any plain-HTTP request, with a hint naming the caller's option and verb; a TLS registry on
loopback whose certificate is not trusted stays a certificate error, never downgraded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
import requests.adapters
from hostile_registry import MANIFEST_TYPE, WASM, HostileRegistry, digest, manifest_for

from wasmlet import pki
from wasmlet.oci.client import RegistryClient, RegistryOptions
from wasmlet.oci.errors import PullError, PushError
from wasmlet.oci.pull import ensure_module
from wasmlet.oci.push import push_module
from wasmlet.oci.reference import loopback_registry, parse_reference
from wasmlet.oci.store import ModuleStore

FAST = RegistryOptions(timeout=5.0)  # no insecure_registries: nothing is listed as plain HTTP
MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "registry.py"


def _wasm_file(tmp_path: Path) -> Path:
    path = tmp_path / "module.wasm"
    path.write_bytes(WASM + bytes(range(64)))
    return path


def _non_loopback_address() -> str | None:
    """This machine's address towards TEST-NET-1 (a UDP connect sends nothing), unless loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``resolve[name] = address``: ``name`` resolves to ``address`` for this test (as /etc/hosts)."""
    names: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        return real(names.get(str(host), host), *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield names


def _module_utils() -> ModuleType:
    """The collection's plugins/module_utils/registry.py (it imports wasmlet only when called)."""
    spec = importlib.util.spec_from_file_location("wasmlet_module_utils_registry", MODULE_UTILS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "registry",
    [
        "localhost",
        "localhost:5000",
        "LocalHost:5000",
        "127.0.0.1",
        "127.0.0.1:5000",
        "127.8.9.10:443",  # all of 127.0.0.0/8, as Docker
        "[::1]:5000",
        "[::1]",
        "::1",
        "[::ffff:127.0.0.1]:5000",
    ],
)
def test_loopback_registries(registry: str) -> None:
    assert loopback_registry(registry)


@pytest.mark.parametrize(
    "reference", ["localhost/app", "LOCALHOST:5000/app", "127.0.0.2:80/a/b", "[::1]:5000/app"]
)
def test_references_to_loopback_registries(reference: str) -> None:
    assert loopback_registry(parse_reference(reference).registry)


@pytest.mark.parametrize(
    "registry",
    [
        "192.0.2.2:5000",
        "10.0.0.1",
        "[fd00::2]:5000",
        "[::2]:5000",
        "registry.example:5000",
        "docker.io",
        "localhost.example:5000",
        "app.localhost:5000",  # *.localhost is not resolved, as containerd
        "127.0.0.1.nip.io:5000",  # resolves to 127.0.0.1: names are never resolved
        "127.1:5000",  # a short form of 127.0.0.1, not dotted decimal
        "0x7f000001:5000",
        "2130706433:5000",
        "[::ffff:192.0.2.2]:5000",
        "",
    ],
)
def test_anything_else_is_not_loopback(registry: str) -> None:
    assert not loopback_registry(registry)


# --- plain HTTP on loopback: no flag ------------------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_plain_http_loopback_registry_is_pulled_from_without_a_flag(name: str, tmp_path: Path) -> None:
    with HostileRegistry() as registry:
        registry.module("app", "v1")
        port = registry.host.rpartition(":")[2]
        ref = f"{name}:{port}/app:v1"
        pulled = ensure_module(ref, "Always", store=ModuleStore(tmp_path / "store"), options=FAST)
        assert pulled.path.read_bytes() == WASM
        # HTTPS was tried once (the server answered it "400 Bad Request" in plain HTTP), then every
        # request of the pull went over plain HTTP: the client remembers it.
        assert registry.not_http == 1
        assert ("GET", f"/v2/app/blobs/{digest(WASM)}") in registry.requests


def test_a_plain_http_loopback_registry_takes_pushes_without_a_flag(tmp_path: Path) -> None:
    with HostileRegistry(pushes=True) as registry:
        ref = f"{registry.host}/team/app:v1"
        pushed = push_module(ref, _wasm_file(tmp_path), options=FAST)
        assert pushed.uploaded
        assert pushed.manifest_uploaded
        assert len(pushed.blobs_uploaded) == 2
        assert registry.not_http == 1  # one TLS attempt for the whole push
        assert ("PUT", "/v2/team/app/manifests/v1") in registry.requests
        pulled = ensure_module(ref, "Always", store=ModuleStore(tmp_path / "store"), options=FAST)
        assert pulled.digest == pushed.digest
        assert pulled.path.read_bytes() == _wasm_file(tmp_path).read_bytes()


# --- anything else still needs the flag -----------------------------------------------------------


def test_a_plain_http_registry_on_a_non_loopback_address_is_refused_naming_the_node_flag(
    tmp_path: Path,
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with HostileRegistry(address) as registry:
        registry.module("app", "v1")
        ref = f"{registry.host}/app:v1"
        with pytest.raises(PullError) as caught:
            ensure_module(ref, "Always", store=ModuleStore(tmp_path / "store"), options=FAST)
        assert registry.not_http == 1  # the TLS handshake only
        assert registry.requests == []  # no plain-HTTP request was ever sent
    message = str(caught.value)
    assert message.startswith(f"failed to pull {ref} from registry {registry.host}: tls: ")
    assert f"to pull {ref} over plain HTTP, list {registry.host} in --insecure-registries" in message
    assert caught.value.registry == registry.host
    assert caught.value.reference == ref


def test_a_name_that_resolves_to_loopback_is_not_loopback(resolve: dict[str, str], tmp_path: Path) -> None:
    with HostileRegistry(pushes=True) as registry:
        resolve["registry.test"] = "127.0.0.1"
        host = f"registry.test:{registry.host.rpartition(':')[2]}"
        ref = f"{host}/app:v1"
        with pytest.raises(PushError) as caught:
            push_module(ref, _wasm_file(tmp_path), options=FAST)
        assert registry.not_http == 1
        assert registry.requests == []
    message = str(caught.value)
    assert message.startswith(f"failed to push {ref} to registry {host}: tls: ")
    assert f"to push {ref} over plain HTTP, list {host} in --insecure-registries" in message


def test_the_modules_hint_names_insecure_true_and_the_verb(resolve: dict[str, str]) -> None:
    """What oci_info gets from registry_access (no ``insecure``): ``inspect`` and ``insecure: true``."""
    params = {"insecure": False, "ca_file": None, "username": None, "password": None}
    with HostileRegistry() as registry:
        registry.module("app", "v1")
        resolve["registry.test"] = "127.0.0.1"
        host = f"registry.test:{registry.host.rpartition(':')[2]}"
        ref = parse_reference(f"{host}/app:v1")
        _auth, options = _module_utils().registry_access(params, host)
        client = RegistryClient.for_registry(host, options=options, action="inspect")
        with client, pytest.raises(PullError) as caught:
            client.get_manifest(ref)
        assert registry.requests == []
    message = str(caught.value)
    assert message.startswith(f"failed to inspect {ref} on registry {host}: tls: ")
    assert message.endswith(f"; to inspect {ref} over plain HTTP, set insecure: true")
    assert "--insecure-registries" not in message
    assert caught.value.cause.endswith("set insecure: true")


def test_the_modules_reach_a_loopback_plain_http_registry_without_insecure() -> None:
    params = {"insecure": False, "ca_file": None, "username": None, "password": None}
    with HostileRegistry() as registry:
        registry.module("app", "v1")
        _auth, options = _module_utils().registry_access(params, registry.host)
        assert not options.insecure(registry.host)
        with RegistryClient.for_registry(registry.host, options=options, action="inspect") as client:
            manifest = client.get_manifest(parse_reference(f"{registry.host}/app:v1"))
        assert manifest.data["layers"][0]["digest"] == digest(WASM)
        assert registry.not_http == 1


def test_a_listed_loopback_registry_is_plain_http_from_the_first_request(tmp_path: Path) -> None:
    with HostileRegistry() as registry:
        registry.module("app", "v1")
        options = RegistryOptions(insecure_registries=frozenset({registry.host}), timeout=5.0)
        ensure_module(f"{registry.host}/app:v1", "Always", store=ModuleStore(tmp_path), options=options)
        assert registry.not_http == 0  # no HTTPS attempt at all


@contextlib.contextmanager
def _plain_once_then_silent() -> Iterator[str]:
    """A loopback server answering its first connection (the TLS attempt) in plain HTTP, and
    closing every later one without a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            first, _peer = listener.accept()
            with first:
                first.recv(65536)
                first.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            while True:
                later, _peer = listener.accept()
                with later:
                    later.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(5)


def test_when_plain_http_fails_too_both_attempts_are_named(tmp_path: Path) -> None:
    with _plain_once_then_silent() as host:
        ref = f"{host}/app:v1"
        with pytest.raises(PullError) as caught:
            ensure_module(ref, "Always", store=ModuleStore(tmp_path), options=FAST)
    message = str(caught.value)
    assert message.startswith(f"failed to pull {ref} from registry {host}: connection to {host} failed")
    assert "(over plain HTTP, after HTTPS: tls: handshake with" in message
    assert "wrong version number" in message
    assert "--insecure-registries" not in message  # it was tried: listing it would change nothing


class _Refused(requests.adapters.BaseAdapter):
    """Mounted for https://: port 443 refuses every connection."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(str(request.url))
        raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

    def close(self) -> None:
        pass


class _PlainManifests(requests.adapters.BaseAdapter):
    """Mounted for http://: port 80 serves one manifest."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(str(request.url))
        raw = manifest_for()
        response = requests.Response()
        response.status_code = 200
        response.headers.update({"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": digest(raw)})
        response._content = raw
        response._content_consumed = True  # type: ignore[attr-defined]
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("registry", "falls_back"),
    [("localhost", True), ("127.0.0.1", True), ("localhost:5000", False), ("registry.test", False)],
)
def test_a_loopback_registry_without_a_port_refusing_https_is_tried_on_plain_http(
    registry: str, falls_back: bool
) -> None:
    """As containerd: without a port, HTTPS (443) and plain HTTP (80) are different ports, so a
    refused HTTPS connection says nothing against plain HTTP. With a port, it does."""
    ref = parse_reference(f"{registry}/app:v1")
    https, http = _Refused(), _PlainManifests()
    with RegistryClient.for_registry(registry, options=FAST) as client:
        client.session.mount("https://", https)
        client.session.mount("http://", http)
        if falls_back:
            assert client.get_manifest(ref).digest == digest(manifest_for())
            assert client.get_manifest(ref).digest == digest(manifest_for())  # remembered
            assert https.urls == [f"https://{registry}/v2/app/manifests/v1"]
            assert http.urls == [f"http://{registry}/v2/app/manifests/v1"] * 2
        else:
            with pytest.raises(PullError, match=f"dial tcp {registry}: connect: connection refused$"):
                client.get_manifest(ref)
            assert http.urls == []


# --- TLS on loopback: HTTPS, never downgraded -----------------------------------------------------


def _tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 whose certificate a CA of this test signed; and that CA."""
    ca_key = pki.generate_key("ecdsa")
    ca_spec = pki.CertSpec("loopback-test-ca", is_ca=True)
    ca = pki.build_certificate(ca_spec, ca_key.public_key(), ca_key, None)
    key = pki.generate_key("ecdsa")
    spec = pki.CertSpec("127.0.0.1", usages=("server",), ip_addresses=("127.0.0.1",))
    cert = pki.build_certificate(spec, key.public_key(), ca_key, ca)
    (tmp_path / "ca.crt").write_bytes(pki.cert_pem(ca))
    (tmp_path / "tls.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "tls.key").write_bytes(pki.key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return context, tmp_path / "ca.crt"


def test_a_loopback_tls_registry_with_an_untrusted_certificate_is_not_downgraded(tmp_path: Path) -> None:
    context, _ca = _tls_context(tmp_path)
    with HostileRegistry(tls=context) as registry:
        registry.module("app", "v1")
        ref = f"{registry.host}/app:v1"
        with pytest.raises(PullError) as caught:
            ensure_module(ref, "Always", store=ModuleStore(tmp_path / "store"), options=FAST)
        deadline = time.monotonic() + 5
        while len(registry.tls_errors) < registry.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # the server's side of a handshake ends a moment after the client's
        # One connection, the HTTPS handshake the client refused; a plain-HTTP retry would have
        # been a second one, failing on this TLS server with HTTP_REQUEST.
        assert registry.connections == 1
        assert len(registry.tls_errors) == 1
        assert "HTTP_REQUEST" not in registry.tls_errors
        assert registry.requests == []
    message = str(caught.value)
    assert "x509: certificate signed by unknown authority" in message
    assert "plain HTTP" not in message
    assert f"failed to pull {ref} from registry {registry.host}" in message


def test_a_loopback_tls_registry_is_spoken_to_over_https(tmp_path: Path) -> None:
    context, ca = _tls_context(tmp_path)
    with HostileRegistry(tls=context) as registry:
        registry.module("app", "v1")
        options = RegistryOptions(ca_file=ca, timeout=5.0)
        pulled = ensure_module(
            f"{registry.host}/app:v1", "Always", store=ModuleStore(tmp_path / "store"), options=options
        )
        assert pulled.path.read_bytes() == WASM
        assert registry.not_http == 0
        assert registry.tls_errors == []
