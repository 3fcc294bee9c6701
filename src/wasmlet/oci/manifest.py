"""Manifests: media types, descriptors, digests, the choice of platform and wasm layer, and the
manifest wasmlet pushes for a module (read from a ``.wasm`` or ``.wat`` file). See docs/oci.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from wasmlet.oci.errors import NotWasmError, PullError
from wasmlet.oci.reference import valid_digest

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

TITLE_ANNOTATION: Final = "org.opencontainers.image.title"

PushMediaType = Literal["wasm-to-oci", "cncf"]


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
        if not isinstance(digest, str) or not valid_digest(digest):
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
