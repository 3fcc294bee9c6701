"""The pod controller: pods bound to this node → modules on wasmtime → pod status.

One watch (``spec.nodeName=<node>``, resumed from its resourceVersion, relisted on 410
Gone) feeds a keyed work queue; a few workers reconcile one pod at a time. Nothing polls:
a running module reports its exit through a callback that re-queues its pod, and back-offs
are timers in the queue, so an idle pod costs no CPU.

Each container's state is a value moved only by :func:`wasmlet.pod.lifecycle.step`, on the
pod's worker: a module's thread hands its exit over and re-queues the pod. Deleting a pod stops
its modules within the grace period, then removes the object.

Over 400 lines until the pod-level stages leave it (issue 12 continues: a pod stage table as
pod/lifecycle.py has for containers, and collaborators passed in instead of built here).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmlet import paths
from wasmlet.kube.client import ApiError, Client, timestamp
from wasmlet.kube.events import EventRecorder
from wasmlet.kube.quantity import parse_quantity
from wasmlet.kube.workqueue import WorkQueue
from wasmlet.logs import files as log_files
from wasmlet.logs.rotation import LogRotation
from wasmlet.logs.writer import ContainerLogWriter
from wasmlet.node import eviction, image_gc
from wasmlet.node import status as node_status
from wasmlet.node.server import NotFound
from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.credentials import Keyring
from wasmlet.oci.errors import NotWasmError, PullError
from wasmlet.oci.reference import Reference, default_pull_policy, parse_reference
from wasmlet.oci.store import ModuleStore, PulledModule
from wasmlet.pod import admission, lifecycle
from wasmlet.pod import env as pod_env
from wasmlet.pod.admission import Rejection
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.image import ImagePuller, PullTicket
from wasmlet.pod.run import ContainerRun, PodRun, pod_key, should_restart
from wasmlet.pod.sources import ApiSources
from wasmlet.pod.status import agrees, pod_status
from wasmlet.pod.volumes import host_paths
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.pod.volumes.mounts import Preopen, close_preopens
from wasmlet.pod.volumes.pod_volumes import PodVolumes
from wasmlet.pod.volumes.spec import VolumeError
from wasmlet.runtime import memory_stats
from wasmlet.runtime.engine import EXIT_START_FAILED, ExitStatus, ModuleError, RunSpec, Runtime

if TYPE_CHECKING:  # the settings' type only: config sits above every stage
    from wasmlet.config import NodeConfig

log = logging.getLogger(__name__)

WORKERS = 4
# A pod worker waits this long for a pull it has just handed to the pull pool (a warm pull with
# imagePullPolicy Always takes milliseconds); a longer pull re-queues the pod when it ends.
PULL_INLINE_WAIT = 0.05
# Container fields a WebAssembly module cannot honour, each refused with the reason.
_PROBES = "probes exec a command or call the container over the network; WASI modules have neither"
UNSUPPORTED_CONTAINER_FIELDS = {
    "livenessProbe": _PROBES,
    "readinessProbe": _PROBES,
    "startupProbe": _PROBES,
    "lifecycle": "lifecycle hooks exec a command or call the container over the network",
    "stdin": "a module reads an empty stdin and attach is not served",
    "tty": "a module has no terminal",
    "volumeDevices": "a WASI module can only mount directories, not block devices",
    "workingDir": "a WASI module has no working directory; its paths resolve against its mounts",
}
# Volumes that failed to mount are tried again after this, doubling up to the maximum (kubelet).
MOUNT_RETRY_START = 0.5
MOUNT_RETRY_MAX = 120.0
# How often emptyDir sizeLimits are checked (kubelet's eviction manager runs every 10 s).
EVICTION_CHECK = 10.0


class PodController:
    def __init__(
        self,
        config: NodeConfig,
        client: Client,
        runtime: Runtime,
        pressure: eviction.Pressure | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.runtime = runtime
        self.store = ModuleStore(config.data_dir / ".oci" / "modules")
        self.registry_options = RegistryOptions(
            insecure_registries=config.insecure_registries,
            ca_files=config.registry_ca_files,
            pull_timeout=config.image_pull_timeout,
            max_module_size=config.max_module_size,
        )
        self.log_root = config.data_dir / "logs"
        self.log_rotation = LogRotation(config.container_log_max_size, config.container_log_max_files)
        self.sources = ApiSources(client)
        self.events = EventRecorder(
            client, "wasmlet", config.node_name, qps=config.event_qps, burst=config.event_burst
        )
        self.allocatable = node_status.allocatable(config, node_status.capacity(config))
        self.pressure = pressure or eviction.Pressure()
        # The node's own state is never a pod's hostPath, whatever --allowed-host-paths says.
        own = (config.data_dir, paths.cluster_dir(), config.kubeconfig.parent, config.cert_file.parent)
        self.host_paths = HostPathPolicy.of(config.allowed_host_paths, protected=own)
        self.queue = WorkQueue()
        self.runs: dict[str, PodRun] = {}
        self.lock = threading.Lock()
        self.admission_lock = threading.Lock()  # one admission decision at a time
        self.stop = threading.Event()
        self.puller = ImagePuller(config.max_parallel_image_pulls)
        self.listed = threading.Event()  # set once the node's pods have been listed (for the GC)

    # -- the LogSource the kubelet API serves from -------------------------------------
    def _run_of(self, namespace: str, pod: str, container: str) -> tuple[PodRun, ContainerRun]:
        with self.lock:
            run = self.runs.get(f"{namespace}/{pod}")
        if run is None:
            raise NotFound(f'pod "{pod}" in namespace "{namespace}" is not running on this node')
        crun = run.containers.get(container) or run.init_containers.get(container)
        if crun is None:
            raise NotFound(f'container "{container}" is not in pod "{pod}"')
        return run, crun

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> Path:
        run, crun = self._run_of(namespace, pod, container)
        if previous:  # ValueError (HTTP 400) when it never restarted, as the kubelet answers
            return log_files.previous_log_path(
                self.log_root, namespace, pod, run.uid, container, crun.life.restart_count
            )
        path = log_files.log_path(self.log_root, namespace, pod, run.uid, container, crun.life.restart_count)
        state = crun.life.state
        if not path.exists() and isinstance(state, lifecycle.Waiting):
            raise ValueError(f'container "{container}" in pod "{pod}" is waiting to start: {state.reason}')
        return path

    def container_finished(self, namespace: str, pod: str, container: str) -> bool:
        try:
            return not self._run_of(namespace, pod, container)[1].running
        except NotFound:
            return True

    def pods(self) -> list[dict[str, Any]]:
        with self.lock:
            return [run.pod for run in self.runs.values()]

    def in_use(self) -> image_gc.InUse:
        """The images and uids of every pod this node knows (for garbage collection)."""
        with self.lock:
            runs = list(self.runs.values())
        images = {crun.image for run in runs for crun in run.all_containers()}
        return image_gc.InUse(images=images, pod_uids={run.uid for run in runs})

    # -- what the eviction manager reads and asks for (from its own thread) ------------
    def memory_usage(self) -> list[eviction.PodUsage]:
        """Every running pod's linear memory, resident bytes per container."""
        with self.lock:
            runs = {k: r for k, r in self.runs.items() if r.rejection is None and r.evicted_for is None}
        bases: dict[str, dict[str, int]] = {}
        for key, run in runs.items():
            running = {c.name: c.execution.memory_base for c in run.all_containers() if c.execution}
            bases[key] = {name: base for name, base in running.items() if base is not None}
        resident = memory_stats.resident_bytes(b for found in bases.values() for b in found.values())
        return [
            admission.pod_usage(key, runs[key].pod, {name: resident[base] for name, base in found.items()})
            for key, found in bases.items()
            if found
        ]

    def evict(self, key: str, message: str) -> None:
        with self.lock:
            run = self.runs.get(key)
            if run is None:
                return
            run.evicted_for = message
        self.queue.add(key)

    def released(self, key: str) -> bool:
        """No module of the pod runs any more (its memory is back)."""
        with self.lock:
            run = self.runs.get(key)
        return run is None or not any(c.running for c in run.all_containers())

    # -- watching ----------------------------------------------------------------------
    def start(self) -> None:
        for i in range(WORKERS):
            threading.Thread(target=self._work, name=f"pod-worker-{i}", daemon=True).start()
        threading.Thread(target=self._watch, name=f"pod-watch:{self.config.node_name}", daemon=True).start()

    def shutdown(self, grace: float = 5.0) -> None:
        self.stop.set()
        self.queue.close()
        self.puller.close()
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            for crun in run.all_containers():
                if crun.execution is not None:
                    crun.execution.stop(grace)
        self.events.flush(min(grace, 2.0))
        self.events.close()

    def _list(self) -> str:
        params = {"fieldSelector": f"spec.nodeName={self.config.node_name}"}
        listing = self.client.get("/api/v1/pods", params)
        seen = set()
        for pod in listing.get("items") or []:
            self._observe(pod)
            seen.add(pod_key(pod))
        with self.lock:
            gone = [key for key in self.runs if key not in seen]
        for key in gone:
            self._forget_deleted(key)
        self._remove_orphan_logs()
        self.listed.set()
        return str(listing["metadata"]["resourceVersion"])

    def _remove_orphan_logs(self) -> None:
        """Delete the logs of pods this node no longer has (deleted while it was down)."""
        with self.lock:
            live = {run.uid for run in self.runs.values()}
        removed = log_files.remove_orphan_pod_logs(self.log_root, live)
        if removed:
            log.info("removed the container logs of %d pods gone from this node: %s", len(removed), removed)

    def _watch(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.config.node_name}"}
        version = ""
        delay = 1.0
        while not self.stop.is_set():
            try:
                if not version:
                    version = self._list()
                for event in self.client.watch("/api/v1/pods", params, version):
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] in {"ADDED", "MODIFIED"}:
                        self._observe(obj)
                    elif event["type"] == "DELETED":
                        self._forget_deleted(pod_key(obj))
                    if self.stop.is_set():
                        return
                delay = 1.0
            except ApiError as exc:
                if exc.status == 410:
                    log.info("pod watch expired (410 Gone); relisting")
                    version = ""
                    continue
                log.warning("pod watch failed: %s; retrying in %.0fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as exc:  # transport errors: apiserver down, connection reset
                log.warning("pod watch interrupted: %s; retrying in %.0fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _observe(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        with self.lock:
            run = self.runs.get(key)
            if run is not None and run.uid != pod["metadata"]["uid"]:
                run.deleted = True  # a new pod of the same name: the old one is gone
                self.queue.add(key)
            if run is None or run.deleted:
                run = self._adopt(pod)
                self.runs[key] = run
            else:
                run.pod = pod
        self.queue.add(key)

    def _adopt(self, pod: dict[str, Any]) -> PodRun:
        """State for a pod seen for the first time; restart counts continue from its status."""
        status = pod.get("status") or {}
        statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
        statuses.update({s["name"]: s for s in status.get("initContainerStatuses") or []})

        def adopt(specs: list[dict[str, Any]], init: bool) -> dict[str, ContainerRun]:
            runs = {}
            for spec in specs:
                crun = ContainerRun(spec["name"], spec.get("image", ""), init=init)
                if spec["name"] in statuses:
                    crun.life = lifecycle.resumed(statuses[spec["name"]])
                runs[spec["name"]] = crun
            return runs

        run = PodRun(
            pod,
            adopt(pod["spec"].get("containers") or [], False),
            adopt(pod["spec"].get("initContainers") or [], True),
        )
        if status.get("startTime"):
            run.start_time = status["startTime"]
        if status.get("phase") in {"Succeeded", "Failed"}:
            run.finished = True
        # Admitted by an earlier agent on this node: it reported containers or a later phase.
        run.admitted = bool(statuses) or status.get("phase") in {"Running", "Succeeded", "Failed"}
        return run

    def _forget_deleted(self, key: str) -> None:
        with self.lock:
            run = self.runs.get(key)
            if run is not None:
                run.deleted = True
        self.queue.add(key)

    # -- reconciling -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                self._sync(key)
            except Exception:
                log.exception("pod %s: sync failed; retrying in 5s", key)
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)

    def _sync(self, key: str) -> None:
        with self.lock:
            run = self.runs.get(key)
        if run is None:
            return
        self._apply_exits(key, run)
        if run.deleted:
            self._stop_all(run, grace=0.0)
            if not any(c.running for c in run.all_containers()):
                self._close_writers(run)
                if run.volumes is not None:
                    run.volumes.cleanup()
                meta = run.pod["metadata"]
                pod_logs = log_files.pod_log_dir(self.log_root, meta["namespace"], meta["name"], run.uid)
                log_files.remove_pod_logs(pod_logs)  # as the kubelet removes /var/log/pods/<pod>
                with self.lock:
                    if self.runs.get(key) is run:
                        del self.runs[key]
                log.info("pod %s: removed from the node", key)
            return
        if run.pod["metadata"].get("deletionTimestamp"):
            self._terminate(key, run)
            return
        if run.evicted_for is not None and run.rejection is None and not run.finished:
            run.disrupted = True
            self._evict(run, run.evicted_for)
        if not run.finished and not run.admitted:
            self._admit(key, run)
        if not run.finished and run.rejection is None:
            self._enforce_deadline(key, run)
        if (
            not run.finished
            and run.rejection is None
            and self._mount(key, run)
            and self._initialized(key, run)
        ):
            for spec in run.pod["spec"].get("containers") or []:
                self._sync_container(key, run, spec, run.containers[spec["name"]])
        self._report(key, run)

    def _mount(self, key: str, run: PodRun) -> bool:
        """Set up the pod's volumes (once), then keep them fresh; False while they cannot be."""
        volumes = run.volumes
        if volumes is None:
            root = self.config.data_dir / "pods" / run.uid / "volumes"
            volumes = run.volumes = PodVolumes(
                run.pod, root, self.sources, allocatable=self.allocatable, host_paths=self.host_paths
            )
        try:
            if not run.mounted:
                for warning in volumes.setup():
                    self._event(run, "Warning", "VolumeWarning", warning)
                run.mounted, run.mount_retry = True, 0.0
            elif time.monotonic() >= run.next_volume_check or _metadata_changed(volumes.pod, run.pod):
                volumes.refresh(run.pod)
        except VolumeError as exc:
            for message in exc.messages:
                self._event(run, "Warning", "FailedMount", message)
            if not run.mounted:
                run.mount_retry = min(max(run.mount_retry * 2, MOUNT_RETRY_START), MOUNT_RETRY_MAX)
                self.queue.add_after(key, run.mount_retry)
                return False
        exceeded = volumes.usage_exceeded()
        if exceeded:
            self._evict(run, "; ".join(exceeded))
            return False
        self._schedule_volume_check(key, run)
        return True

    def _schedule_volume_check(self, key: str, run: PodRun) -> None:
        """One pending check at a time: a sync in between leaves it where it is."""
        if run.volumes is None or run.next_volume_check > time.monotonic():
            return
        waits = [run.volumes.next_refresh()]
        if any((v.get("emptyDir") or {}).get("sizeLimit") for v in run.pod["spec"].get("volumes") or []):
            waits.append(EVICTION_CHECK)
        wait = min((w for w in waits if w is not None), default=None)
        if wait is not None:
            run.next_volume_check = time.monotonic() + wait
            self.queue.add_after(key, wait)

    def _initialized(self, key: str, run: PodRun) -> bool:
        """Run the init containers one at a time, in order; True once all have succeeded."""
        for spec in run.pod["spec"].get("initContainers") or []:
            crun = run.init_containers[spec["name"]]
            if crun.exit is not None and crun.exit.exit_code == 0 and not crun.running:
                continue
            self._sync_container(key, run, spec, crun)
            return False
        return True

    def _admit(self, key: str, run: PodRun) -> None:
        """Take the pod or refuse it (Failed at once), as kubelet's admission handlers do."""
        with self.admission_lock:
            pressure = admission.refusal_under_pressure(run.pod, self.pressure)
            rejection = admission.not_wasm(run.pod) or pressure
            refusal = self.host_paths.pod_refusal(run.pod)
            if rejection is None and refusal is not None:
                rejection = Rejection(host_paths.REASON, refusal)
            if rejection is None:
                with self.lock:
                    others = [
                        r.pod
                        for k, r in self.runs.items()
                        if k != key and r.admitted and not r.finished and not r.deleted
                    ]
                try:
                    rejection = admission.fit(run.pod, others, self.allocatable)
                except ValueError as exc:
                    rejection = Rejection("UnexpectedAdmissionError", str(exc))
            if rejection is None:
                run.admitted = True
                return
        self._reject(run, Rejection(rejection.reason, f"Pod was rejected: {rejection.message}"))

    def _evict(self, run: PodRun, message: str) -> None:
        """Kill every container now (no grace, as for a hard threshold) and fail the pod Evicted."""
        run.killing = True
        self._reject(run, Rejection(eviction.REASON, message))
        self._stop_all(run, grace=0.0)

    def _reject(self, run: PodRun, rejection: Rejection) -> None:
        run.rejection = rejection
        log.info("pod %s: %s: %s", pod_key(run.pod), rejection.reason, rejection.message)
        self._event(run, "Warning", rejection.reason, rejection.message)

    def _enforce_deadline(self, key: str, run: PodRun) -> None:
        """``activeDeadlineSeconds``: past it, stop every container and fail the pod."""
        deadline = run.pod["spec"].get("activeDeadlineSeconds")
        if not deadline:
            return
        started = dt.datetime.fromisoformat(run.start_time.replace("Z", "+00:00"))
        remaining = (started - dt.datetime.now(dt.UTC)).total_seconds() + float(deadline)
        if remaining > 0:
            self.queue.add_after(key, remaining)
            return
        run.killing = True
        self._reject(
            run,
            Rejection("DeadlineExceeded", "Pod was active on the node longer than the specified deadline"),
        )
        self._stop_all(run, grace=0.0)

    def _sync_container(self, key: str, run: PodRun, spec: dict[str, Any], crun: ContainerRun) -> None:
        if crun.running:
            return
        if crun.exit is not None and not should_restart(run.restart_policy(crun), crun.exit.exit_code):
            return
        wait = crun.life.not_before - time.monotonic()
        if wait > 0:
            self.queue.add_after(key, wait)
            return
        problem = _unsupported(spec)
        if problem:
            self._apply(key, run, crun, lifecycle.Unsupported(problem))
            return
        module = self._pull(key, run, crun, spec)
        if module is not None:
            self._configure_and_start(key, run, crun, spec, module)

    def _configure_and_start(
        self, key: str, run: PodRun, crun: ContainerRun, spec: dict[str, Any], module: Path
    ) -> None:
        env = self._environment(key, run, crun, spec)
        if env is None:
            return
        try:
            preopens = run.volumes.preopens(spec, env) if run.volumes is not None else []
        except VolumeError as exc:
            self._config_error(key, run, crun, str(exc))
            return
        try:
            self._start(key, run, crun, module, spec=spec, env=env, preopens=preopens)
        except BaseException:
            close_preopens(preopens)  # the runtime closes them once it has them
            raise

    def _config_error(self, key: str, run: PodRun, crun: ContainerRun, message: str) -> None:
        """The container cannot be configured yet: say why, and try again later (kubelet)."""
        self._apply(key, run, crun, lifecycle.ConfigFailed(message))

    def _environment(
        self, key: str, run: PodRun, crun: ContainerRun, spec: dict[str, Any]
    ) -> dict[str, str] | None:
        """The container's variables as kubelet builds them; None (and retried) when they cannot be."""
        ips = (self.config.node_ip,)
        try:
            resolved = pod_env.resolve_environment(
                run.pod, spec, self.sources, host_ips=ips, pod_ips=ips, allocatable=self.allocatable
            )
        except EnvError as exc:
            self._config_error(key, run, crun, str(exc))
            return None
        for skipped in resolved.skipped:
            self._event(run, "Warning", skipped.reason, skipped.message)
        return resolved.env

    def _pull_auth(self, run: PodRun) -> Keyring:
        configs = []
        namespace = run.pod["metadata"]["namespace"]
        for ref in run.pod["spec"].get("imagePullSecrets") or []:
            try:
                secret = self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
            except ApiError as exc:
                log.warning("pod %s: imagePullSecret %s: %s", pod_key(run.pod), ref.get("name"), exc)
                continue
            data = (secret.get("data") or {}).get(".dockerconfigjson")
            if data:
                configs.append(json.loads(base64.b64decode(data)))
        return Keyring.from_dockerconfigs(configs)

    def _pull(self, key: str, run: PodRun, crun: ContainerRun, spec: dict[str, Any]) -> Path | None:
        """The compiled module of ``crun``'s image, or None while it is pulled or after a failure.

        A stored module the policy lets us use is taken here; anything that needs the registry
        goes to the pull pool (:mod:`wasmlet.pod.image`), which queues the pod again when it ends.
        """
        image = spec.get("image", "")
        try:
            if crun.pull is None:
                ref = parse_reference(image)
                policy = spec.get("imagePullPolicy") or default_pull_policy(ref)
                stored = self.store.lookup(ref) if policy != "Always" else None
                if stored is not None or policy == "Never":  # no network: stored, or ErrImageNeverPull
                    stored = stored or self.store.ensure(ref, policy)
                    crun.image_id = stored.digest
                    return self.runtime.precompile(stored.path)
                self._event(run, "Normal", "Pulling", f'Pulling image "{image}"')
                crun.pull = self._submit_pull(key, run, ref, policy)
            if not crun.pull.wait(PULL_INLINE_WAIT):
                return None  # Waiting (ContainerCreating) until the pull ends and re-queues the pod
            ticket, crun.pull = crun.pull, None
            pulled, compiled = ticket.outcome()
            if pulled.pulled:
                self._event(
                    run, "Normal", "Pulled", f'Successfully pulled image "{image}" ({pulled.size} bytes)'
                )
            crun.image_id = pulled.digest
            return compiled
        except NotWasmError as exc:
            message = f'Pod was rejected: image "{image}" is not a WebAssembly module: {exc.cause}'
            self._reject(run, Rejection("NotWasm", message))
            return None
        except ModuleError as exc:  # pulled, but wasmtime cannot run it
            self._apply(key, run, crun, lifecycle.CreateFailed(str(exc)))
            return None
        except PullError as exc:
            self._apply(key, run, crun, lifecycle.PullFailed(image, exc.reason, str(exc)))
            return None

    def _submit_pull(
        self, key: str, run: PodRun, ref: Reference, policy: str
    ) -> PullTicket[tuple[PulledModule, Path]]:
        """Pull (and compile) ``ref`` on the pull pool; pods asking for it meanwhile share the pull."""
        keyring = self._pull_auth(run)

        def pull_and_compile() -> tuple[PulledModule, Path]:
            pulled = self.store.ensure(ref, policy, keyring, options=self.registry_options)
            return pulled, self.runtime.precompile(pulled.path)

        # Pods with other pull secrets pull on their own: a refused pod never shares a granted pull.
        share = (str(ref), policy, json.dumps(keyring.configs, sort_keys=True))
        return self.puller.pull(share, ref.registry, pull_and_compile, lambda: self.queue.add(key))

    def _apply(self, key: str, run: PodRun, crun: ContainerRun, event: lifecycle.Event) -> None:
        """Move the container by ``event`` and perform what the step asks for."""
        crun.life, effects = lifecycle.step(crun.life, event, time.monotonic())
        for effect in effects:
            if isinstance(effect, lifecycle.Record):
                self._event(run, effect.type, effect.reason, effect.message)
            else:
                self.queue.add_after(key, effect.after)

    def _apply_exits(self, key: str, run: PodRun) -> None:
        """Apply the exits the modules' threads handed over (only the pod's worker moves a state)."""
        for crun in run.all_containers():
            status, crun.ended = crun.ended, None
            if status is not None:
                self._apply(key, run, crun, self._exit_event(run, crun, status))

    def _exit_event(self, run: PodRun, crun: ContainerRun, status: ExitStatus) -> lifecycle.Exited:
        return lifecycle.Exited(
            lifecycle.ended(status, f"wasmlet://{run.uid}/{crun.name}"),
            ran_for=(status.finished_at - status.started_at).total_seconds(),
            restart=not run.killing and should_restart(run.restart_policy(crun), status.exit_code),
            pod_name=run.pod["metadata"]["name"],
            container_name=crun.name,
        )

    def _start(
        self,
        key: str,
        run: PodRun,
        crun: ContainerRun,
        module: Path,
        *,
        spec: dict[str, Any],
        env: dict[str, str],
        preopens: list[Preopen],
    ) -> None:
        namespace, name = run.pod["metadata"]["namespace"], run.pod["metadata"]["name"]
        # Running before the start: the module's exit, however soon, comes after it.
        self._apply(key, run, crun, lifecycle.Started(timestamp()))
        restarts = crun.life.restart_count
        if crun.writer is not None:
            crun.writer.close()
        path = log_files.log_path(self.log_root, namespace, name, run.uid, crun.name, restarts)
        if restarts > 1:  # the kubelet keeps the logs of one dead run (--previous)
            log_files.remove_runs_before(path.parent, restarts - 1)
        writer = ContainerLogWriter(path, rotation=self.log_rotation)
        limits = (spec.get("resources") or {}).get("limits") or {}
        run_spec = RunSpec(
            module=module,
            argv=pod_env.argv(spec, env),
            env=env,
            # limits.memory (or the node's default) caps the linear memory; limits.cpu is a
            # CFS-like quota per 100 ms.
            preopens=preopens,
            memory_limit_bytes=(
                int(parse_quantity(str(limits["memory"])))
                if "memory" in limits
                else self.config.default_memory_limit
            ),
            max_open_files=self.config.max_open_files_per_container,
            cpu_limit=float(parse_quantity(str(limits["cpu"]))) if "cpu" in limits else None,
            stdout=writer.stdout,
            stderr=writer.stderr,
            name=f"{key}/{crun.name}",
        )
        crun.writer = writer
        try:
            crun.execution = self.runtime.start(run_spec, lambda status: self._exited(key, crun, status))
        except BaseException as exc:  # no thread ran it (say, none could be made): it ended at once
            now = dt.datetime.now(dt.UTC)
            cause = f"wasmlet could not start the module: {exc}"
            failed = ExitStatus(EXIT_START_FAILED, "Error", cause, now, now)
            self._apply(key, run, crun, self._exit_event(run, crun, failed))
            raise
        self._event(run, "Normal", "Created", f"Created container {crun.name}")
        self._event(run, "Normal", "Started", f"Started container {crun.name}")

    def _exited(self, key: str, crun: ContainerRun, status: ExitStatus) -> None:
        """On the module's thread: close its log and hand the exit to the pod's worker."""
        if crun.writer is not None:
            crun.writer.close()
        crun.ended = status
        self.queue.add(key)

    def _terminate(self, key: str, run: PodRun) -> None:
        meta = run.pod["metadata"]
        grace = float(
            meta.get("deletionGracePeriodSeconds", run.pod["spec"].get("terminationGracePeriodSeconds", 30))
        )
        if not run.killing:
            run.killing = True
            for crun in run.all_containers():
                if crun.running:
                    self._event(run, "Normal", "Killing", f"Stopping container {crun.name}")
        self._stop_all(run, grace)
        if any(c.running for c in run.all_containers()):
            return  # each exit re-queues the pod
        self._close_writers(run)
        try:
            self.client.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as exc:
            if exc.status not in {404, 409}:
                raise
        log.info("pod %s: stopped and deleted", key)

    def _stop_all(self, run: PodRun, grace: float) -> None:
        for crun in run.all_containers():
            if crun.execution is not None and crun.running:
                crun.execution.stop(grace)

    def _close_writers(self, run: PodRun) -> None:
        for crun in run.all_containers():
            if crun.writer is not None:
                crun.writer.close()

    # -- reporting ---------------------------------------------------------------------
    def _report(self, key: str, run: PodRun) -> None:
        status = pod_status(run, self.config.node_ip)
        # Also when the apiserver's copy was changed by someone else: the node lifecycle
        # controller marks pods not Ready while their node is unreachable, and the kubelet puts
        # its own view back (as kubelet's status manager reconciles).
        if status == run.last_status and agrees(run.pod.get("status") or {}, status):
            return
        meta = run.pod["metadata"]
        try:
            self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"metadata": {"uid": meta["uid"]}, "status": status},
                "merge",
            )
            run.last_status = status
            if status["phase"] in {"Succeeded", "Failed"}:
                run.finished = True
        except ApiError as exc:
            if exc.status == 404:
                return
            raise

    def _event(self, run: PodRun, kind: str, reason: str, message: str) -> None:
        self.events.event(run.pod, kind, reason, message)


def _unsupported(spec: dict[str, Any]) -> str:
    if spec.get("restartPolicy") == "Always":
        name = spec["name"]
        return f"sidecar containers (restartPolicy Always) are not supported by wasmlet (container {name})"
    for field_name, reason in UNSUPPORTED_CONTAINER_FIELDS.items():
        if spec.get(field_name):
            return f"{field_name} is not supported by wasmlet: {reason} (container {spec['name']})"
    return ""


def _metadata_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether what downwardAPI volumes show of the pod changed (its labels or annotations)."""
    before, after = old.get("metadata") or {}, new.get("metadata") or {}
    return any(before.get(k) != after.get(k) for k in ("labels", "annotations"))
