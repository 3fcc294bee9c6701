"""A new pod's TokenRequest racing NodeRestriction's view of its binding: quiet retries, then FailedMount."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from wasmlet.kube.client import ApiError, Client
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.sources import ApiSources
from wasmlet.pod.volumes import tokens
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.pod.volumes.manager import MOUNT_RETRY_START, VolumeManager
from wasmlet.pod.volumes.pod_volumes import PodVolumes
from wasmlet.pod.volumes.spec import VolumeError

TOKEN_PATH = "/api/v1/namespaces/shop/serviceaccounts/default/token"
# What the apiserver answers (NodeRestriction's admission.NewForbidden on the TokenRequest).
ELSEWHERE = (
    'serviceaccounts "default" is forbidden: '
    "node requested token bound to a pod scheduled on a different node"
)
KEY = "shop/web"


def refusal(message: str = ELSEWHERE) -> EnvError:
    """The EnvError ApiSources.token raises for a 403, chained to the ApiError as it is."""
    try:
        raise ApiError("POST", TOKEN_PATH, 403, {"message": message, "reason": "Forbidden"})
    except ApiError as exc:
        try:
            raise EnvError(f"failed to fetch token: {message}") from exc
        except EnvError as env:
            return env


class RefusingSource:
    """A token source that refuses ``refusals`` times (None: always), then grants."""

    def __init__(self, refusals: int | None, message: str = ELSEWHERE) -> None:
        self.refusals = refusals
        self.message = message
        self.calls = 0

    def configmap_files(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return None

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return None

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
        self.calls += 1
        if self.refusals is None or self.calls <= self.refusals:
            raise refusal(self.message)
        return "jwt", datetime.fromtimestamp(time.time() + expiration_seconds, UTC)


class Sink:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.recorded.append((kind, reason, message))


def pod() -> dict[str, Any]:
    projected = {"sources": [{"serviceAccountToken": {"path": "token"}}]}
    volume = {"name": "kube-api-access", "projected": projected}
    return {
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
        "spec": {"nodeName": "node-1", "volumes": [volume], "containers": [{"name": "main"}]},
    }


def manager(tmp_path: Path, source: RefusingSource) -> tuple[VolumeManager, Sink, list[tuple[str, float]]]:
    sink, requeued = Sink(), []
    volumes = VolumeManager(
        tmp_path / "pods",
        source,
        allocatable={},
        host_paths=HostPathPolicy(),
        events=sink,
        requeue=lambda key, after: requeued.append((key, after)),
    )
    return volumes, sink, requeued


def token_file(tmp_path: Path) -> Path:
    return tmp_path / "pods" / "u-1" / "volumes" / "kubernetes.io~projected" / "kube-api-access" / "token"


def test_a_token_refused_twice_then_granted_mounts_without_failed_mount(tmp_path: Path) -> None:
    source = RefusingSource(refusals=2)
    volumes, sink, requeued = manager(tmp_path, source)
    the_pod = pod()
    assert volumes.mount(KEY, the_pod) is False
    assert volumes.mount(KEY, the_pod) is False
    assert requeued == [(KEY, tokens.BINDING_RETRY_SECONDS)] * 2  # soon, not kubelet's backoff
    assert sink.recorded == []
    assert volumes.mount(KEY, the_pod) is True
    assert token_file(tmp_path).read_text() == "jwt"
    assert sink.recorded == []
    assert source.calls == 3


def test_a_token_always_refused_is_a_failed_mount_after_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "BINDING_RACE_SECONDS", 0.2)
    volumes, sink, requeued = manager(tmp_path, RefusingSource(refusals=None))
    the_pod = pod()
    assert volumes.mount(KEY, the_pod) is False
    assert sink.recorded == []
    time.sleep(0.25)
    assert volumes.mount(KEY, the_pod) is False
    [(kind, reason, message)] = sink.recorded
    assert (kind, reason) == ("Warning", "FailedMount")
    assert message == (
        f'MountVolume.SetUp failed for volume "kube-api-access" : failed to fetch token: {ELSEWHERE}'
    )
    assert requeued[-1] == (KEY, MOUNT_RETRY_START)  # from now on kubelet's backoff
    assert volumes.mount(KEY, the_pod) is False
    assert len(sink.recorded) == 2  # still refused: recorded again (the recorder counts repeats)


def test_other_token_refusals_are_failed_mounts_at_once(tmp_path: Path) -> None:
    other = 'serviceaccounts "default" is forbidden: node requested token not bound to a pod'
    volumes, sink, _requeued = manager(tmp_path, RefusingSource(refusals=None, message=other))
    assert volumes.mount(KEY, pod()) is False
    assert [reason for _kind, reason, _message in sink.recorded] == ["FailedMount"]
    assert other in sink.recorded[0][2]


def test_the_window_runs_from_the_first_refusal_and_a_grant_resets_it(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    source = RefusingSource(refusals=None)
    volumes = PodVolumes(pod(), tmp_path / "v", source, clock=lambda: now[0])
    with pytest.raises(tokens.TokenNotYetBound) as info:
        volumes.setup()
    assert info.value.retry_after == tokens.BINDING_RETRY_SECONDS
    now[0] += tokens.BINDING_RACE_SECONDS - 0.1
    with pytest.raises(tokens.TokenNotYetBound):
        volumes.setup()
    now[0] += 0.1
    with pytest.raises(VolumeError, match="scheduled on a different node"):
        volumes.setup()
    source.refusals = source.calls  # granted from now on
    volumes.setup()
    # after a grant, a new refusal has a window of its own
    volumes.cleanup()  # the token is gone: asked for again, and refused again
    source.refusals = None
    with pytest.raises(tokens.TokenNotYetBound):
        volumes.setup()


def test_the_apiservers_refusal_through_api_sources_is_recognised() -> None:
    class Refusing:
        def post(self, path: str, body: Any) -> Any:
            raise ApiError("POST", path, 403, {"message": ELSEWHERE, "reason": "Forbidden"})

    sources = ApiSources(cast(Client, Refusing()))
    with pytest.raises(EnvError) as info:
        sources.token("shop", "default", pod_name="web", pod_uid="u-1", audience="", expiration_seconds=600)
    assert tokens.bound_elsewhere(info.value)
    assert not tokens.bound_elsewhere(refusal("forbidden: no relationship found between node"))
    assert not tokens.bound_elsewhere(EnvError(f"failed to fetch token: {ELSEWHERE}"))  # no 403 behind it
