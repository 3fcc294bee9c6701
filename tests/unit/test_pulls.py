"""The pull pool: bounded, fair between registries, one pull per image; and the pull events."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.credentials import Keyring
from wasmlet.oci.errors import ImageNeverPullError, PullError
from wasmlet.oci.reference import parse_reference
from wasmlet.oci.store import ANYONE, ModuleStore, PulledModule
from wasmlet.pod.image import ContainerImages, ImagePuller

DEADLINE = 5.0


@pytest.fixture
def puller() -> Iterator[ImagePuller]:
    pool = ImagePuller(4)
    yield pool
    pool.close()


class Blocked:
    """A pull job that runs until released; counts how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0

    def job(self, value: str = "done") -> Callable[[], str]:
        def run() -> str:
            with self.lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            assert self.release.wait(DEADLINE)
            with self.lock:
                self.running -= 1
            return value

        return run


def test_asking_for_an_image_being_pulled_joins_that_pull(puller: ImagePuller) -> None:
    blocked = Blocked()
    told: list[str] = []
    first = puller.pull(("img", "Always"), "reg", blocked.job("a"), lambda: told.append("pod-1"))
    second = puller.pull(("img", "Always"), "reg", blocked.job("b"), lambda: told.append("pod-2"))
    assert first is second
    blocked.release.set()
    assert first.wait(DEADLINE)
    assert first.outcome() == "a" and blocked.calls == 1
    assert sorted(told) == ["pod-1", "pod-2"]
    assert puller.in_flight() == 0


def test_no_more_than_max_parallel_pulls_run_at_once() -> None:
    pool = ImagePuller(2)
    blocked = Blocked()
    tickets = [pool.pull(n, f"reg-{n}", blocked.job(), lambda: None) for n in range(5)]
    try:
        assert not tickets[0].wait(0.3)
        assert blocked.most == 2
        blocked.release.set()
        assert all(t.wait(DEADLINE) for t in tickets)
        assert blocked.most == 2 and blocked.calls == 5
    finally:
        blocked.release.set()
        pool.close()


def test_a_stalled_registry_leaves_a_pull_for_the_others(puller: ImagePuller) -> None:
    stalled = Blocked()
    hung = [puller.pull(f"slow-{n}", "slow.example", stalled.job(), lambda: None) for n in range(6)]
    try:
        fast = puller.pull("fast", "fast.example", lambda: "pulled", lambda: None)
        assert fast.wait(DEADLINE), "a pull from another registry waited behind the stalled ones"
        assert fast.outcome() == "pulled"
        assert stalled.most == 3 and not any(t.done for t in hung)
    finally:
        stalled.release.set()
    assert all(t.wait(DEADLINE) for t in hung)


def test_a_failed_pull_raises_its_error_to_every_asker(puller: ImagePuller) -> None:
    gate = threading.Event()

    def failing() -> str:
        gate.wait(DEADLINE)
        raise ValueError("registry said no")

    first = puller.pull("img", "reg", failing, lambda: None)
    second = puller.pull("img", "reg", failing, lambda: None)
    gate.set()
    assert first.wait(DEADLINE) and second.wait(DEADLINE)
    for ticket in (first, second):
        with pytest.raises(ValueError, match="registry said no"):
            ticket.outcome()
    again = puller.pull("img", "reg", lambda: "ok", lambda: None)  # a finished pull is not reused
    assert again is not first and again.wait(DEADLINE) and again.outcome() == "ok"


class Compiler:
    def precompile(self, module: Path) -> Path:
        return module.with_suffix(".cwasm")


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.recorded.append((kind, reason, message))


class PullingStore(ModuleStore):
    """A store whose every ensure is a pull of 1234 bytes (no registry); it says which policies."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pulls: list[str] = []

    def ensure(self, reference: Any, policy: str = "IfNotPresent", *args: Any, **kwargs: Any) -> PulledModule:
        if policy != "Always":
            stored = self.lookup(reference)
            if stored is not None:
                return stored
        self.pulls.append(policy)
        keyring = args[0] if args else None
        private = str(reference).startswith("registry.example:5000/")
        if private and isinstance(keyring, Keyring) and keyring.lookup("registry.example:5000").anonymous:
            raise PullError("failed to pull: unauthorized", reason="ErrImagePull")  # a private registry
        return self.write_module(reference)

    def write_module(self, reference: Any) -> PulledModule:
        entry = self.entry_dir(reference)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "module.wasm").write_bytes(b"\0asm\1\0\0\0")
        (entry / "digest.txt").write_text(DIGEST + "\n")
        return PulledModule(entry / "module.wasm", DIGEST, 1234, pulled=True)


DIGEST = "sha256:" + "a" * 64


def _images(store: ModuleStore, events: Events) -> ContainerImages:
    return ContainerImages(
        store,
        Compiler(),
        RegistryOptions(),
        pull_secrets=lambda *_: None,
        events=events,
        requeue=lambda _: None,
    )


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {}}


def test_every_start_from_the_store_records_already_present(tmp_path: Path) -> None:
    store, events = PullingStore(tmp_path), Events()
    image = "127.0.0.1:5000/app:v1"
    store.write_module(image)  # preloaded: no access record, anyone's
    images = _images(store, events)
    spec = {"name": "main", "image": image, "imagePullPolicy": "IfNotPresent"}
    for _start in range(2):  # the first start and a restart: kubelet's EnsureImageExists each time
        assert images.module("ns/p", POD, spec) is not None
    present = (
        "Normal",
        "Pulled",
        f'Container image "{image}" already present on machine and can be accessed by the pod',
    )
    assert events.recorded == [present, present]
    images.close()


def test_a_pull_records_its_time_and_size_as_kubelet_words_it(tmp_path: Path) -> None:
    events = Events()
    images = _images(PullingStore(tmp_path), events)
    image = "127.0.0.1:5000/app:v1"
    spec = {"name": "main", "image": image, "imagePullPolicy": "Always"}
    deadline = time.monotonic() + DEADLINE
    while images.module("ns/p", POD, spec) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    kinds = [(kind, reason) for kind, reason, _message in events.recorded]
    assert kinds == [("Normal", "Pulling"), ("Normal", "Pulled")]
    pattern = (
        rf'Successfully pulled image "{re.escape(image)}" in [0-9.]+m?s \([0-9.]+m?s including waiting\)\. '
    )
    assert re.fullmatch(pattern + r"Image size: 1234 bytes\.", events.recorded[1][2])
    images.close()


def _secret_pod(name: str, user: str | None) -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns", "uid": name}, "spec": {}}
    if user is not None:
        pod["spec"] = {"imagePullSecrets": [{"name": user}]}
    return pod


def _dockerconfig(user: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{user}:secret-of-{user}".encode()).decode()
    config = json.dumps({"auths": {"registry.example:5000": {"auth": auth}}}).encode()
    return {"data": {".dockerconfigjson": base64.b64encode(config).decode()}}


def _start(images: ContainerImages, pod: dict[str, Any], policy: str) -> None:
    spec = {"name": "main", "image": "registry.example:5000/private:v1", "imagePullPolicy": policy}
    deadline = time.monotonic() + DEADLINE
    while images.module(f"ns/{pod['metadata']['name']}", pod, spec) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_module_pulled_with_credentials_is_used_only_by_their_holders(tmp_path: Path) -> None:
    # kubelet's KubeletEnsureSecretPulledImages (default since v1.35): a pod may not use a private
    # image another pod's credentials pulled just because it is stored.
    store, events = PullingStore(tmp_path), Events()
    images = ContainerImages(
        store,
        Compiler(),
        RegistryOptions(),
        pull_secrets=lambda _ns, name: _dockerconfig(name),
        events=events,
        requeue=lambda _: None,
    )
    _start(images, _secret_pod("alice-1", "alice"), "IfNotPresent")
    assert store.pulls == ["IfNotPresent"]
    _start(images, _secret_pod("alice-2", "alice"), "IfNotPresent")  # the same credentials: stored
    assert store.pulls == ["IfNotPresent"]
    assert events.recorded[-1][2].endswith("already present on machine and can be accessed by the pod")
    with pytest.raises(PullError, match="unauthorized"):  # none: it must pull it itself, and cannot
        _start(images, _secret_pod("mallory", None), "IfNotPresent")
    _start(images, _secret_pod("bob", "bob"), "IfNotPresent")  # others: their own pull
    assert store.pulls == ["IfNotPresent", "Always", "Always"]
    _start(images, _secret_pod("bob-2", "bob"), "IfNotPresent")  # bob's credentials pulled it now
    assert store.pulls == ["IfNotPresent", "Always", "Always"]
    # Stored, but not eve's: under Never it is "not present", as kubelet says (it reveals nothing).
    with pytest.raises(ImageNeverPullError, match="not present with pull policy of Never"):
        images.module(
            "ns/eve",
            _secret_pod("eve", "eve"),
            {"name": "main", "image": "registry.example:5000/private:v1", "imagePullPolicy": "Never"},
        )
    images.close()


def test_a_module_pulled_with_no_credentials_is_anyones_and_a_moved_tag_is_nobodys(tmp_path: Path) -> None:
    store = PullingStore(tmp_path)
    ref = parse_reference("registry.example:5000/public:v1")
    stored = store.write_module(ref)
    store.record_access(ref, stored, ANYONE)
    assert store.may_use(stored, lambda: "anyone at all")
    moved = PulledModule(stored.path, "sha256:" + "c" * 64, 1, pulled=False)
    assert not store.may_use(moved, lambda: "")  # the record is of another digest
    store.record_access(ref, moved, "h1")
    assert store.may_use(moved, lambda: "h1") and not store.may_use(moved, lambda: "")
    assert (store.entry_dir(ref) / "access.json").stat().st_mode & 0o777 == 0o600
