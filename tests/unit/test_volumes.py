"""wasmlet.pod.volumes: pod volumes as WASI preopens, against fake ConfigMaps, Secrets and tokens."""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmlet.kube.client import ApiError, Client
from wasmlet.pod.downward import volume_field_value
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.go_strings import format_map, go_quote
from wasmlet.pod.sources import ApiSources
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.pod.volumes.mounts import close_preopens
from wasmlet.pod.volumes.pod_volumes import CONTENT_REFRESH_SECONDS, PodVolumes
from wasmlet.pod.volumes.spec import VolumeError
from wasmlet.runtime.engine import RunSpec, Runtime

START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeSources:
    def __init__(
        self,
        configmaps: Mapping[str, Mapping[str, bytes]] | None = None,
        secrets: Mapping[str, Mapping[str, bytes]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.configmaps = dict(configmaps or {})
        self.secrets = dict(secrets or {})
        self.clock = clock or Clock()
        self.token_calls: list[dict[str, Any]] = []
        self.token_error: str | None = None
        self.token_lifetime: float | None = None  # the server's choice; else what was asked

    def configmap_files(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(name)

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod_name: str,
        pod_uid: str,
        audience: str,
        expiration_seconds: int,
    ) -> tuple[str, datetime]:
        if self.token_error:
            raise EnvError(f"failed to fetch token: {self.token_error}")
        self.token_calls.append(
            {
                "namespace": namespace,
                "service_account": service_account,
                "pod_name": pod_name,
                "pod_uid": pod_uid,
                "audience": audience,
                "expiration_seconds": expiration_seconds,
            }
        )
        lifetime = self.token_lifetime or expiration_seconds
        expires = datetime.fromtimestamp(self.clock.now + lifetime, UTC)
        return f"token-{len(self.token_calls)}", expires


def make_pod(
    volumes: list[Any], mounts: list[Any] | None = None, *, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "1234-abcd",
            "labels": dict(labels or {"app": "web", "tier": "front"}),
            "annotations": {"note": 'say "hi"\n', "example.com/owner": "ops"},
        },
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "robot",
            "volumes": volumes,
            "containers": [
                {
                    "name": "main",
                    "volumeMounts": mounts or [],
                    "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
                }
            ],
        },
    }


def container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], pod["spec"]["containers"][0])


def volumes_for(
    tmp_path: Path,
    volumes: list[Any],
    mounts: list[Any] | None = None,
    sources: FakeSources | None = None,
    clock: Clock | None = None,
) -> tuple[PodVolumes, dict[str, Any]]:
    pod = make_pod(volumes, mounts)
    clock = clock or (sources.clock if sources else Clock())
    sources = sources or FakeSources(clock=clock)
    pod_volumes = PodVolumes(
        pod,
        tmp_path / "pods" / "uid" / "volumes",
        sources,
        allocatable={"cpu": "4", "memory": "8Gi"},
        host_paths=HostPathPolicy.of([tmp_path], [tmp_path / "pods"]),
        clock=clock,
    )
    return pod_volumes, pod


def mounted(
    pod_volumes: PodVolumes, container: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> list[tuple[Path, str, bool]]:
    """``preopens`` with each held directory checked to be the one its path names, then closed."""
    preopens = pod_volumes.preopens(container, env)
    try:
        for held, _guest, _read_only in preopens:
            assert os.path.samestat(os.fstat(held.fd), os.stat(held.path))
            assert os.readlink(held.proc_path) == str(held.path)
        return [(held.path, guest, read_only) for held, guest, read_only in preopens]
    finally:
        close_preopens(preopens)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def setup_error(pod_volumes: PodVolumes) -> str:
    with pytest.raises(VolumeError) as info:
        pod_volumes.setup()
    return str(info.value)


def preopen_error(
    pod_volumes: PodVolumes, pod: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> str:
    with pytest.raises(VolumeError) as info:
        pod_volumes.preopens(container(pod), env)
    return str(info.value)


CFG = {"app.ini": b"[app]\nname=web\n", "logo.png": b"\x89PNG\x00\xff"}
SECRET = {"password": b"hunter2", "tls.key": b"-----BEGIN KEY-----"}


# --- emptyDir --------------------------------------------------------------------------------


def test_empty_dir_is_a_writable_directory_0777_in_kubelets_layout(tmp_path: Path) -> None:
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
        [
            {"name": "data", "mountPath": "/data"},
            {"name": "scratch", "mountPath": "/scratch", "readOnly": True},
        ],
    )
    assert pod_volumes.setup() == []
    root = tmp_path / "pods" / "uid" / "volumes"
    data = root / "kubernetes.io~empty-dir" / "data"
    assert data.is_dir()
    assert mode(data) == 0o777
    assert mode(root) == 0o755
    assert mode(root / "kubernetes.io~empty-dir") == 0o755
    assert mounted(pod_volumes, container(pod)) == [
        (data, "/data", False),
        (root / "kubernetes.io~empty-dir" / "scratch", "/scratch", True),
    ]
    (data / "kept").write_text("x")
    assert pod_volumes.setup() == []  # idempotent: contents kept
    assert (data / "kept").read_text() == "x"
    assert pod_volumes.next_refresh() is None  # nothing to re-read


def test_the_memory_warning_is_not_lost_when_setup_fails(tmp_path: Path) -> None:
    pod_volumes, _pod = volumes_for(
        tmp_path,
        [{"name": "cache", "emptyDir": {"medium": "Memory"}}, {"name": "c", "configMap": {"name": "x"}}],
    )
    setup_error(pod_volumes)
    pod_volumes.pod["spec"]["volumes"].pop()
    assert len(pod_volumes.setup()) == 1
    assert pod_volumes.setup() == []


def test_memory_medium_is_a_directory_with_a_warning_given_once(tmp_path: Path) -> None:
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "cache", "emptyDir": {"medium": "Memory"}}],
        [{"name": "cache", "mountPath": "/c"}],
    )
    assert pod_volumes.setup() == [
        'volume "cache": emptyDir medium Memory is a directory on disk under wasmlet'
    ]
    assert pod_volumes.setup() == []
    assert mounted(pod_volumes, container(pod))[0][2] is False


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"medium": "HugePages-2Mi"}, "emptyDir medium HugePages-2Mi is not supported by wasmlet"),
        ({"medium": "Tape"}, 'unknown emptyDir medium "Tape"'),
        ({"sizeLimit": "lots"}, "emptyDir.sizeLimit: quantity 'lots'"),
        ({"medium": 1}, "emptyDir: medium must be a string, not a number"),
    ],
)
def test_empty_dir_bad_sources(tmp_path: Path, source: dict[str, Any], message: str) -> None:
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "data", "emptyDir": source}])
    error = setup_error(pod_volumes)
    assert error.startswith('MountVolume.SetUp failed for volume "data" : ')
    assert message in error


def test_usage_over_the_size_limit_is_kubelets_eviction_message(tmp_path: Path) -> None:
    pod_volumes, _pod = volumes_for(
        tmp_path,
        [
            {"name": "small", "emptyDir": {"sizeLimit": "64Ki"}},
            {"name": "big", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    )
    pod_volumes.setup()
    assert pod_volumes.usage_exceeded() == []
    empty = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir"
    (empty / "big" / "f").write_bytes(os.urandom(256 * 1024))
    assert pod_volumes.usage_exceeded() == []
    (empty / "small" / "sub").mkdir()
    (empty / "small" / "sub" / "f").write_bytes(os.urandom(256 * 1024))
    assert pod_volumes.usage_exceeded() == ['Usage of EmptyDir volume "small" exceeds the limit "64Ki". ']


# --- configMap and secret ------------------------------------------------------------------


def test_config_map_keys_and_binary_data_become_read_only_files(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": CFG})
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "config", "configMap": {"name": "cfg"}}],
        [{"name": "config", "mountPath": "/etc/app"}],
        sources,
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    assert (target / "app.ini").read_bytes() == CFG["app.ini"]
    assert (target / "logo.png").read_bytes() == CFG["logo.png"]
    assert mode(target / "app.ini") == 0o644
    # kubelet's AtomicWriter layout: user-visible names are symlinks through ..data
    assert os.readlink(target / "app.ini") == "..data/app.ini"
    assert os.readlink(target / "..data").startswith("..20")
    assert sorted(p for p in os.listdir(target) if not p.startswith("..")) == ["app.ini", "logo.png"]
    assert mounted(pod_volumes, container(pod)) == [(target, "/etc/app", True)]  # always read-only
    assert pod_volumes.next_refresh() == CONTENT_REFRESH_SECONDS


def test_items_paths_and_modes(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": CFG})
    source = {
        "name": "cfg",
        "defaultMode": 0o640,
        "items": [
            {"key": "app.ini", "path": "conf/app.ini"},
            {"key": "logo.png", "path": "./static//logo.png", "mode": 0o400},
        ],
    }
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "config", "configMap": source}], sources=sources)
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    assert (target / "conf" / "app.ini").read_bytes() == CFG["app.ini"]
    assert mode(target / "conf" / "app.ini") == 0o640
    assert mode(target / "static" / "logo.png") == 0o400
    assert os.readlink(target / "conf") == "..data/conf"
    assert not (target / "app.ini").exists()


def test_secrets_are_never_world_readable(tmp_path: Path) -> None:
    sources = FakeSources(secrets={"s": SECRET})
    pod_volumes, pod = volumes_for(
        tmp_path,
        [
            {"name": "plain", "secret": {"secretName": "s"}},
            {"name": "wide", "secret": {"secretName": "s", "defaultMode": 0o777}},
            {
                "name": "item",
                "secret": {"secretName": "s", "items": [{"key": "password", "path": "p", "mode": 0o604}]},
            },
        ],
        [{"name": "plain", "mountPath": "/s", "readOnly": False}],
        sources,
    )
    pod_volumes.setup()
    base = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~secret"
    assert (base / "plain" / "password").read_bytes() == b"hunter2"
    assert mode(base / "plain" / "password") == 0o640  # kubelet: 0644
    assert mode(base / "wide" / "tls.key") == 0o770  # kubelet: 0777
    assert mode(base / "item" / "p") == 0o600  # kubelet: 0604
    assert mounted(pod_volumes, container(pod))[0][2] is True


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"configMap": {"name": "nope"}}, 'configmap "nope" not found'),
        ({"secret": {"secretName": "nope"}}, 'secret "nope" not found'),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "missing", "path": "m"}]}},
            "configmap references non-existent config key: missing",
        ),
        (
            {"secret": {"secretName": "s", "items": [{"key": "missing", "path": "m"}]}},
            "secret references non-existent secret key: missing",
        ),
        ({"configMap": {}}, "configMap.name is required"),
        (
            {"secret": {"secretName": "s", "defaultMode": 0o1777}},
            "defaultMode: must be a number between 0 and 0777",
        ),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "app.ini", "path": "../x"}]}},
            "invalid path: must not contain '..': ../x",
        ),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "app.ini", "path": "/etc/x"}]}},
            "invalid path: must be relative path: /etc/x",
        ),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "app.ini", "path": "..data"}]}},
            "invalid path: must not start with '..': ..data",
        ),
        (
            {
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "app.ini", "path": "a"}, {"key": "logo.png", "path": "a/b"}],
                }
            },
            'paths "a" and "a/b" conflict',
        ),
    ],
)
def test_config_map_and_secret_failures_are_failed_mount_messages(
    tmp_path: Path, volume: dict[str, Any], message: str
) -> None:
    sources = FakeSources(configmaps={"cfg": CFG}, secrets={"s": SECRET})
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "v", **volume}], sources=sources)
    with pytest.raises(VolumeError) as info:
        pod_volumes.setup()
    assert str(info.value).startswith('MountVolume.SetUp failed for volume "v" : ')
    assert message in str(info.value)
    assert info.value.volumes == ("v",)


def test_every_volume_is_tried_and_each_failure_reported(tmp_path: Path) -> None:
    pod_volumes, _pod = volumes_for(
        tmp_path,
        [
            {"name": "a", "configMap": {"name": "nope"}},
            {"name": "ok", "emptyDir": {}},
            {"name": "b", "secret": {"secretName": "gone"}},
        ],
    )
    with pytest.raises(VolumeError) as info:
        pod_volumes.setup()
    assert info.value.messages == (
        'MountVolume.SetUp failed for volume "a" : configmap "nope" not found',
        'MountVolume.SetUp failed for volume "b" : secret "gone" not found',
    )
    assert info.value.volumes == ("a", "b")
    assert (tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "ok").is_dir()


def test_optional_sources_may_be_missing(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": CFG})
    pod_volumes, pod = volumes_for(
        tmp_path,
        [
            {"name": "none", "configMap": {"name": "nope", "optional": True}},
            {"name": "nosecret", "secret": {"secretName": "nope", "optional": True}},
            {
                "name": "some",
                "configMap": {
                    "name": "cfg",
                    "optional": True,
                    "items": [{"key": "app.ini", "path": "a"}, {"key": "missing", "path": "m"}],
                },
            },
        ],
        [{"name": "none", "mountPath": "/none"}],
        sources,
    )
    pod_volumes.setup()
    base = tmp_path / "pods" / "uid" / "volumes"
    assert [p for p in os.listdir(base / "kubernetes.io~configmap" / "none") if not p.startswith("..")] == []
    assert os.listdir(base / "kubernetes.io~configmap" / "some") != []
    assert not (base / "kubernetes.io~configmap" / "some" / "m").exists()
    assert mounted(pod_volumes, container(pod)) == [
        (base / "kubernetes.io~configmap" / "none", "/none", True)
    ]
    sources.configmaps["nope"] = {"late": b"1"}  # appears later: the next refresh shows it
    assert pod_volumes.refresh() is True
    assert (base / "kubernetes.io~configmap" / "none" / "late").read_bytes() == b"1"


# --- refresh: kubelet's AtomicWriter ---------------------------------------------------------


def test_refresh_swaps_the_whole_set_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sources = FakeSources(configmaps={"cfg": {"a": b"old a", "b": b"old b"}}, clock=clock)
    pod_volumes, _pod = volumes_for(
        tmp_path, [{"name": "config", "configMap": {"name": "cfg"}}], sources=sources
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    first = os.readlink(target / "..data")
    clock.now += 30
    assert pod_volumes.next_refresh() == CONTENT_REFRESH_SECONDS - 30
    assert pod_volumes.refresh() is False  # nothing changed: nothing written
    assert os.readlink(target / "..data") == first

    sources.configmaps["cfg"] = {"a": b"new a", "c": b"new c"}
    real_replace = os.replace
    seen: list[tuple[bytes, bytes]] = []

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "..data":
            # the new set is complete on disk, and readers still see the whole old one
            new_dir = target / os.readlink(src)
            assert (new_dir / "a").read_bytes() == b"new a"
            assert (new_dir / "c").read_bytes() == b"new c"
            seen.append(((target / "a").read_bytes(), (target / "b").read_bytes()))
        real_replace(src, dst)
        if Path(dst).name == "..data":
            seen.append(((target / "a").read_bytes(), b""))

    monkeypatch.setattr(os, "replace", replace)
    assert pod_volumes.refresh() is True
    assert seen == [(b"old a", b"old b"), (b"new a", b"")]
    assert (target / "c").read_bytes() == b"new c"
    assert not os.path.lexists(target / "b")  # a removed key's link goes
    stamped = [p for p in os.listdir(target) if p.startswith("..20")]
    assert stamped == [os.readlink(target / "..data")]  # the old directory is gone
    assert stamped[0] != first


def test_refresh_keeps_the_files_when_the_source_fails(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": {"a": b"1"}})
    pod_volumes, _pod = volumes_for(
        tmp_path, [{"name": "config", "configMap": {"name": "cfg"}}], sources=sources
    )
    assert pod_volumes.refresh() is False  # before setup: nothing
    pod_volumes.setup()
    del sources.configmaps["cfg"]
    with pytest.raises(VolumeError, match='configmap "cfg" not found'):
        pod_volumes.refresh()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    assert (target / "a").read_bytes() == b"1"


def test_refresh_repairs_a_missing_user_visible_link(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": {"a": b"1"}})
    pod_volumes, _pod = volumes_for(
        tmp_path, [{"name": "config", "configMap": {"name": "cfg"}}], sources=sources
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    (target / "a").unlink()
    pod_volumes.refresh()
    assert (target / "a").read_bytes() == b"1"


# --- downwardAPI ---------------------------------------------------------------------------


def test_format_map_and_go_quote_as_kubelet_renders_labels() -> None:
    assert format_map({"b": "2", "a": 'x "y"', "c": ""}) == 'a="x \\"y\\""\nb="2"\nc=""'
    assert format_map({}) == ""
    assert go_quote("tab\there\n\x01\x7f\\ é 日本 \u200b \U0001f600") == (
        '"tab\\there\\n\\x01\\x7f\\\\ é 日本 \\u200b \U0001f600"'
    )


def test_downward_api_files(tmp_path: Path) -> None:
    items = [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "ns", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
        {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}, "mode": 0o600},
        {"path": "unset", "fieldRef": {"fieldPath": "metadata.labels['nope']"}},
        {
            "path": "mem",
            "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"},
        },
        {
            "path": "cpu",
            "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu", "divisor": "1m"},
        },
        {
            "path": "req",
            "resourceFieldRef": {"containerName": "main", "resource": "requests.cpu", "divisor": "1m"},
        },
    ]
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "info", "downwardAPI": {"items": items}}],
        [{"name": "info", "mountPath": "/info"}],
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~downward-api" / "info"
    files = {p: (target / p).read_text() for p in os.listdir(target) if not p.startswith("..")}
    assert files == {
        "labels": 'app="web"\ntier="front"',
        "annotations": 'example.com/owner="ops"\nnote="say \\"hi\\"\\n"',
        "name": "web",
        "ns": "shop",
        "uid": "1234-abcd",
        "tier": "front",
        "unset": "",
        "mem": "64",
        "cpu": "4000",  # no cpu limit: the node's allocatable
        "req": "250",
    }
    assert mode(target / "tier") == 0o600
    assert mode(target / "name") == 0o644
    assert mounted(pod_volumes, container(pod))[0][2] is True
    assert pod_volumes.next_refresh() is None  # changes come with the pod: refresh(pod)

    assert (
        pod_volumes.refresh(make_pod(pod["spec"]["volumes"], labels={"app": "web", "tier": "back"})) is True
    )
    assert (target / "tier").read_text() == "back"
    assert (target / "labels").read_text() == 'app="web"\ntier="back"'


def test_downward_api_errors_are_aggregated_as_kubelets(tmp_path: Path) -> None:
    items = [
        {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
        {"path": "x", "resourceFieldRef": {"containerName": "ghost", "resource": "limits.cpu"}},
    ]
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "info", "downwardAPI": {"items": items}}])
    assert setup_error(pod_volumes) == (
        'MountVolume.SetUp failed for volume "info" : '
        "[unsupported fieldPath: spec.nodeName, container ghost not found]"
    )


def test_volume_field_value_subscripts() -> None:
    pod = make_pod([])
    assert volume_field_value(pod, "metadata.annotations['example.com/owner']") == "ops"
    with pytest.raises(EnvError, match="does not support subscript"):
        volume_field_value(pod, "spec.nodeName['x']")
    with pytest.raises(EnvError, match="invalid key subscript"):
        volume_field_value(pod, "metadata.labels['-bad-']")


# --- projected and service account tokens --------------------------------------------------

KUBE_API_ACCESS = {
    "name": "kube-api-access-x7k2p",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                }
            },
        ],
    },
}


def test_the_default_service_account_volume(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"kube-root-ca.crt": {"ca.crt": b"PEM"}})
    pod_volumes, pod = volumes_for(
        tmp_path,
        [KUBE_API_ACCESS],
        [
            {
                "name": "kube-api-access-x7k2p",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            }
        ],
        sources,
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~projected" / "kube-api-access-x7k2p"
    assert (target / "token").read_text() == "token-1"
    assert mode(target / "token") == 0o600
    assert (target / "ca.crt").read_text() == "PEM"
    assert mode(target / "ca.crt") == 0o644
    assert (target / "namespace").read_text() == "shop"
    assert sources.token_calls == [
        {
            "namespace": "shop",
            "service_account": "robot",
            "pod_name": "web",
            "pod_uid": "1234-abcd",
            "audience": "",
            "expiration_seconds": 3607,
        }
    ]
    assert mounted(pod_volumes, container(pod)) == [
        (target, "/var/run/secrets/kubernetes.io/serviceaccount", True)
    ]


def test_projected_sources_secret_masking_audience_and_default_expiration(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": CFG}, secrets={"s": SECRET})
    volume = {
        "name": "all",
        "projected": {
            "defaultMode": 0o666,
            "sources": [
                {"secret": {"name": "s", "items": [{"key": "password", "path": "creds/pw"}]}},
                {"configMap": {"name": "cfg"}},
                {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}},
                {"configMap": {"name": "absent", "optional": True}},
            ],
        },
    }
    pod_volumes, _pod = volumes_for(tmp_path, [volume], sources=sources)
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~projected" / "all"
    assert mode(target / "creds" / "pw") == 0o660
    assert mode(target / "app.ini") == 0o666
    assert sources.token_calls[0]["audience"] == "vault"
    assert sources.token_calls[0]["expiration_seconds"] == 3600


@pytest.mark.parametrize(
    ("sources_", "message"),
    [
        (
            [{"clusterTrustBundle": {"name": "b", "path": "ca"}}],
            "clusterTrustBundle projections are not supported",
        ),
        ([{"serviceAccountToken": {"path": "t", "expirationSeconds": 599}}], "must be between 600 and"),
        (
            [{"serviceAccountToken": {"path": "t", "expirationSeconds": "1h"}}],
            "expected an integer, not a string",
        ),
        ([{"serviceAccountToken": {}}], "path is required"),
        ([{}], "must specify exactly one of configMap, secret, downwardAPI, serviceAccountToken"),
        ([{"configMap": {"name": "a"}, "secret": {"name": "b"}}], "must specify exactly one of"),
        (
            [{"configMap": {"name": "nope"}}, {"secret": {"name": "gone"}}],
            '[configmap "nope" not found, secret "gone" not found]',
        ),
    ],
)
def test_projected_failures(tmp_path: Path, sources_: list[Any], message: str) -> None:
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "p", "projected": {"sources": sources_}}])
    error = setup_error(pod_volumes)
    assert error.startswith('MountVolume.SetUp failed for volume "p" : ')
    assert message in error


def test_token_refresh_at_80_percent_of_its_lifetime(tmp_path: Path) -> None:
    clock = Clock()
    sources = FakeSources(clock=clock)
    volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    pod_volumes, _pod = volumes_for(tmp_path, [volume], sources=sources)
    assert pod_volumes.next_refresh() is None
    pod_volumes.setup()
    token = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~projected" / "t" / "token"
    assert pod_volumes.next_refresh() == pytest.approx(2880)  # 80% of 3600 s
    clock.now += 2000
    assert pod_volumes.refresh() is False  # not due: the cached token, no request
    pod_volumes.setup()
    assert len(sources.token_calls) == 1
    assert pod_volumes.next_refresh() == pytest.approx(880)
    clock.now += 900
    assert pod_volumes.next_refresh() == 0.0
    assert pod_volumes.refresh() is True
    assert token.read_text() == "token-2"
    assert mode(token) == 0o600
    assert pod_volumes.next_refresh() == pytest.approx(2880)


def test_a_long_lived_token_is_refreshed_after_a_day(tmp_path: Path) -> None:
    sources = FakeSources()
    sources.token_lifetime = 7 * 24 * 3600
    volume = {
        "name": "t",
        "projected": {
            "sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 7 * 24 * 3600}}]
        },
    }
    pod_volumes, _pod = volumes_for(tmp_path, [volume], sources=sources)
    pod_volumes.setup()
    assert pod_volumes.next_refresh() == pytest.approx(24 * 3600)


def test_a_server_shortened_token_is_refreshed_by_its_real_lifetime(tmp_path: Path) -> None:
    sources = FakeSources()
    sources.token_lifetime = 1000  # the apiserver caps the lifetime
    volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    pod_volumes, _pod = volumes_for(tmp_path, [volume], sources=sources)
    pod_volumes.setup()
    assert pod_volumes.next_refresh() == pytest.approx(800)


def test_a_failed_token_refresh_keeps_the_token_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    sources = FakeSources(clock=clock)
    volume = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    pod_volumes, _pod = volumes_for(tmp_path, [volume], sources=sources)
    pod_volumes.setup()
    sources.token_error = 'serviceaccounts "robot" not found'
    clock.now += 3000
    assert pod_volumes.refresh() is False  # still valid: kept (and logged without the token)
    clock.now += 700
    with pytest.raises(VolumeError, match='failed to fetch token: serviceaccounts "robot" not found'):
        pod_volumes.refresh()


def test_next_refresh_takes_the_earliest(tmp_path: Path) -> None:
    clock = Clock()
    sources = FakeSources(configmaps={"kube-root-ca.crt": {"ca.crt": b"PEM"}}, clock=clock)
    pod_volumes, _pod = volumes_for(tmp_path, [KUBE_API_ACCESS], sources=sources)
    pod_volumes.setup()
    assert pod_volumes.next_refresh() == CONTENT_REFRESH_SECONDS
    clock.now += 100
    assert pod_volumes.next_refresh() == 0.0


# --- hostPath --------------------------------------------------------------------------------


def test_host_path_directory_is_used_in_place(tmp_path: Path) -> None:
    host = tmp_path / "host" / "data"
    host.mkdir(parents=True)
    (host / "keep").write_text("mine")
    pod_volumes, pod = volumes_for(
        tmp_path,
        [
            {"name": "data", "hostPath": {"path": str(host), "type": "Directory"}},
            {
                "name": "made",
                "hostPath": {"path": str(tmp_path / "host" / "made" / "deep"), "type": "DirectoryOrCreate"},
            },
            {"name": "untyped", "hostPath": {"path": str(tmp_path / "host" / "untyped")}},
        ],
        [{"name": "data", "mountPath": "/data"}, {"name": "made", "mountPath": "/made", "readOnly": True}],
    )
    pod_volumes.setup()
    assert mode(tmp_path / "host" / "made" / "deep") & 0o755 == 0o755
    assert (tmp_path / "host" / "untyped").is_dir()
    assert mounted(pod_volumes, container(pod)) == [
        (host, "/data", False),
        (tmp_path / "host" / "made" / "deep", "/made", True),
    ]
    pod_volumes.cleanup()
    assert not (tmp_path / "pods" / "uid" / "volumes").exists()
    assert (host / "keep").read_text() == "mine"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("Directory", "hostPath type check failed: {path} is not a directory"),
        ("DirectoryOrCreate", "hostPath type check failed: {path} is not a directory"),
        ("File", "hostPath type File cannot be mounted: a WASI module can only mount directories"),
        (
            "FileOrCreate",
            "hostPath type FileOrCreate cannot be mounted: a WASI module can only mount directories",
        ),
        ("Socket", "a WASI module can only mount directories"),
        ("CharDevice", "a WASI module can only mount directories"),
        ("BlockDevice", "a WASI module can only mount directories"),
        ("Pipe", "Pipe is an invalid volume type"),
    ],
)
def test_host_path_type_checks(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "h", "hostPath": {"path": str(path), "type": kind}}])
    error = setup_error(pod_volumes)
    assert error.startswith('MountVolume.SetUp failed for volume "h" : ')
    assert message.format(path=path) in error


def test_host_path_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    pod_volumes, _pod = volumes_for(
        tmp_path, [{"name": "h", "hostPath": {"path": str(path), "type": "Directory"}}]
    )
    assert setup_error(pod_volumes).endswith(f"hostPath type check failed: {path} is not a directory")
    assert not path.exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("relative/dir", "must be an absolute path"),
        ("/var/../etc", "must not contain '..'"),
        ("", "must be an absolute path"),
    ],
)
def test_host_path_paths(tmp_path: Path, path: str, message: str) -> None:
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "h", "hostPath": {"path": path}}])
    assert message in setup_error(pod_volumes)


def test_an_untyped_host_path_file_cannot_be_a_preopen(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    pod_volumes, pod = volumes_for(
        tmp_path, [{"name": "h", "hostPath": {"path": str(path)}}], [{"name": "h", "mountPath": "/f"}]
    )
    pod_volumes.setup()
    assert "a WASI module can only mount directories" in preopen_error(pod_volumes, pod)


# --- subPath ---------------------------------------------------------------------------------


def test_sub_paths_inside_an_empty_dir_are_created(tmp_path: Path) -> None:
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "data", "emptyDir": {}}],
        [
            {"name": "data", "mountPath": "/a", "subPath": "one/two"},
            {"name": "data", "mountPath": "/b", "subPathExpr": "$(POD_NAME)/logs"},
            {"name": "data", "mountPath": "/c", "subPathExpr": "$$(LITERAL)"},
        ],
    )
    pod_volumes.setup()
    data = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "data"
    assert mounted(pod_volumes, container(pod), {"POD_NAME": "web"}) == [
        (data / "one" / "two", "/a", False),
        (data / "web" / "logs", "/b", False),
        (data / "$(LITERAL)", "/c", False),
    ]
    assert mode(data / "one" / "two") == 0o777  # the volume's mode, as kubelet does


def test_a_symlink_inside_the_volume_is_followed(tmp_path: Path) -> None:
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "data", "emptyDir": {}}],
        [{"name": "data", "mountPath": "/a", "subPath": "link/x"}],
    )
    pod_volumes.setup()
    data = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "data"
    (data / "real" / "x").mkdir(parents=True)
    (data / "link").symlink_to("real")
    assert mounted(pod_volumes, container(pod)) == [(data / "real" / "x", "/a", False)]


@pytest.mark.parametrize(
    ("mount", "env", "message"),
    [
        ({"subPath": "../escape"}, {}, "subPath \"../escape\" must not contain '..'"),
        ({"subPath": "a/../../x"}, {}, "must not contain '..'"),
        ({"subPath": "/etc"}, {}, 'subPath "/etc" must not be an absolute path'),
        ({"subPath": "out"}, {}, 'subPath "out" resolves outside the volume'),
        ({"subPath": "out/deeper"}, {}, 'subPath "out/deeper" resolves outside the volume'),
        ({"subPath": "abs"}, {}, 'subPath "abs" resolves outside the volume'),
        ({"subPath": "dangling/x"}, {}, 'subPath "dangling/x" resolves outside the volume'),
        ({"subPath": "file"}, {}, "is not a directory: a WASI module can only mount directories"),
        ({"subPathExpr": "$(DIR)"}, {"DIR": ".."}, "must not contain '..'"),
        ({"subPathExpr": "$(A)/$(B)"}, {"A": "a", "B": ""}, "subPathExpr: missing value for B"),
        ({"subPathExpr": "$(X)", "subPath": "y"}, {}, "subPath and subPathExpr are mutually exclusive"),
        ({"subPath": 7}, {}, "subPath must be a string, not a number"),
    ],
)
def test_sub_paths_cannot_escape_the_volume(
    tmp_path: Path, mount: dict[str, Any], env: dict[str, str], message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pod_volumes, pod = volumes_for(
        tmp_path, [{"name": "data", "emptyDir": {}}], [{"name": "data", "mountPath": "/a", **mount}]
    )
    pod_volumes.setup()
    data = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "data"
    (data / "out").symlink_to("../../../../../outside")
    (data / "abs").symlink_to(outside)
    (data / "dangling").symlink_to(tmp_path / "nowhere")
    (data / "file").write_text("x")
    error = preopen_error(pod_volumes, pod, env)
    assert error.startswith('volumeMount "data": ')
    assert message in error
    assert not (tmp_path / "nowhere").exists()
    assert os.listdir(outside) == []


def test_sub_paths_inside_a_host_path_stay_inside_it(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "up").symlink_to("..")
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "h", "hostPath": {"path": str(host), "type": "Directory"}}],
        [{"name": "h", "mountPath": "/h", "subPath": "up"}],
    )
    pod_volumes.setup()
    assert 'subPath "up" resolves outside the volume' in preopen_error(pod_volumes, pod)


@pytest.mark.parametrize("through_symlink", [False, True])
def test_a_sub_path_into_a_config_map_keeps_its_content_of_the_start(
    tmp_path: Path, through_symlink: bool
) -> None:
    if through_symlink:  # the data directory is reached through a symlink
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to("real")
        tmp_path = tmp_path / "link"
    sources = FakeSources(configmaps={"cfg": {"a": b"v1"}})
    source = {"name": "cfg", "items": [{"key": "a", "path": "conf/a"}]}
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "config", "configMap": source}],
        [
            {"name": "config", "mountPath": "/conf", "subPath": "conf"},
            {"name": "config", "mountPath": "/all"},
        ],
        sources,
    )
    pod_volumes.setup()
    target = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~configmap" / "config"
    (conf, _guest, read_only), (whole, _guest2, _ro) = mounted(pod_volumes, container(pod))
    assert read_only is True
    assert conf.parent.name.startswith("..20")
    assert whole == Path(os.path.realpath(target))
    sources.configmaps["cfg"] = {"a": b"v2"}
    assert pod_volumes.refresh() is True
    assert (conf / "a").read_bytes() == b"v1"  # kubelet's bind mount keeps it too
    assert (target / "conf" / "a").read_bytes() == b"v2"
    sources.configmaps["cfg"] = {"a": b"v3"}
    assert pod_volumes.refresh() is True
    assert (conf / "a").read_bytes() == b"v1"
    assert len([p for p in os.listdir(target) if p.startswith("..20")]) == 2  # the pinned one and the current


def test_a_missing_sub_path_in_a_config_map_is_not_created(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": CFG})
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "config", "configMap": {"name": "cfg"}}],
        [{"name": "config", "mountPath": "/x", "subPath": "nope"}],
        sources,
    )
    pod_volumes.setup()
    assert 'subPath "nope" does not exist in the volume' in preopen_error(pod_volumes, pod)
    assert "can only mount directories" in preopen_error(
        pod_volumes,
        {
            "spec": {
                "containers": [
                    {"volumeMounts": [{"name": "config", "mountPath": "/x", "subPath": "app.ini"}]}
                ]
            }
        },
    )


# --- mounts and volume specs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mounts", "message"),
    [
        ([{"name": "ghost", "mountPath": "/g"}], 'volumeMount "ghost": no volume named "ghost"'),
        ([{"name": "data"}], 'volumeMount "data": mountPath is required'),
        ([{"mountPath": "/x"}], "volumeMounts[0]: name is required"),
        (
            [{"name": "data", "mountPath": "/x"}, {"name": "data", "mountPath": "/x"}],
            'volumeMounts[1]: mountPath "/x" must be unique',
        ),
        (
            [{"name": "data", "mountPath": "/x", "readOnly": "yes"}],
            "readOnly must be a boolean, not a string",
        ),
        ("data", "volumeMounts: expected a list, not a string"),
        (["data"], "volumeMounts[0]: expected an object, not a string"),
    ],
)
def test_bad_mounts(tmp_path: Path, mounts: Any, message: str) -> None:
    pod_volumes, pod = volumes_for(tmp_path, [{"name": "data", "emptyDir": {}}], mounts)
    pod_volumes.setup()
    assert message in preopen_error(pod_volumes, pod)


def test_mounting_before_setup_fails_cleanly(tmp_path: Path) -> None:
    pod_volumes, pod = volumes_for(
        tmp_path, [{"name": "data", "emptyDir": {}}], [{"name": "data", "mountPath": "/d"}]
    )
    assert preopen_error(pod_volumes, pod) == 'volumeMount "data": volume "data" is not set up'
    assert mounted(pod_volumes, {"name": "other"}) == []


@pytest.mark.parametrize(
    "kind",
    ["persistentVolumeClaim", "nfs", "csi", "ephemeral", "image", "iscsi", "gitRepo", "awsElasticBlockStore"],
)
def test_unsupported_volume_types(tmp_path: Path, kind: str) -> None:
    pod_volumes, _pod = volumes_for(tmp_path, [{"name": "v", kind: {"x": 1}}])
    with pytest.raises(VolumeError) as info:
        pod_volumes.setup()
    assert str(info.value) == f'volume "v": {kind} volumes are not supported by wasmlet'
    assert info.value.volumes == ("v",)


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ([{"name": "v"}], 'volume "v": must specify a volume type'),
        (
            [{"name": "v", "emptyDir": {}, "secret": {}}],
            "may not specify more than 1 volume type (it specifies emptyDir, secret)",
        ),
        (
            [{"name": "../etc", "emptyDir": {}}],
            'volume "../etc": the name must be a lowercase RFC 1123 label',
        ),
        (
            [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
            'volume "v": the name is used twice',
        ),
        ([{"emptyDir": {}}], "volumes[0]: name is required"),
        ([{"name": "v", "emptyDir": []}], 'volume "v": emptyDir: expected an object, not a list'),
        ({"v": {}}, "volumes: expected a list, not an object"),
    ],
)
def test_malformed_volumes(tmp_path: Path, volumes: Any, message: str) -> None:
    pod_volumes, _pod = volumes_for(tmp_path, volumes)
    assert message in setup_error(pod_volumes)


def test_cleanup_removes_the_pod_volumes_but_not_what_symlinks_point_to(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "precious").write_text("keep")
    sources = FakeSources(configmaps={"cfg": CFG})
    pod_volumes, _pod = volumes_for(
        tmp_path,
        [
            {"name": "data", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "h", "hostPath": {"path": str(host)}},
        ],
        sources=sources,
    )
    pod_volumes.setup()
    data = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "data"
    (data / "to-host").symlink_to(host)
    pod_volumes.cleanup()
    pod_volumes.cleanup()  # twice is fine
    assert not (tmp_path / "pods" / "uid" / "volumes").exists()
    assert (host / "precious").read_text() == "keep"
    assert pod_volumes.next_refresh() is None


# --- a module reads a configMap volume through wasmtime's WASI --------------------------------

WASI = "wasi_snapshot_preview1"
# cat: path_open(preopen fd 3, argv[1], rights fd_read), fd_read, fd_write to stdout;
# exits with the errno on failure.
CAT = f"""(module
  (import "{WASI}" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "{WASI}" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "_start") (local $path i32) (local $err i32)
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 16) (i32.const 256)))
    (local.set $path (i32.load (i32.const 20)))
    (local.set $err (call $path_open (i32.const 3) (i32.const 1) (local.get $path)
      (call $strlen (local.get $path)) (i32.const 0) (i64.const 2) (i64.const 0)
      (i32.const 0) (i32.const 8)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (i32.store (i32.const 1024) (i32.const 2048))
    (i32.store (i32.const 1028) (i32.const 1000))
    (drop (call $fd_read (i32.load (i32.const 8)) (i32.const 1024) (i32.const 1) (i32.const 12)))
    (i32.store (i32.const 1028) (i32.load (i32.const 12)))
    (drop (call $fd_write (i32.const 1) (i32.const 1024) (i32.const 1) (i32.const 12)))))"""


def cat(preopen: tuple[Path, str, bool], path: str, out: Path) -> tuple[int, bytes]:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["cat", path]
    wasi.stdout_file = str(out)
    host, guest, read_only = preopen
    wasi.preopen_dir(str(host), guest, fs_mutable=not read_only)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, wasmtime.Module(engine, CAT))
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    code = 0
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        code = exc.code
    return code, out.read_bytes()


def test_a_module_reads_the_files_through_the_data_symlinks(tmp_path: Path) -> None:
    sources = FakeSources(configmaps={"cfg": {"a": b"one"}})
    source = {"name": "cfg", "items": [{"key": "a", "path": "a"}, {"key": "a", "path": "dir/b"}]}
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "config", "configMap": source}],
        [{"name": "config", "mountPath": "/etc/app"}],
        sources,
    )
    pod_volumes.setup()
    (preopen,) = mounted(pod_volumes, container(pod))
    assert cat(preopen, "a", tmp_path / "out1") == (0, b"one")
    assert cat(preopen, "dir/b", tmp_path / "out2") == (0, b"one")
    sources.configmaps["cfg"] = {"a": b"two"}
    pod_volumes.refresh()
    assert cat(preopen, "a", tmp_path / "out3") == (0, b"two")  # the same preopen sees the update


# --- ApiSources: configmap_files and token over the apiserver ---------------------------------


class FakeClient:
    def __init__(self, answers: Mapping[str, Any]) -> None:
        self.answers = answers
        self.posts: list[tuple[str, Any]] = []

    def _answer(self, method: str, path: str) -> Any:
        answer = self.answers.get(path)
        if answer is None:
            raise ApiError(method, path, 404, {"message": "not found"})
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def get(self, path: str) -> Any:
        return self._answer("GET", path)

    def post(self, path: str, body: Any) -> Any:
        self.posts.append((path, body))
        return self._answer("POST", path)


def test_api_sources_configmap_files_and_token() -> None:
    token_path = "/api/v1/namespaces/shop/serviceaccounts/robot/token"
    client = FakeClient(
        {
            "/api/v1/namespaces/shop/configmaps/cfg": {"data": {"a": "é"}, "binaryData": {"b": "AAH/"}},
            token_path: {"status": {"token": "jwt", "expirationTimestamp": "2030-01-01T00:00:00Z"}},
        }
    )
    sources = ApiSources(cast(Client, client))
    assert sources.configmap_files("shop", "cfg") == {"a": "é".encode(), "b": b"\x00\x01\xff"}
    assert sources.configmap_files("shop", "nope") is None
    token, expires = sources.token(
        "shop", "robot", pod_name="web", pod_uid="u1", audience="vault", expiration_seconds=3607
    )
    assert (token, expires) == ("jwt", datetime(2030, 1, 1, tzinfo=UTC))
    assert client.posts == [
        (
            token_path,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 3607,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "u1"},
                    "audiences": ["vault"],
                },
            },
        )
    ]
    sources.token("shop", "robot", pod_name="web", pod_uid="u1", audience="", expiration_seconds=600)
    assert "audiences" not in client.posts[1][1]["spec"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "failed to fetch token: not found"),
        (
            ApiError("POST", "/x", 403, {"message": "forbidden by the Node authorizer"}),
            "forbidden by the Node",
        ),
        ({"status": {}}, "the TokenRequest answer has no status.token"),
        ({"status": {"token": "jwt", "expirationTimestamp": "soon"}}, "bad expirationTimestamp"),
    ],
)
def test_api_sources_token_failures_never_show_a_token(answer: Any, message: str) -> None:
    path = "/api/v1/namespaces/shop/serviceaccounts/robot/token"
    sources = ApiSources(cast(Client, FakeClient({path: answer} if answer is not None else {})))
    with pytest.raises(EnvError, match=message) as info:
        sources.token("shop", "robot", pod_name="web", pod_uid="u1", audience="", expiration_seconds=600)
    assert "jwt" not in str(info.value)


class LaggingGraph(FakeClient):
    """The Node authorizer refuses the first ``lagging`` requests: its graph has not seen the pod."""

    def __init__(self, answers: Mapping[str, Any], lagging: int) -> None:
        super().__init__(answers)
        self.lagging = lagging
        self.calls = 0

    def _answer(self, method: str, path: str) -> Any:
        self.calls += 1
        if self.calls <= self.lagging:
            message = "forbidden: no relationship found between node 'n1' and this object"
            raise ApiError(method, path, 403, {"message": message})
        return super()._answer(method, path)


def test_api_sources_wait_while_the_node_authorizer_graph_lags() -> None:
    """After a bind the authorizer may refuse a moment longer; the first answer users see is the real one."""
    naps: list[float] = []
    client = LaggingGraph({}, lagging=3)
    sources = ApiSources(cast(Client, client), sleep=naps.append)
    assert sources.configmap_files("shop", "cfg") is None  # not found, not "forbidden"
    assert client.calls == 4 and naps == [0.1, 0.2, 0.4]

    token_path = "/api/v1/namespaces/shop/serviceaccounts/robot/token"
    answer = {"status": {"token": "jwt", "expirationTimestamp": "2030-01-01T00:00:00Z"}}
    client = LaggingGraph({token_path: answer}, lagging=1)
    sources = ApiSources(cast(Client, client), sleep=naps.append)
    token = sources.token("shop", "robot", pod_name="w", pod_uid="u", audience="", expiration_seconds=600)
    assert token[0] == "jwt"


def test_api_sources_give_up_on_a_graph_that_never_learns() -> None:
    naps: list[float] = []
    sources = ApiSources(cast(Client, LaggingGraph({}, lagging=1000)), sleep=naps.append, graph_lag=3.0)
    with pytest.raises(EnvError, match="no relationship found"):
        sources.configmap_files("shop", "cfg")
    assert naps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # 3 s of waiting, then one last try
    refusal = ApiError("GET", "/x", 403, {"message": "no"})
    client = FakeClient({"/api/v1/namespaces/shop/secrets/s": refusal})
    denied = ApiSources(cast(Client, client), sleep=naps.append)
    naps.clear()
    with pytest.raises(EnvError, match="403 no"):
        denied.secret("shop", "s")
    assert naps == []  # any other refusal is final


# --- properties: any spec gives preopens inside the pod's volumes, or a VolumeError -------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**33), st.text(max_size=5), st.floats(allow_nan=False)
)
JUNK = st.one_of(
    JSON_LEAVES, st.lists(JSON_LEAVES, max_size=2), st.dictionaries(st.text(max_size=3), JSON_LEAVES)
)
GOOD_NAMES = ["data", "cfg", "sec", "info", "proj", "host"]


def spec_strategies(junk: bool) -> st.SearchStrategy[tuple[Any, Any]]:
    """(volumes, volumeMounts), the mounts mostly naming the volumes.

    Paths, subPaths, modes and item keys are hostile in both; with ``junk``, any value may also
    have the wrong shape, names be invalid and volume types unsupported.
    """

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if not junk:
            return strategy
        return st.sampled_from(range(10)).flatmap(lambda i: JUNK if i == 9 else strategy)

    def mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
        """One of ``good`` four times in five, else one of ``bad``."""
        return st.sampled_from(range(5)).flatmap(lambda i: st.sampled_from(bad if i == 4 else good))

    def obj(required: Mapping[str, Any] | None = None, **optional: Any) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {k: maybe(v) for k, v in (required or {}).items()},
            optional={k: maybe(v) for k, v in optional.items()},
        )

    names = (
        mostly(GOOD_NAMES, ["Bad_Name", "", "../x", "a" * 64, "a/b"]) if junk else st.sampled_from(GOOD_NAMES)
    )
    paths = mostly(
        ["a", "dir/a", "b", "conf/x/y", "./c"],
        ["..data", "../up", "/abs", "", ".", "a/../b", "x" * 300, "ok\0nul", "d\ud800", "a//"],
    )
    modes = mostly([0o644, 0o600, 0o777, 0o400, 0], [-1, 0o1000, True, 0o4755])
    key_items = st.lists(
        obj({"key": mostly(["a", "b"], ["missing", ""]), "path": paths}, mode=modes), max_size=3
    )
    field_paths = mostly(
        [
            "metadata.labels",
            "metadata.annotations",
            "metadata.name",
            "metadata.labels['app']",
            "metadata.uid",
        ],
        ["spec.nodeName", "x['y']", "metadata.labels['-']", "status.podIP"],
    )
    downward_items = st.lists(
        st.one_of(
            obj(
                {"path": paths, "fieldRef": obj({"fieldPath": field_paths}, apiVersion=st.just("v1"))},
                mode=modes,
            ),
            obj(
                {
                    "path": paths,
                    "resourceFieldRef": obj(
                        {
                            "containerName": mostly(["main"], ["ghost", ""]),
                            "resource": mostly(["limits.cpu", "requests.memory"], ["limits.pods", "cpu"]),
                        },
                        divisor=mostly(["1m", "0", "1Ki"], ["bad", -1]),
                    ),
                },
                mode=modes,
            ),
        ),
        max_size=3,
    )
    object_source = obj(
        {"name": mostly(["cfg", "sec"], ["nope", ""])}, items=key_items, optional=st.booleans()
    )
    projection = st.one_of(
        obj({"configMap": object_source}),
        obj({"secret": object_source}),
        obj({"downwardAPI": obj(items=downward_items)}),
        obj(
            {"serviceAccountToken": obj({"path": paths}, audience=st.sampled_from(["", "vault"]))},
            expirationSeconds=mostly([600, 3607, 86400 * 7], [0, 599, 2**33]),
        ),
        obj({"clusterTrustBundle": st.just({"name": "b"})}),
        obj({"configMap": object_source, "secret": object_source}),
    )
    sources = {
        "emptyDir": obj(
            medium=mostly(["", "Memory"], ["HugePages", "Disk"]), sizeLimit=mostly(["1Mi"], ["x"])
        ),
        "configMap": obj(
            {"name": mostly(["cfg"], ["nope", ""])},
            items=key_items,
            defaultMode=modes,
            optional=st.booleans(),
        ),
        "secret": obj(
            {"secretName": mostly(["sec"], ["nope", ""])},
            items=key_items,
            defaultMode=modes,
            optional=st.booleans(),
        ),
        "downwardAPI": obj(items=downward_items, defaultMode=modes),
        "projected": obj(sources=st.lists(projection, max_size=3), defaultMode=modes),
        "hostPath": obj(
            {
                "path": mostly(
                    ["{host}", "{host}/sub", "{host}/new"], ["{host}/file", "relative", "/..", "{host}/../x"]
                )
            },
            type=mostly(["", "Directory", "DirectoryOrCreate"], ["File", "FileOrCreate", "Socket", "Nope"]),
        ),
    }
    if junk:
        sources["persistentVolumeClaim"] = obj(claimName=st.just("c"))
    volume = st.sampled_from(sorted(sources)).flatmap(
        lambda kind: st.fixed_dictionaries({"name": names, kind: maybe(sources[kind])})
    )
    volumes = maybe(
        st.lists(
            maybe(volume),
            max_size=3,
            unique_by=lambda v: str(v.get("name")) if isinstance(v, dict) else repr(v),
        )
    )
    sub_paths = mostly(
        ["a", "a/b", "inside", "conf", "dir", "link/x"],
        ["..", "../x", "/etc", "out", "out/x", "file", "a\0b", "b"],
    )
    mount_paths = (
        mostly(["/a", "/b", "/c"], ["", "/c\0"]) if junk else st.sampled_from(["/a", "/b", "/c", "/d"])
    )

    def mounts_for(volume_list: Any) -> st.SearchStrategy[Any]:
        listed = volume_list if isinstance(volume_list, list) else []
        present = [v["name"] for v in listed if isinstance(v, dict) and isinstance(v.get("name"), str)]
        mount_names = st.sampled_from(present) if present else names
        if junk:
            mount_names = st.one_of(mount_names, names)
        mount = st.one_of(
            obj({"name": mount_names, "mountPath": mount_paths}, readOnly=st.booleans()),
            obj(
                {"name": mount_names, "mountPath": mount_paths, "subPath": sub_paths}, readOnly=st.booleans()
            ),
            obj(
                {
                    "name": mount_names,
                    "mountPath": mount_paths,
                    "subPathExpr": mostly(["$(DIR)", "x/$(DIR)"], ["$(NONE)", "$(UP)", "$(LINK)"]),
                },
                subPath=mostly([""], ["a"]),
            ),
        )
        if junk:
            return maybe(st.lists(maybe(mount), max_size=4))
        return st.lists(mount, min_size=1, max_size=4, unique_by=lambda m: str(m.get("mountPath")))

    return volumes.flatmap(lambda vs: st.tuples(st.just(vs), mounts_for(vs)))


def _expand_host(value: Any, host: Path) -> Any:
    if isinstance(value, dict):
        return {k: _expand_host(v, host) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_host(v, host) for v in value]
    if isinstance(value, str) and value.startswith("{host}"):
        return value.replace("{host}", str(host))
    return value


def _inside(path: Path, base: Path) -> bool:
    real, real_base = Path(os.path.realpath(path)), Path(os.path.realpath(base))
    return real == real_base or real_base in real.parents


def check_spec(volumes: Any, mounts: Any, refresh: bool) -> list[tuple[Path, str, bool]]:
    """Set up, maybe refresh, mount: only VolumeErrors, and every preopen inside the pod's
    volumes or a hostPath (whatever symlinks a module left in its emptyDirs)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        host = base / "host"
        secret_place = base / "secret-place"
        secret_place.mkdir()
        host.mkdir()
        (host / "sub").mkdir()
        (host / "file").write_text("x")
        (host / "out").symlink_to(secret_place)
        clock = Clock()
        sources = FakeSources(
            configmaps={"cfg": {"a": b"A", "b": b"B"}}, secrets={"sec": {"a": b"S"}}, clock=clock
        )
        pod = make_pod(_expand_host(volumes, host))
        pod["spec"]["containers"][0]["volumeMounts"] = mounts
        root = base / "pods" / "uid" / "volumes"
        pod_volumes = PodVolumes(
            pod,
            root,
            sources,
            allocatable={"cpu": "2"},
            host_paths=HostPathPolicy.of([host], [root]),
            clock=clock,
        )
        with contextlib.suppress(VolumeError):
            pod_volumes.setup()
        for empty in root.glob("kubernetes.io~empty-dir/*"):  # a module's symlinks, escaping or not
            (empty / "out").symlink_to(secret_place)
            (empty / "inside").mkdir()
            (empty / "file").write_text("x")
            (empty / "link").symlink_to("inside")
        if refresh:
            clock.now += 3000
            sources.configmaps["cfg"] = {"a": b"A2"}
            with contextlib.suppress(VolumeError):
                pod_volumes.refresh()
        try:
            preopens = mounted(pod_volumes, container(pod), {"DIR": "d", "UP": "..", "LINK": "out"})
        except VolumeError:
            preopens = []
        expanded = pod["spec"]["volumes"]
        host_paths = [
            Path(v["hostPath"]["path"])
            for v in (expanded if isinstance(expanded, list) else [])
            if isinstance(v, dict)
            and isinstance(v.get("hostPath"), dict)
            and isinstance(v["hostPath"].get("path"), str)
        ]
        for path, guest, read_only in preopens:
            assert path.is_dir()
            assert isinstance(guest, str)
            assert guest
            assert isinstance(read_only, bool)
            assert _inside(path, root) or any(_inside(path, h) for h in host_paths)
            assert not _inside(path, secret_place)
        assert os.listdir(secret_place) == []
        pod_volumes.usage_exceeded()
        pod_volumes.next_refresh()
        pod_volumes.cleanup()
        assert not root.exists()
        assert (host / "file").read_text() == "x"
        return preopens


JUNK_SPECS = spec_strategies(junk=True)
SPECS = spec_strategies(junk=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=JUNK_SPECS, refresh=st.booleans())
def test_any_spec_shape_raises_only_volume_errors(spec: tuple[Any, Any], refresh: bool) -> None:
    check_spec(*spec, refresh)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, refresh=st.booleans())
def test_hostile_paths_never_give_a_preopen_outside_the_volumes(spec: tuple[Any, Any], refresh: bool) -> None:
    check_spec(*spec, refresh)


class CountingClient(FakeClient):
    def __init__(self, answers: Mapping[str, Any]) -> None:
        super().__init__(answers)
        self.calls: list[str] = []

    def get(self, path: str) -> Any:
        self.calls.append(path)
        return super().get(path)


def test_api_sources_cache_reads_for_their_ttl() -> None:
    path = "/api/v1/namespaces/shop/configmaps/kube-root-ca.crt"
    client = CountingClient({path: {"data": {"ca.crt": "PEM"}}})
    now = [100.0]
    sources = ApiSources(cast(Client, client), ttl=10, clock=lambda: now[0])
    for _pod in range(1000):
        assert sources.configmap_files("shop", "kube-root-ca.crt") == {"ca.crt": b"PEM"}
    assert sources.configmap("shop", "missing") is None
    assert sources.configmap("shop", "missing") is None
    assert client.calls == [path, "/api/v1/namespaces/shop/configmaps/missing"]
    now[0] += 10
    sources.configmap_files("shop", "kube-root-ca.crt")
    assert client.calls[-1] == path and len(client.calls) == 3


# --- the subPath race (CVE-2017-1002101): a module flips a directory to a symlink ---------------


def test_a_sub_path_flipped_to_a_symlink_while_mounting_never_shows_the_host(tmp_path: Path) -> None:
    """A sibling swaps directory ``d`` in the shared emptyDir with a symlink to a secret directory of
    the host's (renameat2 RENAME_EXCHANGE: ``d`` never goes missing), as fast as it can, while the
    container with ``subPath: d`` is mounted and started again and again on the real runtime:
    every start either fails to mount or reads the volume's own ``marker``."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "marker").write_text("host secret")
    pod_volumes, pod = volumes_for(
        tmp_path,
        [{"name": "shared", "emptyDir": {}}],
        [{"name": "shared", "mountPath": "/d", "subPath": "d"}],
    )
    pod_volumes.setup()
    shared = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "shared"
    (shared / "d").mkdir()
    (shared / "d" / "marker").write_text("inside")
    (shared / "link").symlink_to(secret)
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    names = (bytes(shared / "d"), bytes(shared / "link"))
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            assert libc.renameat2(at_fdcwd, names[0], at_fdcwd, names[1], rename_exchange) == 0

    runtime = Runtime(tmp_path / "cache")
    (tmp_path / "cat.wasm").write_bytes(wasmtime.wat2wasm(CAT))
    module = runtime.precompile(tmp_path / "cat.wasm")
    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    seen: list[bytes] = []
    refused = 0
    try:
        for _attempt in range(300):
            try:
                preopens = pod_volumes.preopens(container(pod))
            except VolumeError as exc:
                assert "changed while it was mounted" in str(exc) or "resolves outside the volume" in str(exc)
                refused += 1
                continue
            out: list[bytes] = []
            run_spec = RunSpec(module, ["cat", "marker"], {}, out.append, out.append, preopens=preopens)
            status = runtime.start(run_spec, lambda _status: None).wait(10)
            assert status is not None and all(held.closed for held, _g, _r in preopens)
            seen.append(b"".join(out))
    finally:
        stop.set()
        flipper.join()
        runtime.close()
    assert b"host secret" not in b"".join(seen)
    assert set(seen) == {b"inside"}
    assert refused < 300  # the race was run: some starts got through
