"""Pulls from a registry that lies about sizes, floods, or drips: capped in bytes and in time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_registry import (
    INDEX_TYPE,
    WASM,
    Answer,
    HostileRegistry,
    digest,
    endless,
    manifest_for,
)

from wasmlet.oci import limits
from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.errors import DigestMismatchError, PullError
from wasmlet.oci.pull import ensure_module
from wasmlet.oci.store import ModuleStore, PulledModule

TEN_TIB = 10 * 2**40


@pytest.fixture
def registry() -> Iterator[HostileRegistry]:
    with HostileRegistry() as server:
        yield server


def _pull(
    registry: HostileRegistry, tmp_path: Path, repository: str = "app", **options: object
) -> PulledModule:
    insecure = frozenset({registry.host})
    merged = RegistryOptions(insecure_registries=insecure, timeout=5.0, **options)  # type: ignore[arg-type]
    store = ModuleStore(tmp_path / "store")
    return ensure_module(f"{registry.host}/{repository}:v1", "Always", store=store, options=merged)


def _stored(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != ".lock"]


def test_a_layer_declaring_more_than_max_module_size_is_refused_before_download(
    registry: HostileRegistry, tmp_path: Path
) -> None:
    registry.module("app", "v1", layer_size=TEN_TIB)
    with pytest.raises(PullError) as caught:
        _pull(registry, tmp_path)
    message = str(caught.value)
    assert f"{registry.host}/app:v1" in message
    assert "declares 10Ti (10995116277760 bytes), more than --max-module-size 512Mi" in message
    assert caught.value.reason == "ErrImagePull"
    assert not [path for method, path in registry.requests if "/blobs/" in path], registry.requests
    assert _stored(tmp_path) == []


def test_max_module_size_is_the_node_setting(registry: HostileRegistry, tmp_path: Path) -> None:
    layer = WASM + b"\0" * 2000
    registry.module("app", "v1", layer)
    with pytest.raises(PullError, match=r"declares 2008 bytes, more than --max-module-size 1Ki"):
        _pull(registry, tmp_path, max_module_size=1024)
    assert _pull(registry, tmp_path, max_module_size=4096).size == len(layer)


def test_an_endless_layer_is_cut_after_its_descriptors_size(
    registry: HostileRegistry, tmp_path: Path
) -> None:
    registry.module("app", "v1", WASM)
    blob = f"/v2/app/blobs/{digest(WASM)}"
    registry.answers[blob] = Answer(body=endless())  # no Content-Length: "until I close"
    started = time.monotonic()
    with pytest.raises(
        PullError, match=r"larger than its descriptor's size 8 bytes; the download was stopped"
    ):
        _pull(registry, tmp_path)
    assert time.monotonic() - started < 5
    assert _stored(tmp_path) == []


def test_a_content_length_above_the_descriptor_is_refused_before_reading(
    registry: HostileRegistry, tmp_path: Path
) -> None:
    registry.module("app", "v1", WASM)
    registry.answers[f"/v2/app/blobs/{digest(WASM)}"] = Answer(
        headers={"Content-Length": str(3 * 2**30)}, body=endless()
    )
    with pytest.raises(
        PullError, match=r"is 3Gi \(3221225472 bytes\) \(Content-Length\), more than its descriptor"
    ):
        _pull(registry, tmp_path)
    assert registry.sent.get(f"/v2/app/blobs/{digest(WASM)}", 0) < 2**30


def test_a_layer_shorter_than_its_descriptor_is_a_mismatch(registry: HostileRegistry, tmp_path: Path) -> None:
    registry.module("app", "v1", WASM, layer_size=100)
    with pytest.raises(
        DigestMismatchError, match=r"expected sha256:\w+ \(100 bytes\), received sha256:\w+ \(8 bytes\)"
    ):
        _pull(registry, tmp_path)
    assert _stored(tmp_path) == []


def test_an_oversized_manifest_is_refused(registry: HostileRegistry, tmp_path: Path) -> None:
    huge = b" " * (5 * 2**20)
    registry.answers["/v2/app/manifests/v1"] = Answer(headers={"Content-Length": str(len(huge))}, body=huge)
    with pytest.raises(PullError, match=r"manifest v1 is 5Mi .* more than the manifest size limit 4Mi"):
        _pull(registry, tmp_path)
    registry.answers["/v2/app/manifests/v1"] = Answer(body=endless())
    with pytest.raises(PullError, match=r"manifest v1 is larger than the manifest size limit 4Mi"):
        _pull(registry, tmp_path)


def test_an_index_entry_declaring_a_huge_manifest_is_refused_before_fetching_it(
    registry: HostileRegistry, tmp_path: Path
) -> None:
    target = manifest_for()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(target),
                "size": TEN_TIB,
                "platform": {"os": "wasip1", "architecture": "wasm"},
            }
        ],
    }
    registry.manifest("app", "v1", json.dumps(index).encode(), INDEX_TYPE)
    with pytest.raises(PullError, match=r"declares 10Ti .* more than the manifest size limit 4Mi"):
        _pull(registry, tmp_path)
    assert ("GET", f"/v2/app/manifests/{digest(target)}") not in registry.requests


def test_a_flood_in_an_error_answer_is_not_read(registry: HostileRegistry, tmp_path: Path) -> None:
    registry.answers["/v2/app/manifests/v1"] = Answer(404, body=endless(b"x" * 65536))
    started = time.monotonic()
    with pytest.raises(PullError, match=r"manifest unknown \(HTTP 404\)"):
        _pull(registry, tmp_path)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("drip_head", [False, True], ids=["body", "headers"])
def test_a_manifest_dripped_a_byte_at_a_time_ends_at_the_pull_deadline(
    registry: HostileRegistry, tmp_path: Path, drip_head: bool
) -> None:
    raw = manifest_for()
    registry.answers["/v2/app/manifests/v1"] = Answer(
        headers={"Content-Length": str(len(raw))}, body=raw, drip=0.05, drip_head=drip_head
    )
    started = time.monotonic()
    with pytest.raises(PullError) as caught:
        _pull(registry, tmp_path, pull_timeout=1.5)  # each byte comes well within the 5 s per read
    took = time.monotonic() - started
    assert "the pull did not finish within --image-pull-timeout 1.5s" in str(caught.value)
    assert f"{registry.host}/app:v1" in str(caught.value)
    assert 1.4 < took < 3.0, took


def test_a_dripped_layer_ends_at_the_pull_deadline_and_nothing_is_stored(
    registry: HostileRegistry, tmp_path: Path
) -> None:
    layer = WASM + b"\0" * 4096
    registry.module("app", "v1", layer)
    registry.answers[f"/v2/app/blobs/{digest(layer)}"] = Answer(
        headers={"Content-Length": str(len(layer))}, body=layer, drip=0.01
    )
    started = time.monotonic()
    with pytest.raises(PullError, match="did not finish within --image-pull-timeout 1s"):
        _pull(registry, tmp_path, pull_timeout=1.0)
    assert time.monotonic() - started < 2.5
    assert _stored(tmp_path) == []


def test_a_pull_within_its_deadline_succeeds(registry: HostileRegistry, tmp_path: Path) -> None:
    registry.module("app", "v1", WASM)
    pulled = _pull(registry, tmp_path, pull_timeout=10.0)
    assert pulled.pulled and pulled.path.read_bytes() == WASM
    assert limits.current() is None  # the deadline ends with its pull


def test_size_and_duration_texts() -> None:
    assert limits.size_text(512 * 2**20) == "512Mi (536870912 bytes)"
    assert limits.size_text(1000) == "1000 bytes"
    assert limits.duration_text(120) == "2m0s"
    assert limits.duration_text(1.5) == "1.5s"
