"""The one OCI client and module store of wasmlet: references, credentials, pull, push, cache.

The node's pod controller calls :func:`ensure_module` for every container image; the Ansible
modules ``oci_push`` / ``oci_pull`` / ``oci_info`` call :func:`push_module`, :func:`ensure_module`
and :class:`RegistryClient`. Nothing else in wasmlet talks to registries. :func:`read_module` reads
a module file to push or run (``oci_push``, ``wasm_run``), converting WebAssembly text (``.wat``).

Module store (Krustlet's layout, under ``~/.wasmlet/.oci/modules`` by default)::

    <root>/<registry>/<repository>/<tag>/module.wasm
    <root>/<registry>/<repository>/<tag>/digest.txt       # manifest digest, "sha256:..."
    <root>/<registry>/<repository>/sha256_<hex>/...        # references by digest

Krustlet kept the registry host verbatim (``127.0.0.1:5000``). Here every ``:`` in the registry
and in a digest becomes ``_`` (``127.0.0.1_5000``, ``sha256_<hex>``): a colon in a path breaks
``PATH``-style lists, rsync/scp ``host:path`` syntax and non-POSIX filesystems, while ``_`` can
appear in no registry host name. All components are validated by :func:`parse_reference` first
(no ``..``, no absolute paths), so a reference can never point outside the store.

``digest.txt`` is the commit record: it is removed just before a new ``module.wasm`` is renamed
into place and written (atomically) after it, so an entry without ``digest.txt`` is absent and a
crash mid-pull never yields a half-written or mislabelled module. The layer is streamed into a
temporary file in the entry directory, its sha256 and size checked against the layer descriptor,
and only then renamed over ``module.wasm``. For an image index, ``digest.txt`` holds the digest of
the index (what the tag resolves to, Kubernetes' image ID), not of the chosen platform manifest.

oras-py (the issue requires it) provides the registry plumbing: URL building (``Container``),
blob GET (``get_blob``), blob existence (``blob_exists``) and monolithic blob upload
(``put_upload``), over its cookie-less ``requests`` session. Its pitfalls, and what is done here:

1. ``Registry.do_request`` is wrapped in ``@decorator.retry()``: every exception except SSL and
   ``AuthenticationException`` (connection refused, a refused challenge's ``ValueError``, a
   crashing auth backend, an HTTP 500) is retried 5 times with sleeps of 3, 5, 11, 29 and 83 s, so a
   missing registry or refused credentials fail after ~2 minutes instead of seconds.
   :class:`_OrasRegistry` overrides ``do_request`` (oras' single network entry point, which all of
   the methods above call) with a version without retries and with timeouts (oras passes none,
   so a stalled registry would hang a pull forever).
2. ``auth_backend="basic"`` builds a ``BasicAuth`` whose ``_basic_auth`` exists only when
   credentials were set (or ``ORAS_USER``/``ORAS_PASS`` are in the environment), so an anonymous
   request to a registry that answers 401 dies with ``AttributeError`` -- which the retry decorator
   then retries for minutes.
3. The "token" backend handles any ``WWW-Authenticate`` as a Bearer challenge: for
   ``Basic realm="basic-realm"`` it requests a token from the realm as if it were a URL
   (anonymous: ``GET basic-realm`` -> ``MissingSchema``; with credentials: ``https://basic-realm``
   -> connection error), and the retry loop begins again. (Measured with ``time.sleep`` stubbed:
   pitfalls 1-3 each cost 3+5+11+29+83 = 131 s of sleeps before the error surfaces.) It also
   caches one token for every scope, so after a pull-scoped token a push is sent the same token
   and refused; and it reads ``~/.docker/config.json`` and credential helpers of the user
   running the node.
   Authentication is therefore done here (:class:`_Transport`): Basic and Docker token auth
   (``Bearer realm=...,service=...,scope=...`` -> GET realm with basic credentials, or an OAuth2
   refresh-token POST for ``identitytoken`` -> token cached per scope), with credentials that come
   only from the caller (an imagePullSecret's ``.dockerconfigjson``), never from the node's home.
4. ``get_manifest`` returns parsed JSON only (no raw bytes, no headers), so a manifest digest
   cannot be computed or verified from it, and there is no HEAD of a manifest at all; ``pull``
   writes layers under names taken from annotations without checking digests; ``upload_manifest``
   re-serialises the manifest (the pushed digest is not ours to choose). Manifest GET/HEAD/PUT
   go through the same ``do_request`` here, with the raw bytes hashed and verified.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from wasmlet import paths, pull_limits
from wasmlet.fsutil import PUBLIC_MODE, write_atomic
from wasmlet.pull_limits import size_text

try:
    import oras.container
    import oras.provider
    import requests
    import requests.auth
except ImportError as _missing:  # pragma: no cover - the Ansible modules report it with missing_required_lib
    ORAS_IMPORT_ERROR: ImportError | None = _missing
else:
    ORAS_IMPORT_ERROR = None

log = logging.getLogger(__name__)

# --- media types --------------------------------------------------------------------------------

WASM_TO_OCI_CONFIG: Final = "application/vnd.wasm.config.v1+json"
WASM_TO_OCI_LAYER: Final = "application/vnd.wasm.content.layer.v1+wasm"
CNCF_WASM_CONFIG: Final = "application/vnd.wasm.config.v0+json"
CNCF_WASM_LAYER: Final = "application/wasm"
WASM_LAYER_TYPES: Final = (WASM_TO_OCI_LAYER, CNCF_WASM_LAYER)

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES: Final = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES: Final = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_ACCEPT: Final = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

WASM_OS: Final = ("wasip1", "wasi")
WASM_ARCHITECTURES: Final = ("wasm", "wasm32")

MAX_MANIFEST_BYTES: Final = pull_limits.MAX_MANIFEST_BYTES  # containerd's limit; indexes and configs too
MAX_MODULE_SIZE_SETTING: Final = "--max-module-size"
TITLE_ANNOTATION: Final = "org.opencontainers.image.title"

DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_API: Final = "index.docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
PushMediaType = Literal["wasm-to-oci", "cncf"]

# --- errors -------------------------------------------------------------------------------------


class RegistryError(Exception):
    """A registry operation failed.

    ``reason`` is the one-word status a pod shows (``ErrImagePull``); ``cause`` is the short
    "why" (``manifest unknown (HTTP 404)``); the message names the reference and the registry.
    """

    reason: str = "RegistryError"

    def __init__(
        self,
        message: str,
        *,
        reference: str = "",
        registry: str = "",
        cause: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reference = reference
        self.registry = registry
        self.cause = cause or message
        if reason is not None:
            self.reason = reason


class PullError(RegistryError):
    """A module could not be pulled; the pod controller reports ``reason`` (ErrImagePull)."""

    reason = "ErrImagePull"


class NotWasmError(PullError):
    """The image exists but holds no wasm module (an ordinary container image, say)."""


class DigestMismatchError(PullError):
    """Content did not hash to the digest that named it: never stored, never run."""


class ImageNeverPullError(PullError):
    """``imagePullPolicy: Never`` and the module is not in the store."""

    reason = "ErrImageNeverPull"


class InvalidReferenceError(PullError, ValueError):
    """The image reference does not parse (a ``ValueError`` too)."""

    reason = "InvalidImageName"


class PushError(RegistryError):
    reason = "ErrImagePush"


class _Failure(Exception):
    """Internal: a request failed; ``cause`` becomes the cause of the public error."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


# --- references ---------------------------------------------------------------------------------

# The grammar of distribution/reference (regexp.go), ASCII only.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha512": 128}
_NAME_MAX: Final = 255


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``.

    ``registry`` is the name as users write it (``docker.io``, ``127.0.0.1:5000``); ``api_host``
    is where the registry API answers. A digest, when present, is what gets pulled.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference the way Docker and Kubernetes do.

    ``repo`` -> ``docker.io/library/repo:latest``; the first path component is a registry when it
    contains ``.`` or ``:``, is ``localhost``, or has upper-case letters. Raises
    :class:`InvalidReferenceError` (a ``ValueError``) naming the reference.
    """

    def invalid(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"invalid image reference {text!r}: {why}", reference=text, cause=why)

    if not text or text != text.strip():
        raise invalid("empty, or surrounded by whitespace")
    name, _sep, digest = text.partition("@")
    if digest or "@" in text:
        _check_digest(digest, invalid)
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _sep, tag = name.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise invalid(f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN_RE.fullmatch(first):
            raise invalid(f"registry {first!r} is not host[:port]")
        registry, repository = first.lower(), rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES - {"registry-1.docker.io"}:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY_RE.fullmatch(repository):
        why = "must be lower-case" if repository != repository.lower() else "is not a valid path"
        raise invalid(f"repository {repository!r} {why} (components of [a-z0-9] joined by . _ __ -)")
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise invalid(f"name longer than {_NAME_MAX} characters")
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest or None)


def _check_digest(digest: str, invalid: Callable[[str], InvalidReferenceError]) -> None:
    if not _DIGEST_RE.fullmatch(digest):
        raise invalid(f"digest {digest!r} is not <algorithm>:<hex>")
    algorithm, _sep, hex_part = digest.partition(":")
    if _DIGEST_HEX_LENGTH.get(algorithm) != len(hex_part) or hex_part != hex_part.lower():
        raise invalid(f"digest {digest!r}: only sha256 (64) and sha512 (128 lower-case hex digits)")


def default_pull_policy(ref: Reference) -> PullPolicy:
    """Kubernetes' default: ``Always`` for ``:latest`` (or no tag), else ``IfNotPresent``."""
    return "Always" if ref.digest is None and ref.tag == "latest" else "IfNotPresent"


# --- credentials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry; all ``None`` is anonymous. Secrets stay out of ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # registrytoken: sent as a bearer token
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token (ACR, ...)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.token or self.identity_token)

    def basic_header(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return f"Basic {base64.b64encode(raw).decode()}"


def _normalise_host(host: str) -> str:
    host = host.lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def _split_port(host: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1], host[end + 2 :] if end + 1 < len(host) else ""
    name, _sep, port = host.partition(":")
    return name, port


def _config_key_matches(key: str, registry: str, repository: str) -> tuple[bool, int]:
    """Kubernetes' credentialprovider matching: host globs per label, same port, path prefix.

    Returns (matches, specificity) -- an exact host beats a glob, a longer path a shorter one.
    """
    parsed = urlsplit(key if "://" in key else f"https://{key}")
    key_host = _normalise_host(parsed.netloc)
    path = parsed.path
    for api_prefix in ("/v1/", "/v2/"):
        if path.startswith(api_prefix) or path == api_prefix.rstrip("/"):
            path = path[len(api_prefix) :]
    path = path.strip("/")
    key_name, key_port = _split_port(key_host)
    name, port = _split_port(_normalise_host(registry))
    if key_port != port:
        return False, 0
    key_labels, labels = key_name.split("."), name.split(".")
    if len(key_labels) != len(labels):
        return False, 0
    if not all(
        fnmatch.fnmatchcase(label, pattern) for label, pattern in zip(labels, key_labels, strict=True)
    ):
        return False, 0
    if path and not (repository == path or repository.startswith(f"{path}/")):
        return False, 0
    glob = any(ch in key_name for ch in "*?[")
    return True, (0 if glob else 1000) + len(path)


def _entry_auth(key: str, entry: Mapping[str, Any]) -> RegistryAuth:
    username = entry.get("username")
    password = entry.get("password")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(
                f"dockerconfigjson entry {key!r}: 'auth' is not base64 of user:password"
            ) from exc
        if ":" not in decoded:
            raise ValueError(f"dockerconfigjson entry {key!r}: 'auth' does not decode to user:password")
        username, _sep, password = decoded.partition(":")
    return RegistryAuth(
        username=str(username) if username else None,
        password=str(password) if password is not None else None,
        token=str(entry["registrytoken"]) if entry.get("registrytoken") else None,
        identity_token=str(entry["identitytoken"]) if entry.get("identitytoken") else None,
    )


def auth_from_dockerconfigjson(
    config: str | bytes | Mapping[str, Any], registry: str, repository: str = ""
) -> RegistryAuth | None:
    """Credentials for ``registry`` (and ``repository``) from a ``.dockerconfigjson``.

    ``config`` is the content of a ``kubernetes.io/dockerconfigjson`` secret (``{"auths": {...}}``)
    or of a legacy ``.dockercfg`` (the ``auths`` mapping itself). Keys may be ``host[:port]``,
    ``https://host[:port]/v1/``, ``host/path`` prefixes or ``*.domain`` globs, as in Kubernetes;
    Docker Hub is any of docker.io, index.docker.io, registry-1.docker.io. Entries hold ``auth``
    (base64 ``user:password``) or ``username``/``password``, optionally ``registrytoken`` or
    ``identitytoken``. Returns ``None`` when no entry matches, so callers can try the next secret.
    """
    data: Any = json.loads(config) if isinstance(config, str | bytes) else config
    if not isinstance(data, Mapping):
        raise ValueError("dockerconfigjson is not a JSON object")
    auths = data.get("auths", data)
    if not isinstance(auths, Mapping):
        raise ValueError("dockerconfigjson 'auths' is not a JSON object")
    best: tuple[int, str, Mapping[str, Any]] | None = None
    for key, entry in auths.items():
        if not isinstance(entry, Mapping):
            continue
        matches, specificity = _config_key_matches(str(key), registry, repository)
        if matches and (best is None or specificity > best[0]):
            best = (specificity, str(key), entry)
    return None if best is None else _entry_auth(best[1], best[2])


@dataclass(frozen=True)
class Keyring:
    """The credentials of a pod's imagePullSecrets, looked up per image like the kubelet does.

    Holds the ``.dockerconfigjson`` documents of the secrets in order; :meth:`lookup` returns
    the most specific matching entry of the first secret that has one, else anonymous. (The
    kubelet goes on to try further matching secrets when a pull with the first is refused; here
    the first match is used.)
    """

    configs: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_dockerconfigs(cls, configs: Iterable[str | bytes | Mapping[str, Any]]) -> Keyring:
        parsed: list[Mapping[str, Any]] = []
        for config in configs:
            data = json.loads(config) if isinstance(config, str | bytes) else config
            if not isinstance(data, Mapping):
                raise ValueError("dockerconfigjson is not a JSON object")
            parsed.append(data)
        return cls(tuple(parsed))

    def lookup(self, registry: str, repository: str = "") -> RegistryAuth:
        for config in self.configs:
            found = auth_from_dockerconfigjson(config, registry, repository)
            if found is not None:
                return found
        return RegistryAuth()


# --- registry options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryOptions:
    """How the node reaches registries (from its flags).

    ``insecure_registries``: ``host[:port]`` entries spoken to over plain HTTP (loopback is not
    insecure by default). ``ca_files``: per registry, a CA bundle to verify its TLS certificate
    with; ``ca_file``: the bundle for every other TLS registry. A bundle replaces the system
    trust store for that registry (``requests`` semantics); ``None`` means the system store.
    ``timeout`` bounds each request; ``pull_timeout`` (``--image-pull-timeout``) a whole pull,
    every request of it together (None: no total deadline); ``max_module_size``
    (``--max-module-size``) the bytes of one module, declared or received.
    """

    insecure_registries: frozenset[str] = frozenset()
    ca_file: Path | None = None
    ca_files: Mapping[str, Path] = field(default_factory=dict)
    timeout: float = 30.0
    pull_timeout: float | None = None
    max_module_size: int = pull_limits.DEFAULT_MAX_MODULE_BYTES

    def insecure(self, registry: str) -> bool:
        return registry.lower() in {entry.lower() for entry in self.insecure_registries}

    def verify(self, registry: str) -> bool | str:
        ca = self.ca_files.get(registry, self.ca_file)
        return str(ca) if ca is not None else True


# --- manifests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, Mapping):
            raise ValueError(f"{what} is not a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not _valid_digest(digest):
            raise ValueError(f"{what} has no valid digest ({digest!r})")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{what} has no valid size ({size!r})")
        platform = data.get("platform")
        return cls(
            media_type=str(media_type or ""),
            digest=digest,
            size=size,
            platform=platform if isinstance(platform, Mapping) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ResolvedModule:
    """What a reference resolves to: the top-level manifest digest and the wasm layer."""

    digest: str
    layer: Descriptor
    config_media_type: str


def _valid_digest(digest: str) -> bool:
    algorithm, _sep, hex_part = digest.partition(":")
    return bool(_DIGEST_RE.fullmatch(digest)) and _DIGEST_HEX_LENGTH.get(algorithm) == len(hex_part)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def manifest_kind(content_type: str, data: Mapping[str, Any]) -> Literal["manifest", "index"]:
    """Whether a manifest document is an image manifest or an index, from its media type.

    The ``mediaType`` field (inside the digested bytes) wins over the Content-Type header; an
    OCI document without either is recognised by its ``manifests``/``layers`` keys.
    """
    declared = data.get("mediaType")
    media_type = str(declared) if declared else content_type.split(";", maxsplit=1)[0].strip()
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in MANIFEST_TYPES:
        return "manifest"
    if not declared and media_type in ("", "application/json", "application/octet-stream"):
        if isinstance(data.get("manifests"), list):
            return "index"
        if isinstance(data.get("layers"), list):
            return "manifest"
    raise ValueError(f"unsupported manifest media type {media_type or '(none)'!r}")


def _platform_text(platform: Mapping[str, Any] | None) -> str:
    if not platform:
        return "(no platform)"
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def select_platform(index: Mapping[str, Any], *, reference: str, registry: str) -> Descriptor:
    """The wasm entry of an image index: os wasip1/wasi and architecture wasm beat either alone."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise PullError(
            f"failed to pull {reference} from registry {registry}: image index without 'manifests'",
            reference=reference,
            registry=registry,
            cause="invalid image index",
        )
    candidates: list[tuple[int, Descriptor]] = []
    found: list[Descriptor] = []
    for position, entry in enumerate(entries):
        try:
            descriptor = Descriptor.from_json(entry, f"index entry {position}")
        except ValueError as exc:
            raise PullError(
                f"failed to pull {reference} from registry {registry}: {exc}",
                reference=reference,
                registry=registry,
                cause=str(exc),
            ) from exc
        found.append(descriptor)
        platform = descriptor.platform or {}
        os_match = platform.get("os") in WASM_OS
        arch_match = platform.get("architecture") in WASM_ARCHITECTURES
        if os_match or arch_match:
            candidates.append((0 if os_match and arch_match else 1 if os_match else 2, descriptor))
    if not candidates:
        platforms = ", ".join(_platform_text(d.platform) for d in found) or "none"
        media_types = ", ".join(sorted({d.media_type for d in found})) or "none"
        cause = (
            "image index has no wasm entry (platform os wasip1/wasi or architecture wasm); "
            f"platforms found: {platforms}; media types found: {media_types}"
        )
        raise NotWasmError(
            f"not a wasm module: {reference} (registry {registry}): {cause}",
            reference=reference,
            registry=registry,
            cause=cause,
        )
    return min(candidates, key=lambda ranked: ranked[0])[1]


def select_wasm_layer(manifest: Mapping[str, Any], *, reference: str, registry: str) -> Descriptor:
    """The wasm layer of an image manifest (the first one, as Krustlet took ``layers[0]``).

    Accepts ``application/vnd.wasm.content.layer.v1+wasm`` (wasm-to-oci) and ``application/wasm``
    (CNCF wasm artifact) whatever the config says; anything else is :class:`NotWasmError`.
    """
    layers = manifest.get("layers")
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, Mapping) else None
    layer_types: list[str] = []
    for position, layer in enumerate(layers if isinstance(layers, list) else []):
        media_type = layer.get("mediaType") if isinstance(layer, Mapping) else None
        layer_types.append(str(media_type))
        if media_type in WASM_LAYER_TYPES:
            try:
                return Descriptor.from_json(layer, f"layer {position}")
            except ValueError as exc:
                raise PullError(
                    f"failed to pull {reference} from registry {registry}: {exc}",
                    reference=reference,
                    registry=registry,
                    cause=str(exc),
                ) from exc
    cause = (
        f"no layer of media type {' or '.join(WASM_LAYER_TYPES)}; media types found: "
        f"config {config_type or '(none)'}, layers {', '.join(layer_types) or '(none)'}"
    )
    raise NotWasmError(
        f"not a wasm module: {reference} (registry {registry}): {cause}",
        reference=reference,
        registry=registry,
        cause=cause,
    )


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


WAT_SUFFIX: Final = ".wat"


def read_module(path: Path | str) -> bytes:
    """The binary wasm module in the file ``path``: what gets pushed, or run by ``wasm_run``.

    A ``.wat`` file (WebAssembly text, any case of the suffix) is converted with wasmtime's
    ``wat2wasm``; any other file is returned as it is, and must be binary wasm (start with the
    ``\\0asm`` magic). Raises ``OSError`` when the file cannot be read, and ``ValueError`` naming
    the file when it is not valid WebAssembly text or not binary wasm.
    """
    path = Path(path)
    data = path.read_bytes()
    if path.suffix.lower() == WAT_SUFFIX:
        import wasmtime  # here, not at the top: only .wat files need the engine's parser

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            why = f"not UTF-8 ({exc.reason} at byte {exc.start})"
            raise ValueError(f"{path}: not WebAssembly text: {why}") from exc
        try:
            return bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            cause = str(exc).replace("<anon>", str(path))
            raise ValueError(f"{path}: not valid WebAssembly text: {cause}") from exc
    if not data.startswith(b"\0asm"):
        raise ValueError(
            f"{path}: not a wasm module: the file does not start with the \\0asm magic "
            f"(WebAssembly text must be in a file named *{WAT_SUFFIX})"
        )
    return data


def build_module_manifest(
    wasm: bytes, media_type: PushMediaType | str = "wasm-to-oci", annotations: Mapping[str, str] | None = None
) -> tuple[bytes, Descriptor, Descriptor, bytes]:
    """The config blob, config and layer descriptors, and manifest bytes for one wasm module.

    wasm-to-oci: config ``application/vnd.wasm.config.v1+json`` (``{}``), layer
    ``application/vnd.wasm.content.layer.v1+wasm``. cncf (TAG-Runtime wasm artifact): config
    ``application/vnd.wasm.config.v0+json`` with architecture/os/layerDigests, layer
    ``application/wasm``. Both are OCI image manifests; the config media type is the artifact
    type, so no ``artifactType`` field. The bytes are deterministic: the same module and
    annotations always give the same digest (what makes pushes idempotent).
    """
    if not wasm.startswith(b"\0asm"):
        raise ValueError("not a wasm module: the file does not start with the \\0asm magic")
    if media_type == "wasm-to-oci":
        config_type, layer_type = WASM_TO_OCI_CONFIG, WASM_TO_OCI_LAYER
    elif media_type == "cncf":
        config_type, layer_type = CNCF_WASM_CONFIG, CNCF_WASM_LAYER
    else:
        raise ValueError(f"media_type must be 'wasm-to-oci' or 'cncf', not {media_type!r}")
    layer = Descriptor(layer_type, digest_of(wasm), len(wasm))
    if media_type == "cncf":
        config = _json_bytes({"architecture": "wasm", "os": "wasip1", "layerDigests": [layer.digest]})
    else:
        config = b"{}"
    config_descriptor = Descriptor(config_type, digest_of(config), len(config))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [{**layer.to_json(), "annotations": {TITLE_ANNOTATION: "module.wasm"}}],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return config, config_descriptor, layer, _json_bytes(manifest)


# --- HTTP error causes --------------------------------------------------------------------------


def http_error_cause(status: int, body: bytes, kind: str = "manifest") -> str:
    """The cause text for an HTTP error, from the registry's error JSON when there is one.

    ``{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}`` ->
    ``manifest unknown (HTTP 404)``; ``UNAUTHORIZED``/``authentication required`` ->
    ``unauthorized: authentication required (HTTP 401)``.
    """
    parts: list[str] = []
    try:
        errors = json.loads(body).get("errors") if body else None
    except (ValueError, AttributeError):
        errors = None
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, Mapping):
            continue
        code = str(error.get("code") or "").lower().replace("_", " ")
        message = str(error.get("message") or "")
        if code and message and message.lower() != code:
            parts.append(f"{code}: {message}")
        elif code or message:
            parts.append(code or message)
    if not parts:
        defaults = {
            401: "unauthorized: authentication required",
            403: "denied: requested access to the resource is denied",
            404: f"{kind} unknown",
            429: "toomanyrequests: rate limit exceeded",
        }
        parts.append(defaults.get(status, "registry error"))
    return f"{'; '.join(parts)} (HTTP {status})"


def _tls_cause(exc: Exception, host: str) -> str:
    text = str(exc)
    match = re.search(r"certificate verify failed: ([^('\"\]]+)", text)
    if match:
        detail = match.group(1).strip().rstrip(" .,")
        if "mismatch" in detail.lower():
            return f"x509: certificate is not valid for {host} ({detail})"
        return (
            f"x509: certificate signed by unknown authority ({detail}); "
            f"give wasmlet the CA that signed {host}'s certificate"
        )
    ssl_reason = re.search(r"\[SSL: [A-Z0-9_]+\] [^('\"]+", text)
    detail = ssl_reason.group(0).strip() if ssl_reason else text
    if re.search(r"wrong version number|record layer failure|unknown protocol", text, re.IGNORECASE):
        return (
            f"tls: handshake with {host} failed ({detail}); if the registry serves plain HTTP, "
            "list it in --insecure-registries"
        )
    return f"tls: handshake with {host} failed ({detail})"


def _connection_cause(exc: Exception, host: str) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return f"dial tcp {host}: connect: connection refused"
    if re.search(r"name or service not known|nodename nor servname|name resolution|getaddrinfo", text, re.I):
        return f"dial tcp {host}: lookup: no such host"
    return f"connection to {host} failed: {text}"


# --- the transport: requests without retries, with auth -----------------------------------------

_SCOPE_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_READ_ACTIONS: Final = {"GET": "pull", "HEAD": "pull"}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` -> scheme, params."""
    scheme, _sep, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted.replace('\\"', '"') if quoted or not bare else bare
        for key, quoted, bare in _CHALLENGE_PARAM_RE.findall(rest)
    }
    return scheme.lower(), params


def request_scope(url: str, method: str) -> str:
    """The token scope a request needs: ``repository:<name>:pull`` or ``...:pull,push``."""
    match = _SCOPE_RE.match(urlsplit(url).path)
    if not match:
        return ""
    return f"repository:{match['name']}:{_READ_ACTIONS.get(method.upper(), 'pull,push')}"


class _Transport:
    """Requests to one registry: timeouts, no retries, Basic and Docker token authentication.

    oras-py's auth backends are not used (see the module docstring, pitfalls 2 and 3): this
    answers a ``Basic`` challenge with the caller's credentials (or fails at once without any),
    and a ``Bearer`` challenge by fetching a token from the realm, cached per scope. A refused
    answer fails the request with ``unauthorized`` -- one round trip, never a retry loop.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        registry: str,
        host: str,
        verify: bool | str,
        auth: RegistryAuth,
        timeout: float,
    ) -> None:
        self.session = session
        self.registry = registry
        self.host = host
        self.verify = verify
        self.auth = auth
        self.timeout = timeout
        self.scheme: str | None = None  # "basic" or "bearer", learned from the first challenge
        self.tokens: dict[str, str] = {}

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
        params: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One HTTP exchange; transport failures become :class:`_Failure` with a clear cause.

        Within a pull's deadline (:func:`pull_limits.current`), the timeout is what is left of it,
        and a connection shut down at the deadline fails with the deadline as its cause.
        """
        netloc = urlsplit(url).netloc
        deadline = pull_limits.current()
        timeout = self.timeout
        if deadline is not None:
            deadline.check()
            timeout = deadline.timeout(self.timeout)
        try:
            response = self._request(
                netloc,
                method,
                url,
                headers=dict(headers or {}),
                data=data,
                json=json_body,
                params=params,
                stream=stream,
                verify=self.verify,
                timeout=timeout,
            )
        except _Failure:
            if deadline is not None:
                deadline.check()  # a connection shut down at the deadline: say so
            raise
        if deadline is not None and deadline.expired:  # headers cut short by the shutdown
            response.close()
            deadline.check()
        log.debug("%s %s -> %s", method, url, response.status_code)
        return response

    def _request(self, netloc: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise _Failure(_tls_cause(exc, netloc)) from exc
        except requests.exceptions.Timeout as exc:
            raise _Failure(f"timeout after {kwargs['timeout']:g}s talking to {netloc}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise _Failure(_connection_cause(exc, netloc)) from exc
        except requests.exceptions.RequestException as exc:
            raise _Failure(f"request to {netloc} failed: {exc}") from exc
        except OSError as exc:  # requests: "Could not find a suitable TLS CA certificate bundle"
            raise _Failure(f"tls: cannot use the CA file {self.verify!r} for {netloc}: {exc}") from exc

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """A registry API request, authenticated on demand. Only a refused 401 raises."""
        scope = request_scope(url, method)
        sent_headers = dict(headers or {})
        authorization = self._cached_authorization(scope)
        if authorization:
            sent_headers["Authorization"] = authorization
        response = self.send(method, url, headers=sent_headers, data=data, json_body=json_body, stream=stream)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        refused = http_error_cause(401, pull_limits.read_prefix(response))
        response.close()
        if not challenge:
            raise _Failure(f"{refused}; the registry sent no WWW-Authenticate challenge")
        sent_headers["Authorization"] = self._answer(challenge, scope, authorization)
        response = self.send(method, url, headers=sent_headers, data=data, json_body=json_body, stream=stream)
        if response.status_code == 401:
            refused = http_error_cause(401, pull_limits.read_prefix(response))
            response.close()
            raise _Failure(f"{refused}; the registry refused {self._who()}")
        return response

    def _who(self) -> str:
        if self.auth.username:
            return f"the credentials of user {self.auth.username!r}"
        if self.auth.token or self.auth.identity_token:
            return "the configured registry token"
        return "anonymous access (no credentials were given: add an imagePullSecret for this registry)"

    def _cached_authorization(self, scope: str) -> str | None:
        if self.auth.token:
            return f"Bearer {self.auth.token}"
        if self.scheme == "basic":
            return self.auth.basic_header()
        if self.scheme == "bearer":
            token = self.tokens.get(scope)
            if token is None and scope.endswith(":pull"):
                token = self.tokens.get(f"{scope},push")
            return f"Bearer {token}" if token else None
        return None

    def _answer(self, challenge: str, scope: str, sent: str | None) -> str:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            basic = self.auth.basic_header()
            if basic is None:
                raise _Failure(
                    "unauthorized: authentication required (the registry asks for basic auth and no "
                    f"credentials were given: add an imagePullSecret for {self.registry})"
                )
            if sent == basic:
                raise _Failure(f"unauthorized: the registry refused {self._who()}")
            self.scheme = "basic"
            return basic
        if scheme == "bearer":
            if self.auth.token:
                raise _Failure(f"unauthorized: the registry refused {self._who()}")
            self.tokens.pop(scope, None)  # a refused (expired) token is never sent again
            token = self._fetch_token(params, scope)
            self.scheme = "bearer"
            self.tokens[scope] = token
            return f"Bearer {token}"
        raise _Failure(f"unauthorized: unsupported authentication scheme {scheme or challenge!r}")

    def _fetch_token(self, challenge: Mapping[str, str], scope: str) -> str:
        """Docker token authentication (distribution docs/spec/auth/token.md, oauth.md)."""
        realm = challenge.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _Failure(
                f"unauthorized: the registry's Bearer challenge has no usable realm URL ({realm!r})"
            )
        scopes = (challenge.get("scope") or scope).split()
        service = challenge.get("service")
        headers = {"Accept": "application/json", "User-Agent": "wasmlet"}
        # Credentials go to the token service over HTTPS, or to the registry's own host.
        trusted = parts.scheme == "https" or parts.netloc == self.host
        if self.auth.identity_token and trusted:
            form = {"grant_type": "refresh_token", "refresh_token": self.auth.identity_token}
            form |= {"client_id": "wasmlet", "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            response = self.send("POST", realm, headers=headers, data=form, stream=True)
        else:
            basic = self.auth.basic_header() if trusted else None
            if basic:
                headers["Authorization"] = basic
            query = [("service", service)] if service else []
            query += [("scope", item) for item in scopes]
            response = self.send("GET", realm, headers=headers, params=query, stream=True)
        with response:
            if response.status_code in (401, 403):
                raise _Failure(
                    f"unauthorized: token service {parts.netloc} refused {self._who()} "
                    f"(HTTP {response.status_code})"
                )
            if response.status_code != 200:
                raise _Failure(f"token service {realm} answered HTTP {response.status_code}")
            try:
                body = json.loads(
                    b"".join(
                        pull_limits.read_bounded(
                            response, MAX_MANIFEST_BYTES, "the token service's answer", "the limit"
                        )
                    )
                )
            except pull_limits.TRANSPORT_ERRORS as exc:
                raise _Failure(f"token service {realm}: reading the answer failed: {exc}") from exc
            except ValueError as exc:
                raise _Failure(f"token service {realm} answered with invalid JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise _Failure(f"token service {realm} answered without a token")
        return token


if ORAS_IMPORT_ERROR is None:

    class _NoNetrcAuth(requests.auth.AuthBase):
        """A no-op session auth: stops ``requests`` from replacing our Authorization header with
        credentials from the node user's ``~/.netrc`` (it does so when a session has no auth)."""

        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            return request

    class _OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
        """oras-py's Registry with ``do_request`` -- its one network entry point -- replaced by a
        :class:`_Transport` call: no ``@retry`` (pitfall 1), our auth (pitfalls 2 and 3)."""

        def __init__(self, transport_options: Mapping[str, Any], *, insecure: bool) -> None:
            verify = transport_options["verify"]
            super().__init__(hostname=transport_options["host"], insecure=insecure, tls_verify=verify)
            self.session.auth = _NoNetrcAuth()
            pull_limits.watch_connections(self.session)
            self.transport = _Transport(self.session, **transport_options)

        def do_request(  # noqa: PLR0917 - oras' signature, positional callers included
            self,
            url: str,
            method: str = "GET",
            data: Any = None,
            headers: dict[str, str] | None = None,
            json: Any = None,
            stream: bool = False,
        ) -> requests.Response:
            return self.transport.request(
                method, url, headers=headers, data=data, json_body=json, stream=stream
            )


# --- the client ---------------------------------------------------------------------------------


def _read_body(response: requests.Response, limit: int, what: str, setting: str) -> bytes:
    try:
        return b"".join(pull_limits.read_bounded(response, limit, what, setting))
    except pull_limits.TRANSPORT_ERRORS as exc:
        _check_deadline()
        raise _Failure(f"download of {what} failed: {exc}") from exc


def _check_deadline() -> None:
    deadline = pull_limits.current()
    if deadline is not None:
        deadline.check()


class RegistryClient:
    """A client for one registry (one ``host[:port]``) with one set of credentials.

    Reuse it for several requests to keep connections and bearer tokens, from one thread at a
    time (``requests`` sessions are not thread-safe). Every failure is a :class:`PullError` (or
    :class:`PushError`) naming the reference, the registry and the cause.
    """

    def __init__(
        self,
        registry: str,
        auth: RegistryAuth | None = None,
        *,
        insecure: bool = False,
        verify: bool | str = True,
        timeout: float = 30.0,
        max_module_size: int = pull_limits.DEFAULT_MAX_MODULE_BYTES,
    ) -> None:
        if ORAS_IMPORT_ERROR is not None:
            raise ImportError(f"wasmlet.oci needs oras-py (pip install oras): {ORAS_IMPORT_ERROR}")
        self.registry = _normalise_host(registry)
        self.host = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        self.insecure = insecure
        self.max_module_size = max_module_size
        self._oras = _OrasRegistry(
            {
                "registry": self.registry,
                "host": self.host,
                "verify": verify,
                "auth": auth or RegistryAuth(),
                "timeout": timeout,
            },
            insecure=insecure,
        )

    @classmethod
    def for_registry(
        cls, registry: str, auth: RegistryAuth | None = None, options: RegistryOptions | None = None
    ) -> RegistryClient:
        options = options or RegistryOptions()
        return cls(
            registry,
            auth,
            insecure=options.insecure(registry),
            verify=options.verify(registry),
            timeout=options.timeout,
            max_module_size=options.max_module_size,
        )

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session (tests mount transport adapters on it)."""
        session: requests.Session = self._oras.session
        return session

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # helpers

    def _container(self, repository: str) -> Any:
        # Built field by field: oras' own parser mistakes "localhost/x" or a repository whose
        # first component has a dot for a registry.
        container = oras.container.Container("placeholder", registry=self.host)
        namespace, _sep, name = repository.rpartition("/")
        container.namespace, container.repository = namespace or None, name
        return container

    def _url(self, path: str) -> str:
        return f"{self._oras.prefix}://{path}"

    def _manifest_url(self, repository: str, target: str) -> str:
        return self._url(self._container(repository).manifest_url(target))

    @contextlib.contextmanager
    def _failures(self, verb: str, ref: Reference, error: type[RegistryError]) -> Iterator[None]:
        try:
            yield
        except (_Failure, pull_limits.LimitExceeded) as exc:
            raise error(
                f"failed to {verb} {ref} from registry {self.registry}: {exc.cause}",
                reference=str(ref),
                registry=self.registry,
                cause=exc.cause,
            ) from exc

    @staticmethod
    def _expect(response: requests.Response, ok: Collection[int], kind: str) -> None:
        if response.status_code in ok:
            return
        body = pull_limits.read_prefix(response)
        response.close()
        raise _Failure(http_error_cause(response.status_code, body, kind))

    def _check_ref(self, ref: Reference) -> None:
        if _normalise_host(ref.registry) != self.registry:
            raise ValueError(f"{ref} is not on registry {self.registry}")

    # reading

    def resolve(self, ref: Reference) -> str:
        """The digest ``ref`` points at now (HEAD of the manifest; GET if no digest header)."""
        self._check_ref(ref)
        with self._failures("pull", ref, PullError):
            response = self._oras.do_request(
                self._manifest_url(ref.repository, ref.target), "HEAD", headers={"Accept": MANIFEST_ACCEPT}
            )
            self._expect(response, (200,), "manifest")
            digest = response.headers.get("Docker-Content-Digest", "")
            response.close()
        if _valid_digest(digest):
            return digest
        return self.get_manifest(ref).digest

    def get_manifest(self, ref: Reference, target: str | None = None, size: int | None = None) -> Manifest:
        """The manifest (or index) ``target`` (default: ``ref``'s tag or digest), verified.

        Fetched by digest, the bytes must hash to it; fetched by tag, to the registry's
        ``Docker-Content-Digest`` when it sends one (as Docker does). At most 4 MiB are read, or
        ``size`` (a descriptor's) when given: more is refused, whatever the registry declares.
        """
        self._check_ref(ref)
        target = target or ref.target
        limit, setting = MAX_MANIFEST_BYTES, "the manifest size limit"
        if size is not None:
            if size > MAX_MANIFEST_BYTES:
                cause = (
                    f"manifest {target} declares {size_text(size)}, more than the manifest size "
                    f"limit {size_text(MAX_MANIFEST_BYTES)}"
                )
                raise PullError(
                    f"failed to pull {ref} from registry {self.registry}: {cause}",
                    reference=str(ref),
                    registry=self.registry,
                    cause=cause,
                )
            limit, setting = size, "its descriptor's size"
        with self._failures("pull", ref, PullError):
            response = self._oras.do_request(
                self._manifest_url(ref.repository, target),
                "GET",
                headers={"Accept": MANIFEST_ACCEPT},
                stream=True,
            )
            with response:
                self._expect(response, (200,), "manifest")
                raw = _read_body(response, limit, f"manifest {target}", setting)
                header_digest = response.headers.get("Docker-Content-Digest", "")
                content_type = response.headers.get("Content-Type", "")
        expected = target if _valid_digest(target) else header_digest if _valid_digest(header_digest) else ""
        algorithm = expected.partition(":")[0] if expected else "sha256"
        actual = digest_of(raw, algorithm)
        if expected and actual != expected:
            cause = f"manifest digest mismatch: expected {expected}, content hashes to {actual}"
            raise DigestMismatchError(
                f"failed to pull {ref} from registry {self.registry}: {cause}",
                reference=str(ref),
                registry=self.registry,
                cause=cause,
            )
        digest = actual if algorithm == "sha256" or not expected else expected
        if size is not None and len(raw) != size:
            cause = f"manifest {target} is {len(raw)} bytes, its descriptor says {size}"
            raise DigestMismatchError(
                f"failed to pull {ref} from registry {self.registry}: {cause}",
                reference=str(ref),
                registry=self.registry,
                cause=cause,
            )
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            kind = manifest_kind(content_type, data)
        except ValueError as exc:
            cause = f"invalid manifest {target}: {exc}"
            raise PullError(
                f"failed to pull {ref} from registry {self.registry}: {cause}",
                reference=str(ref),
                registry=self.registry,
                cause=cause,
            ) from exc
        media_type = str(data.get("mediaType") or (OCI_INDEX if kind == "index" else OCI_MANIFEST))
        return Manifest(digest=digest, media_type=media_type, raw=raw, data=data)

    def resolve_module(self, ref: Reference) -> ResolvedModule:
        """Manifest (through an index if need be) -> the wasm layer to download."""
        top = self.get_manifest(ref)
        manifest = top
        if manifest_kind(top.media_type, top.data) == "index":
            entry = select_platform(top.data, reference=str(ref), registry=self.registry)
            manifest = self.get_manifest(ref, entry.digest, entry.size)
            if manifest_kind(manifest.media_type, manifest.data) != "manifest":
                cause = f"index entry {entry.digest} is itself an index"
                raise PullError(
                    f"failed to pull {ref} from registry {self.registry}: {cause}",
                    reference=str(ref),
                    registry=self.registry,
                    cause=cause,
                )
        layer = select_wasm_layer(manifest.data, reference=str(ref), registry=self.registry)
        config = manifest.data.get("config")
        config_type = str(config.get("mediaType", "")) if isinstance(config, Mapping) else ""
        config_size = config.get("size") if isinstance(config, Mapping) else None
        if isinstance(config_size, int) and config_size > MAX_MANIFEST_BYTES:
            cause = (
                f"the config blob declares {size_text(config_size)}, more than the manifest "
                f"size limit {size_text(MAX_MANIFEST_BYTES)}"
            )
            raise PullError(
                f"failed to pull {ref} from registry {self.registry}: {cause}",
                reference=str(ref),
                registry=self.registry,
                cause=cause,
            )
        return ResolvedModule(digest=top.digest, layer=layer, config_media_type=config_type)

    def blob_chunks(self, ref: Reference, descriptor: Descriptor) -> Generator[bytes, None, None]:
        """Stream a blob (oras ``get_blob``); close the generator to drop the connection early.

        A descriptor larger than ``max_module_size`` is refused before any request; the download
        stops at the descriptor's size + 1 byte, whatever ``Content-Length`` says.
        """
        with self._failures("pull", ref, PullError):
            if descriptor.size > self.max_module_size:
                raise _Failure(
                    f"layer {descriptor.digest} declares {size_text(descriptor.size)}, more than "
                    f"{MAX_MODULE_SIZE_SETTING} {size_text(self.max_module_size)}"
                )
            response = self._oras.get_blob(self._container(ref.repository), descriptor.digest, stream=True)
            try:
                self._expect(response, (200,), "blob")
                yield from pull_limits.read_bounded(
                    response, descriptor.size, f"layer {descriptor.digest}", "its descriptor's size"
                )
            except pull_limits.TRANSPORT_ERRORS as exc:
                _check_deadline()
                raise _Failure(f"download of {descriptor.digest} failed: {exc}") from exc
            finally:
                response.close()

    # writing

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        with self._failures("push", ref, PushError):
            exists: bool = self._oras.blob_exists({"digest": digest}, self._container(ref.repository))
        return exists

    def push_blob(self, ref: Reference, content: bytes | Path, media_type: str) -> tuple[Descriptor, bool]:
        """Upload a blob unless the repository has it (oras ``blob_exists`` + ``put_upload``).

        Returns its descriptor and whether it was uploaded.
        """
        self._check_ref(ref)
        data = content.read_bytes() if isinstance(content, Path) else content
        descriptor = Descriptor(media_type, digest_of(data), len(data))
        if self.blob_exists(ref, descriptor.digest):
            return descriptor, False
        with tempfile.TemporaryDirectory(prefix="wasmlet-push-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            with self._failures("push", ref, PushError):
                try:
                    response = self._oras.put_upload(
                        str(path), self._container(ref.repository), descriptor.to_json()
                    )
                except ValueError as exc:  # oras: "Issue retrieving session url: ..."
                    raise _Failure(f"blob upload of {descriptor.digest} was refused: {exc}") from exc
                self._expect(response, (201,), "blob")
        log.info(
            "pushed blob %s (%d bytes) to %s/%s", descriptor.digest, len(data), self.registry, ref.repository
        )
        return descriptor, True

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str = OCI_MANIFEST) -> tuple[str, bool]:
        """PUT a manifest under ``ref``'s tag (or digest) unless it is already there."""
        self._check_ref(ref)
        digest = digest_of(raw)
        if ref.digest and ref.digest != digest:
            cause = f"manifest hashes to {digest}, not to the reference's {ref.digest}"
            raise PushError(
                f"failed to push {ref}: {cause}", reference=str(ref), registry=self.registry, cause=cause
            )
        url = self._manifest_url(ref.repository, ref.tag or digest)
        with self._failures("push", ref, PushError):
            head = self._oras.do_request(url, "HEAD", headers={"Accept": MANIFEST_ACCEPT})
            head.close()
            if head.status_code == 200 and head.headers.get("Docker-Content-Digest") == digest:
                return digest, False
            if head.status_code not in (200, 404):
                self._expect(head, (200, 404), "manifest")
            response = self._oras.do_request(url, "PUT", data=raw, headers={"Content-Type": media_type})
            self._expect(response, (200, 201), "manifest")
            pushed = response.headers.get("Docker-Content-Digest")
            response.close()
        if pushed and pushed != digest:
            cause = f"registry stored the manifest as {pushed}, expected {digest}"
            raise PushError(
                f"failed to push {ref}: {cause}", reference=str(ref), registry=self.registry, cause=cause
            )
        log.info("pushed manifest %s as %s", digest, ref)
        return digest, True


# --- the module store ---------------------------------------------------------------------------

MODULE_FILE: Final = "module.wasm"
DIGEST_FILE: Final = "digest.txt"
LOCK_FILE: Final = ".lock"


def default_store_root() -> Path:
    return paths.home() / ".oci" / "modules"


@dataclass(frozen=True)
class PulledModule:
    path: Path
    digest: str
    size: int
    pulled: bool


def _fs_name(text: str) -> str:
    return text.replace(":", "_")


class ModuleStore:
    """Krustlet's on-disk module store (see the module docstring for the layout)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_store_root()

    def entry_dir(self, reference: str | Reference) -> Path:
        ref = _as_reference(reference)
        leaf = _fs_name(ref.digest) if ref.digest else ref.tag or "latest"
        return self.root / _fs_name(ref.registry) / ref.repository / leaf

    def lookup(self, reference: str | Reference) -> PulledModule | None:
        """The stored module, or None: one stat and one small read, no network, no JSON."""
        ref = _as_reference(reference)
        entry = self.entry_dir(ref)
        module = entry / MODULE_FILE
        try:
            size = module.stat().st_size
            digest = (entry / DIGEST_FILE).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not digest or (ref.digest and digest != ref.digest):
            return None
        return PulledModule(path=module, digest=digest, size=size, pulled=False)

    def has(self, reference: str | Reference) -> bool:
        return self.lookup(reference) is not None

    def ensure(
        self,
        reference: str | Reference,
        policy: str = "IfNotPresent",
        auth: RegistryAuth | Keyring | None = None,
        *,
        options: RegistryOptions | None = None,
        insecure_registries: Collection[str] | None = None,
        ca_file: Path | str | None = None,
        client: RegistryClient | None = None,
    ) -> PulledModule:
        """:func:`ensure_module` with this store."""
        return ensure_module(
            reference,
            policy,
            auth,
            store=self,
            options=options,
            insecure_registries=insecure_registries,
            ca_file=ca_file,
            client=client,
        )

    @contextlib.contextmanager
    def locked(self, ref: Reference) -> Iterator[Path]:
        """Hold the entry's lock (``flock``: across threads and processes sharing the store)."""
        entry = self.entry_dir(ref)
        entry.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PUBLIC_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield entry
        finally:
            os.close(fd)

    def write(self, ref: Reference, digest: str, layer: Descriptor, chunks: Iterable[bytes]) -> PulledModule:
        """Store a layer streamed from ``chunks`` as ``ref``'s module. Call under :meth:`locked`.

        The bytes must match the layer descriptor's size and digest (else
        :class:`DigestMismatchError` and nothing changes); then ``module.wasm`` is replaced
        atomically and ``digest.txt`` written last.
        """
        entry = self.entry_dir(ref)
        entry.mkdir(parents=True, exist_ok=True)
        for leftover in [*entry.glob(f".{MODULE_FILE}.*"), *entry.glob(f".{DIGEST_FILE}.*")]:
            leftover.unlink(missing_ok=True)  # from a process killed mid-pull; we hold the lock
        algorithm, _sep, expected_hex = layer.digest.partition(":")
        hasher = hashlib.new(algorithm)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{MODULE_FILE}.", dir=entry)
        tmp = Path(tmp_name)
        size = 0

        def mismatch(cause: str) -> DigestMismatchError:
            return DigestMismatchError(
                f"failed to pull {ref} from registry {ref.registry}: {cause}",
                reference=str(ref),
                registry=ref.registry,
                cause=cause,
            )

        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > layer.size:
                        raise mismatch(
                            f"layer {layer.digest} is larger than its descriptor's {layer.size} bytes"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if size != layer.size or hasher.hexdigest() != expected_hex:
                raise mismatch(
                    f"layer digest mismatch: expected {layer.digest} ({layer.size} bytes), "
                    f"received {actual} ({size} bytes)"
                )
            tmp.chmod(PUBLIC_MODE)
            (entry / DIGEST_FILE).unlink(missing_ok=True)
            os.replace(tmp, entry / MODULE_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        write_atomic(entry / DIGEST_FILE, f"{digest}\n".encode())
        dir_fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return PulledModule(path=entry / MODULE_FILE, digest=digest, size=size, pulled=True)


# --- pull policy and push -----------------------------------------------------------------------


def _as_reference(reference: str | Reference) -> Reference:
    return reference if isinstance(reference, Reference) else parse_reference(reference)


def _merge_options(
    options: RegistryOptions | None, insecure_registries: Collection[str] | None, ca_file: Path | str | None
) -> RegistryOptions:
    options = options or RegistryOptions()
    if insecure_registries:
        options = dataclasses.replace(
            options, insecure_registries=options.insecure_registries | frozenset(insecure_registries)
        )
    if ca_file is not None:
        options = dataclasses.replace(options, ca_file=Path(ca_file))
    return options


def _credentials(
    auth: RegistryAuth | Keyring | None, ref: Reference, error: type[RegistryError]
) -> RegistryAuth | None:
    if not isinstance(auth, Keyring):
        return auth
    try:
        return auth.lookup(ref.registry, ref.repository)
    except ValueError as exc:  # a malformed entry in an imagePullSecret
        cause = f"invalid imagePullSecret: {exc}"
        verb = "push" if error is PushError else "pull"
        raise error(
            f"failed to {verb} {ref} from registry {ref.registry}: {cause}",
            reference=str(ref),
            registry=ref.registry,
            cause=cause,
        ) from exc


def pull_module(client: RegistryClient, ref: Reference, store: ModuleStore) -> PulledModule:
    """Download ``ref`` into the store (unless the store already has what it resolves to)."""
    started = time.monotonic()
    resolved = client.resolve_module(ref)
    with store.locked(ref):
        current = store.lookup(ref)
        if current is not None and current.digest == resolved.digest:
            return current  # another thread or process pulled it meanwhile
        with contextlib.closing(client.blob_chunks(ref, resolved.layer)) as chunks:
            module = store.write(ref, resolved.digest, resolved.layer, chunks)
    log.info(
        "pulled %s (%s, layer %s, %d bytes) in %.2fs",
        ref,
        resolved.digest,
        resolved.layer.media_type,
        module.size,
        time.monotonic() - started,
    )
    return module


def ensure_module(
    reference: str | Reference,
    policy: PullPolicy | str = "IfNotPresent",
    auth: RegistryAuth | Keyring | None = None,
    *,
    store: ModuleStore | None = None,
    options: RegistryOptions | None = None,
    insecure_registries: Collection[str] | None = None,
    ca_file: Path | str | None = None,
    client: RegistryClient | None = None,
) -> PulledModule:
    """Make the module for ``reference`` present in the store, following ``imagePullPolicy``.

    - ``IfNotPresent``: a stored module is returned as is (no network); else it is pulled.
    - ``Always``: the manifest digest is resolved (HEAD); the module is downloaded only if the
      store has none or a different digest. The registry is always asked, as the kubelet does.
    - ``Never``: the stored module, or :class:`ImageNeverPullError`.

    ``auth`` is one registry's credentials, or a pod's :class:`Keyring` (looked up for the
    image's registry). ``insecure_registries`` and ``ca_file`` add to ``options``. ``client``
    lets callers reuse one :class:`RegistryClient` (connections, bearer tokens); otherwise one is
    made. ``pulled`` in the result says whether bytes were downloaded.
    """
    ref = _as_reference(reference)
    if policy not in PULL_POLICIES:
        raise ValueError(f"imagePullPolicy must be one of {', '.join(PULL_POLICIES)}, not {policy!r}")
    store = store or ModuleStore()
    cached = store.lookup(ref)
    if policy == "Never":
        if cached is not None:
            return cached
        cause = "not present with pull policy of Never"
        raise ImageNeverPullError(
            f'container image "{ref}" is not present with pull policy of Never '
            f"(registry {ref.registry}; not in the module store at {store.entry_dir(ref)}): "
            "pull it first, or set imagePullPolicy to IfNotPresent",
            reference=str(ref),
            registry=ref.registry,
            cause=cause,
        )
    if policy == "IfNotPresent" and cached is not None:
        return cached
    merged = _merge_options(options, insecure_registries, ca_file)
    with _pull_deadline(merged):
        if client is not None:
            client._check_ref(ref)
            return _ensure_with(client, ref, cached, store)
        credentials = _credentials(auth, ref, PullError)
        with RegistryClient.for_registry(ref.registry, credentials, merged) as own_client:
            return _ensure_with(own_client, ref, cached, store)


def _pull_deadline(options: RegistryOptions) -> contextlib.AbstractContextManager[object]:
    """``options.pull_timeout`` as the deadline of this pull, unless one is already running."""
    if options.pull_timeout is None or pull_limits.current() is not None:
        return contextlib.nullcontext()
    return pull_limits.PullDeadline(options.pull_timeout).active()


def _ensure_with(
    client: RegistryClient, ref: Reference, cached: PulledModule | None, store: ModuleStore
) -> PulledModule:
    if cached is not None and client.resolve(ref) == cached.digest:
        return cached
    return pull_module(client, ref, store)


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str  # the manifest digest
    uploaded: bool  # anything at all was uploaded (False: the registry had it all)
    blobs_uploaded: tuple[str, ...]
    manifest_uploaded: bool


def push_module(
    reference: str | Reference,
    wasm_path: Path | str,
    media_type: PushMediaType | str = "wasm-to-oci",
    auth: RegistryAuth | Keyring | None = None,
    *,
    options: RegistryOptions | None = None,
    insecure_registries: Collection[str] | None = None,
    ca_file: Path | str | None = None,
    annotations: Mapping[str, str] | None = None,
    client: RegistryClient | None = None,
) -> PushResult:
    """Push one wasm module as a wasm-to-oci or CNCF wasm artifact; idempotent.

    ``wasm_path`` is a binary ``.wasm`` file or a ``.wat`` text file, converted first (see
    :func:`read_module`). Blobs the repository already has are not uploaded, nor is a manifest
    the tag already points to; ``PushResult.uploaded`` is False when nothing was (Ansible's
    ``changed``).
    """
    ref = _as_reference(reference)
    wasm = read_module(wasm_path)
    config, config_descriptor, layer, manifest = build_module_manifest(wasm, media_type, annotations)

    def push(push_client: RegistryClient) -> PushResult:
        uploaded: list[str] = []
        for content, descriptor in ((wasm, layer), (config, config_descriptor)):
            _pushed, was_uploaded = push_client.push_blob(ref, content, descriptor.media_type)
            if was_uploaded:
                uploaded.append(descriptor.digest)
        digest, manifest_uploaded = push_client.push_manifest(ref, manifest)
        return PushResult(
            reference=str(ref),
            digest=digest,
            uploaded=bool(uploaded) or manifest_uploaded,
            blobs_uploaded=tuple(uploaded),
            manifest_uploaded=manifest_uploaded,
        )

    if client is not None:
        return push(client)
    credentials = _credentials(auth, ref, PushError)
    merged = _merge_options(options, insecure_registries, ca_file)
    with RegistryClient.for_registry(ref.registry, credentials, merged) as own_client:
        return push(own_client)


__all__ = [
    "CNCF_WASM_CONFIG",
    "CNCF_WASM_LAYER",
    "ORAS_IMPORT_ERROR",
    "WASM_TO_OCI_CONFIG",
    "WASM_TO_OCI_LAYER",
    "Descriptor",
    "DigestMismatchError",
    "ImageNeverPullError",
    "InvalidReferenceError",
    "Keyring",
    "Manifest",
    "ModuleStore",
    "NotWasmError",
    "PullError",
    "PullPolicy",
    "PulledModule",
    "PushError",
    "PushResult",
    "Reference",
    "RegistryAuth",
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "ResolvedModule",
    "auth_from_dockerconfigjson",
    "build_module_manifest",
    "default_pull_policy",
    "default_store_root",
    "digest_of",
    "ensure_module",
    "http_error_cause",
    "manifest_kind",
    "parse_challenge",
    "parse_reference",
    "pull_module",
    "push_module",
    "read_module",
    "request_scope",
    "select_platform",
    "select_wasm_layer",
]
