"""Image pulls off the pod workers: a small pool of pull threads, one pull per image at a time.

A pod worker never waits on a registry. It hands a pull to :class:`ImagePuller` and gets a
:class:`PullTicket`; the container stays Waiting (``ContainerCreating``, or its
``ImagePullBackOff`` while a retry runs) and the pod is queued again when the pull ends, as a
kubelet's pod worker shows a pod whose image is being pulled.

- **Bounded**: ``max_parallel`` pulls run at once (kubelet's ``--max-parallel-image-pulls``);
  more wait in order.
- **Shared fairly**: one registry gets at most ``max_parallel - 1`` of them (all of them when
  there is one), so a registry that stalls -- or drips bytes until ``--image-pull-timeout``
  ends each pull -- cannot stop pulls from every other registry.
- **Once per image**: pulls with the same key (image, policy, credentials) asked for while one
  is running share it: every asker is told when it ends and sees the same outcome.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from wasmlet.kube.client import ApiError
from wasmlet.kube.events import EventSink
from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.credentials import Keyring, access_identity
from wasmlet.oci.pull import never_pulled
from wasmlet.oci.reference import Reference, default_pull_policy, parse_reference
from wasmlet.oci.store import ANYONE, ModuleStore, PulledModule
from wasmlet.pod.go_strings import go_duration

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_PARALLEL = 4
# A pod worker waits this long for a pull it has just handed to the pull pool (a warm pull with
# imagePullPolicy Always takes milliseconds); a longer pull re-queues the pod when it ends.
PULL_INLINE_WAIT = 0.05


@dataclass(frozen=True)
class Pulled:
    """A container's module, ready to run."""

    compiled: Path  # what the runtime loads
    digest: str  # the image's digest (``imageID``)


@dataclass(frozen=True)
class Fetched:
    """What a pull on the pool gives: the stored module, compiled, and how long the pull took."""

    module: PulledModule
    compiled: Path
    pull_seconds: float


class PullTicket(Generic[T]):
    """One pull, running or done; shared by every pod that asked for the same image meanwhile."""

    def __init__(self, key: Hashable, registry: str, job: Callable[[], T]) -> None:
        self.key = key
        self.registry = registry
        self._job = job
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def outcome(self) -> T:
        """The pull's result, or the exception it ended with, raised here. Only once it is done."""
        if not self._done.is_set():
            raise RuntimeError(f"pull {self.key!r} has not finished")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when there is no error

    def _run(self) -> None:
        try:
            self._value = self._job()
        except BaseException as exc:  # handed to every asker through outcome()
            self._error = exc
        self._done.set()


class ImagePuller:
    """The pull pool (see the module docstring). ``close`` lets the threads end."""

    def __init__(self, max_parallel: int = DEFAULT_MAX_PARALLEL) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self.max_parallel = max_parallel
        self.per_registry = max(1, max_parallel - 1)
        self._cond = threading.Condition()
        self._waiting: deque[PullTicket[object]] = deque()
        self._running: dict[Hashable, PullTicket[object]] = {}  # by key: waiting or running
        self._active: dict[str, int] = {}  # registry -> pulls running now
        self._closed = False
        for number in range(max_parallel):
            threading.Thread(target=self._work, name=f"image-pull-{number}", daemon=True).start()

    def pull(
        self, key: Hashable, registry: str, job: Callable[[], T], on_done: Callable[[], None]
    ) -> PullTicket[T]:
        """Run ``job`` on a pull thread, or join the pull of ``key`` already under way.

        ``on_done`` is called (on the pull thread) when the pull ends; ``job`` must not block
        forever (pulls carry their own deadline).
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the image puller is closed")
            ticket = self._running.get(key)
            if ticket is None:
                ticket = PullTicket(key, registry, job)
                self._running[key] = ticket
                self._waiting.append(ticket)
                self._cond.notify_all()
            ticket._callbacks.append(on_done)
            return ticket  # type: ignore[return-value]

    def in_flight(self) -> int:
        with self._cond:
            return len(self._running)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _next(self) -> PullTicket[object] | None:
        """The first waiting pull whose registry has a free share; None once closed."""
        with self._cond:
            while not self._closed:
                for ticket in self._waiting:
                    if self._active.get(ticket.registry, 0) < self.per_registry:
                        self._waiting.remove(ticket)
                        self._active[ticket.registry] = self._active.get(ticket.registry, 0) + 1
                        return ticket
                self._cond.wait()
            return None

    def _work(self) -> None:
        while True:
            ticket = self._next()
            if ticket is None:
                return
            ticket._run()
            with self._cond:
                self._active[ticket.registry] -= 1
                if not self._active[ticket.registry]:
                    del self._active[ticket.registry]
                del self._running[ticket.key]
                callbacks = list(ticket._callbacks)
                self._cond.notify_all()
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("pull %r: a completion callback failed", ticket.key)


class Compiler(Protocol):
    """Turns a stored module into what the runtime loads (``Runtime.precompile``)."""

    def precompile(self, module: Path) -> Path: ...


class ContainerImages:
    """A container's compiled module: from the store when the pull policy allows it, otherwise
    pulled (with the pod's ``imagePullSecrets``) and compiled on the pull pool.

    :meth:`module` never waits on a registry: it returns None while a pull runs and queues the
    pod again when it ends. Errors are the store's: :class:`~wasmlet.oci.errors.NotWasmError`,
    :class:`~wasmlet.oci.errors.PullError`, :class:`~wasmlet.runtime.engine.ModuleError`.
    """

    def __init__(
        self,
        store: ModuleStore,
        compiler: Compiler,
        options: RegistryOptions,
        *,
        pull_secrets: Callable[[str, str], Mapping[str, Any] | None],
        events: EventSink,
        requeue: Callable[[str], None],
        max_parallel: int = DEFAULT_MAX_PARALLEL,
    ) -> None:
        self.store = store
        self.compiler = compiler
        self.options = options
        self.pull_secrets = pull_secrets
        self.events = events
        self.requeue = requeue
        self.puller = ImagePuller(max_parallel)
        # (pod uid, container) -> the pull it waits for, and when it asked (monotonic)
        self.pulls: dict[tuple[str, str], tuple[PullTicket[Fetched], float]] = {}
        self.lock = threading.Lock()

    def module(self, key: str, pod: dict[str, Any], spec: Mapping[str, Any]) -> Pulled | None:
        """The compiled module of container ``spec`` of ``pod``, or None while it is pulled.

        Each start records kubelet's ``Pulled`` event: "already present on machine and can be
        accessed by the pod" (the store's access record allows it), or the pull's
        time and size (EnsureImageExists).
        """
        image = str(spec.get("image", ""))
        slot = (str(pod["metadata"]["uid"]), str(spec["name"]))
        with self.lock:
            waiting = self.pulls.get(slot)
        if waiting is None:
            ref = parse_reference(image)
            policy = spec.get("imagePullPolicy") or default_pull_policy(ref)
            stored = self.store.lookup(ref) if policy != "Always" else None
            if stored is not None and not self.store.may_use(stored, lambda: self._identity(pod, ref)):
                if policy == "Never":  # as if it were not there (kubelet reveals nothing)
                    raise never_pulled(ref, self.store)
                stored, policy = None, "Always"  # the pod's credentials must pull it themselves
            if stored is not None or policy == "Never":  # no network: stored, or ErrImageNeverPull
                stored = stored or self.store.ensure(ref, policy)
                ready = Pulled(self.compiler.precompile(stored.path), stored.digest)
                present = (
                    f'Container image "{image}" already present on machine and can be accessed by the pod'
                )
                self.events.event(pod, "Normal", "Pulled", present)
                return ready
            self.events.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
            waiting = (self._submit(key, pod, ref, policy), time.monotonic())
            with self.lock:
                self.pulls[slot] = waiting
        ticket, asked = waiting
        if not ticket.wait(PULL_INLINE_WAIT):
            return None  # Waiting (ContainerCreating) until the pull ends and re-queues the pod
        with self.lock:
            self.pulls.pop(slot, None)
        fetched = ticket.outcome()
        if fetched.module.pulled:
            took, waited = go_duration(fetched.pull_seconds), go_duration(time.monotonic() - asked)
            message = (
                f'Successfully pulled image "{image}" in {took} ({waited} including waiting). '
                f"Image size: {fetched.module.size} bytes."
            )
            self.events.event(pod, "Normal", "Pulled", message)
        return Pulled(fetched.compiled, fetched.module.digest)

    def forget(self, uid: str) -> None:
        """The pod is gone: drop what it waited for (a shared pull goes on for the others)."""
        with self.lock:
            for pending in [k for k in self.pulls if k[0] == uid]:
                del self.pulls[pending]

    def close(self) -> None:
        self.puller.close()

    def _identity(self, pod: Mapping[str, Any], ref: Reference) -> str:
        """The access identity of the credentials ``pod`` presents for ``ref`` (a malformed
        entry presents none: its pull will say what is wrong)."""
        try:
            return access_identity(self._keyring(pod).lookup(ref.registry, ref.repository))
        except ValueError:
            return ANYONE

    def _keyring(self, pod: Mapping[str, Any]) -> Keyring:
        configs = []
        namespace = pod["metadata"]["namespace"]
        for ref in pod["spec"].get("imagePullSecrets") or []:
            try:
                secret = self.pull_secrets(namespace, str(ref.get("name", "")))
            except ApiError as exc:
                log.warning("pod %s/%s: imagePullSecret %s: %s", namespace, pod["metadata"]["name"], ref, exc)
                continue
            data = ((secret or {}).get("data") or {}).get(".dockerconfigjson")
            if data:
                configs.append(json.loads(base64.b64decode(data)))
        return Keyring.from_dockerconfigs(configs)

    def _submit(self, key: str, pod: Mapping[str, Any], ref: Reference, policy: str) -> PullTicket[Fetched]:
        """Pull (and compile) ``ref`` on the pull pool; pods asking for it meanwhile share the pull."""
        keyring = self._keyring(pod)

        def pull_and_compile() -> Fetched:
            began = time.monotonic()
            pulled = self.store.ensure(ref, policy, keyring, options=self.options)
            took = time.monotonic() - began
            self.store.record_access(
                ref, pulled, access_identity(keyring.lookup(ref.registry, ref.repository))
            )
            return Fetched(pulled, self.compiler.precompile(pulled.path), took)

        # Pods with other pull secrets pull on their own: a refused pod never shares a granted pull.
        share = (str(ref), policy, json.dumps(keyring.configs, sort_keys=True))
        return self.puller.pull(share, ref.registry, pull_and_compile, lambda: self.requeue(key))
