"""The registry client: resolve a reference, fetch and verify manifests, stream and push blobs.

:class:`RegistryClient` speaks to one registry with one set of credentials, over
:class:`~wasmlet.oci.transport.RegistryTransport`; :class:`RegistryOptions` is how the node
reaches registries (its flags). See docs/oci.md. One file (about 410 lines): every operation
shares the error wrapping (verb, reference, registry, the caller's hint) and the checks of what
the registry sent, and splitting them would put those in two places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from wasmlet.oci import limits
from wasmlet.oci.credentials import RegistryAuth
from wasmlet.oci.errors import (
    DigestMismatchError,
    Failure,
    PullError,
    PushError,
    RegistryError,
    http_error_cause,
    plain_http_hint,
)
from wasmlet.oci.limits import size_text
from wasmlet.oci.manifest import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    ResolvedModule,
    digest_of,
    manifest_kind,
    select_platform,
    select_wasm_layer,
)
from wasmlet.oci.reference import (
    DOCKER_HUB,
    DOCKER_HUB_API,
    Reference,
    loopback_registry,
    normalise_host,
    valid_digest,
)
from wasmlet.oci.transport import ORAS_IMPORT_ERROR, RegistryTransport

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

MAX_MODULE_SIZE_SETTING: Final = "--max-module-size"
# How the node is told to speak plain HTTP to a registry, as error hints say it ({registry}: its host).
INSECURE_REGISTRIES_HINT: Final = "list {registry} in --insecure-registries"
# The prepositions of the verbs errors name: "failed to pull <ref> from registry <registry>".
_VERB_PREPOSITION: Final = {"pull": "from", "push": "to"}


@dataclass(frozen=True)
class RegistryOptions:
    """How the node reaches registries (from its flags), or an Ansible module (its options).

    ``insecure_registries``: ``host[:port]`` entries spoken to over plain HTTP only. A loopback
    registry (``localhost``, 127.0.0.0/8, ``::1``: :func:`~wasmlet.oci.reference.loopback_registry`)
    needs no entry: HTTPS is tried first and, when the registry answers it in plain HTTP, plain
    HTTP (docs/oci.md, "Plain HTTP"). ``insecure_hint``: how whoever is asking lists a registry
    as plain HTTP, named in errors (``{registry}`` is its host): the node's
    ``--insecure-registries`` by default, the modules' ``insecure: true``.
    ``ca_files``: per registry, a CA bundle to verify its TLS certificate
    with; ``ca_file``: the bundle for every other TLS registry. A bundle replaces the system
    trust store for that registry (``requests`` semantics); ``None`` means the system store.
    ``timeout`` bounds each request; ``pull_timeout`` (``--image-pull-timeout``) a whole pull,
    every request of it together (None: no total deadline); ``max_module_size``
    (``--max-module-size``) the bytes of one module, declared or received.
    """

    insecure_registries: frozenset[str] = frozenset()
    insecure_hint: str = INSECURE_REGISTRIES_HINT
    ca_file: Path | None = None
    ca_files: Mapping[str, Path] = field(default_factory=dict)
    timeout: float = 30.0
    pull_timeout: float | None = None
    max_module_size: int = limits.DEFAULT_MAX_MODULE_BYTES

    def insecure(self, registry: str) -> bool:
        return registry.lower() in {entry.lower() for entry in self.insecure_registries}

    def verify(self, registry: str) -> bool | str:
        ca = self.ca_files.get(registry, self.ca_file)
        return str(ca) if ca is not None else True


def merge_options(
    options: RegistryOptions | None, insecure_registries: Collection[str] | None, ca_file: Path | str | None
) -> RegistryOptions:
    """``options`` with ``insecure_registries`` and ``ca_file`` added (pulls' and pushes' arguments)."""
    options = options or RegistryOptions()
    if insecure_registries:
        options = dataclasses.replace(
            options, insecure_registries=options.insecure_registries | frozenset(insecure_registries)
        )
    if ca_file is not None:
        options = dataclasses.replace(options, ca_file=Path(ca_file))
    return options


def _read_body(response: requests.Response, limit: int, what: str, setting: str) -> bytes:
    try:
        return b"".join(limits.read_bounded(response, limit, what, setting))
    except limits.TRANSPORT_ERRORS as exc:
        _check_deadline()
        raise Failure(f"download of {what} failed: {exc}") from exc


def _check_deadline() -> None:
    deadline = limits.current()
    if deadline is not None:
        deadline.check()


class RegistryClient:
    """A client for one registry (one ``host[:port]``) with one set of credentials.

    Reuse it for several requests to keep connections and bearer tokens, from one thread at a
    time (``requests`` sessions are not thread-safe). Every failure is a :class:`PullError` (or
    :class:`PushError`) naming the reference, the registry and the cause.

    ``insecure``: plain HTTP only. Otherwise HTTPS, and for a loopback registry plain HTTP once
    it has answered HTTPS so (remembered for the client's lifetime). ``action``: the verb errors
    name instead of each operation's own (``inspect`` for ``oci_info``, ``push`` for a push's
    check); ``insecure_hint``: see :class:`RegistryOptions`.
    """

    def __init__(
        self,
        registry: str,
        auth: RegistryAuth | None = None,
        *,
        insecure: bool = False,
        verify: bool | str = True,
        timeout: float = 30.0,
        max_module_size: int = limits.DEFAULT_MAX_MODULE_BYTES,
        insecure_hint: str = INSECURE_REGISTRIES_HINT,
        action: str | None = None,
    ) -> None:
        if ORAS_IMPORT_ERROR is not None:
            raise ImportError(f"wasmlet.oci needs oras-py (pip install oras): {ORAS_IMPORT_ERROR}")
        self.registry = normalise_host(registry)
        self.host = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        self.insecure = insecure
        self.max_module_size = max_module_size
        self.insecure_hint = insecure_hint
        self.action = action
        self._transport = RegistryTransport(
            registry=self.registry,
            host=self.host,
            verify=verify,
            auth=auth or RegistryAuth(),
            timeout=timeout,
            insecure=insecure,
            plain_http_fallback=not insecure and loopback_registry(self.host),
        )

    @classmethod
    def for_registry(
        cls,
        registry: str,
        auth: RegistryAuth | None = None,
        options: RegistryOptions | None = None,
        *,
        action: str | None = None,
    ) -> RegistryClient:
        options = options or RegistryOptions()
        return cls(
            registry,
            auth,
            insecure=options.insecure(registry),
            verify=options.verify(registry),
            timeout=options.timeout,
            max_module_size=options.max_module_size,
            insecure_hint=options.insecure_hint,
            action=action,
        )

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session (tests mount transport adapters on it)."""
        return self._transport.session

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # helpers

    def _error(
        self, verb: str, ref: Reference, cause: str, error: type[RegistryError] = PullError
    ) -> RegistryError:
        """``failed to pull <ref> from registry <registry>: <cause>`` (the client's ``action``, if set)."""
        verb = self.action or verb
        preposition = _VERB_PREPOSITION.get(verb, "on")
        return error(
            f"failed to {verb} {ref} {preposition} registry {self.registry}: {cause}",
            reference=str(ref),
            registry=self.registry,
            cause=cause,
        )

    @contextlib.contextmanager
    def _failures(self, verb: str, ref: Reference, error: type[RegistryError]) -> Iterator[None]:
        try:
            yield
        except (Failure, limits.LimitExceeded) as exc:
            cause = exc.cause
            if isinstance(exc, Failure) and exc.plain_http:
                hint = plain_http_hint(self.action or verb, str(ref), self.registry, self.insecure_hint)
                cause = f"{cause}; {hint}"
            raise self._error(verb, ref, cause, error) from exc

    @staticmethod
    def _expect(response: requests.Response, ok: Collection[int], kind: str) -> None:
        if response.status_code in ok:
            return
        body = limits.read_prefix(response)
        response.close()
        raise Failure(http_error_cause(response.status_code, body, kind))

    def check_ref(self, ref: Reference) -> None:
        """``ValueError`` unless ``ref`` is on this client's registry."""
        if normalise_host(ref.registry) != self.registry:
            raise ValueError(f"{ref} is not on registry {self.registry}")

    # reading

    def resolve(self, ref: Reference) -> str:
        """The digest ``ref`` points at now (HEAD of the manifest; GET if no digest header)."""
        self.check_ref(ref)
        with self._failures("pull", ref, PullError):
            response = self._transport.request(
                self._transport.manifest_url(ref.repository, ref.target),
                "HEAD",
                headers={"Accept": MANIFEST_ACCEPT},
            )
            self._expect(response, (200,), "manifest")
            digest = response.headers.get("Docker-Content-Digest", "")
            response.close()
        if valid_digest(digest):
            return digest
        return self.get_manifest(ref).digest

    def get_manifest(self, ref: Reference, target: str | None = None, size: int | None = None) -> Manifest:
        """The manifest (or index) ``target`` (default: ``ref``'s tag or digest), verified.

        Fetched by digest, the bytes must hash to it; fetched by tag, to the registry's
        ``Docker-Content-Digest`` when it sends one (as Docker does). At most 4 MiB are read, or
        ``size`` (a descriptor's) when given: more is refused, whatever the registry declares.
        """
        self.check_ref(ref)
        target = target or ref.target
        limit, setting = limits.MAX_MANIFEST_BYTES, "the manifest size limit"
        if size is not None:
            if size > limits.MAX_MANIFEST_BYTES:
                cause = (
                    f"manifest {target} declares {size_text(size)}, more than the manifest size "
                    f"limit {size_text(limits.MAX_MANIFEST_BYTES)}"
                )
                raise self._error("pull", ref, cause, PullError)
            limit, setting = size, "its descriptor's size"
        with self._failures("pull", ref, PullError):
            response = self._transport.request(
                self._transport.manifest_url(ref.repository, target),
                "GET",
                headers={"Accept": MANIFEST_ACCEPT},
                stream=True,
            )
            with response:
                self._expect(response, (200,), "manifest")
                raw = _read_body(response, limit, f"manifest {target}", setting)
                header_digest = response.headers.get("Docker-Content-Digest", "")
                content_type = response.headers.get("Content-Type", "")
        expected = target if valid_digest(target) else header_digest if valid_digest(header_digest) else ""
        algorithm = expected.partition(":")[0] if expected else "sha256"
        actual = digest_of(raw, algorithm)
        if expected and actual != expected:
            cause = f"manifest digest mismatch: expected {expected}, content hashes to {actual}"
            raise self._error("pull", ref, cause, DigestMismatchError)
        digest = actual if algorithm == "sha256" or not expected else expected
        if size is not None and len(raw) != size:
            cause = f"manifest {target} is {len(raw)} bytes, its descriptor says {size}"
            raise self._error("pull", ref, cause, DigestMismatchError)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            kind = manifest_kind(content_type, data)
        except ValueError as exc:
            cause = f"invalid manifest {target}: {exc}"
            raise self._error("pull", ref, cause, PullError) from exc
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
                raise self._error("pull", ref, cause, PullError)
        layer = select_wasm_layer(manifest.data, reference=str(ref), registry=self.registry)
        config = manifest.data.get("config")
        config_type = str(config.get("mediaType", "")) if isinstance(config, Mapping) else ""
        config_size = config.get("size") if isinstance(config, Mapping) else None
        if isinstance(config_size, int) and config_size > limits.MAX_MANIFEST_BYTES:
            cause = (
                f"the config blob declares {size_text(config_size)}, more than the manifest "
                f"size limit {size_text(limits.MAX_MANIFEST_BYTES)}"
            )
            raise self._error("pull", ref, cause, PullError)
        return ResolvedModule(digest=top.digest, layer=layer, config_media_type=config_type)

    def blob_chunks(self, ref: Reference, descriptor: Descriptor) -> Generator[bytes, None, None]:
        """Stream a blob (oras ``get_blob``); close the generator to drop the connection early.

        A descriptor larger than ``max_module_size`` is refused before any request; the download
        stops at the descriptor's size + 1 byte, whatever ``Content-Length`` says.
        """
        with self._failures("pull", ref, PullError):
            if descriptor.size > self.max_module_size:
                raise Failure(
                    f"layer {descriptor.digest} declares {size_text(descriptor.size)}, more than "
                    f"{MAX_MODULE_SIZE_SETTING} {size_text(self.max_module_size)}"
                )
            response = self._transport.get_blob(ref.repository, descriptor.digest)
            try:
                self._expect(response, (200,), "blob")
                yield from limits.read_bounded(
                    response, descriptor.size, f"layer {descriptor.digest}", "its descriptor's size"
                )
            except limits.TRANSPORT_ERRORS as exc:
                _check_deadline()
                raise Failure(f"download of {descriptor.digest} failed: {exc}") from exc
            finally:
                response.close()

    # writing

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        with self._failures("push", ref, PushError):
            exists: bool = self._transport.blob_exists(ref.repository, digest)
        return exists

    def push_blob(self, ref: Reference, content: bytes | Path, media_type: str) -> tuple[Descriptor, bool]:
        """Upload a blob unless the repository has it (oras ``blob_exists`` + ``put_upload``).

        Returns its descriptor and whether it was uploaded.
        """
        self.check_ref(ref)
        data = content.read_bytes() if isinstance(content, Path) else content
        descriptor = Descriptor(media_type, digest_of(data), len(data))
        if self.blob_exists(ref, descriptor.digest):
            return descriptor, False
        with tempfile.TemporaryDirectory(prefix="wasmlet-push-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            with self._failures("push", ref, PushError):
                response = self._transport.put_upload(path, ref.repository, descriptor)
                self._expect(response, (201,), "blob")
        log.info(
            "pushed blob %s (%d bytes) to %s/%s", descriptor.digest, len(data), self.registry, ref.repository
        )
        return descriptor, True

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str = OCI_MANIFEST) -> tuple[str, bool]:
        """PUT a manifest under ``ref``'s tag (or digest) unless it is already there."""
        self.check_ref(ref)
        digest = digest_of(raw)
        if ref.digest and ref.digest != digest:
            cause = f"manifest hashes to {digest}, not to the reference's {ref.digest}"
            raise self._error("push", ref, cause, PushError)
        url = self._transport.manifest_url(ref.repository, ref.tag or digest)
        with self._failures("push", ref, PushError):
            head = self._transport.request(url, "HEAD", headers={"Accept": MANIFEST_ACCEPT})
            head.close()
            if head.status_code == 200 and head.headers.get("Docker-Content-Digest") == digest:
                return digest, False
            if head.status_code not in (200, 404):
                self._expect(head, (200, 404), "manifest")
            response = self._transport.request(url, "PUT", data=raw, headers={"Content-Type": media_type})
            self._expect(response, (200, 201), "manifest")
            pushed = response.headers.get("Docker-Content-Digest")
            response.close()
        if pushed and pushed != digest:
            cause = f"registry stored the manifest as {pushed}, expected {digest}"
            raise self._error("push", ref, cause, PushError)
        log.info("pushed manifest %s as %s", digest, ref)
        return digest, True
