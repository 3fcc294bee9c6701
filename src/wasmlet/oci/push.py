"""Pushes: one wasm module as a wasm-to-oci or CNCF wasm artifact, idempotently.

What the ``oci_push`` module calls; the manifest is :func:`~wasmlet.oci.manifest.build_module_manifest`'s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from wasmlet.oci.client import RegistryClient, RegistryOptions, merge_options
from wasmlet.oci.credentials import Keyring, RegistryAuth, credentials_for
from wasmlet.oci.errors import PushError
from wasmlet.oci.manifest import PushMediaType, build_module_manifest, read_module
from wasmlet.oci.reference import Reference, as_reference


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
    ref = as_reference(reference)
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
    credentials = credentials_for(auth, ref, PushError)
    merged = merge_options(options, insecure_registries, ca_file)
    with RegistryClient.for_registry(ref.registry, credentials, merged) as own_client:
        return push(own_client)
