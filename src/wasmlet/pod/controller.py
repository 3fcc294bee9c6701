"""The pod controller: pods bound to this node → modules on wasmtime → pod status.

One watch (:mod:`wasmlet.pod.watch`) feeds a keyed work queue; a few workers sync one pod at a
time. Nothing polls: a running module reports its exit through a callback that re-queues its
pod, and back-offs are timers in the queue, so an idle pod costs no CPU.

A sync does what the pod's stage (:mod:`wasmlet.pod.stages`) asks, as kubelet's pod workers do:
``Admitting`` is admitted or refused; ``Syncing`` mounts its volumes (:class:`Volumes`), runs
its init containers one at a time and then its containers, pulling their images
(:class:`Images`) and starting them (:class:`Starter`); ``Terminating`` stops its containers
within the grace period and deletes the object; ``Removed`` cleans up and forgets the pod. Each
container's state moves only by :func:`wasmlet.pod.lifecycle.step`, the pod's only by
:func:`wasmlet.pod.stages.step`, both on the pod's worker: a module's thread hands its exit
over and re-queues the pod. The status written (:class:`Status`) is derived from both.

The collaborators are passed in (built by :mod:`wasmlet.agent`), so unit tests give fakes.

One file (450 lines) for now: the pod's stages and its containers' syncing share the pod's
worker and queue; moving container syncing into a file of its own is next.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmlet.kube.client import timestamp
from wasmlet.kube.events import EventSink
from wasmlet.kube.workqueue import WorkQueue
from wasmlet.logs import files as log_files
from wasmlet.network.addresses import AddressError
from wasmlet.node import eviction, image_gc
from wasmlet.oci.errors import NotWasmError, PullError
from wasmlet.pod import admission, lifecycle, stages
from wasmlet.pod.admission import Rejection
from wasmlet.pod.collaborators import Admission, Images, Network, Starter, Status, Volumes
from wasmlet.pod.image import Pulled
from wasmlet.pod.prober import Health, Prober
from wasmlet.pod.probes import probes_of
from wasmlet.pod.run import ContainerRun, PodRun, adopted, pod_key
from wasmlet.pod.start import ConfigError, ephemeral_refusal, unsupported
from wasmlet.pod.volumes import host_paths
from wasmlet.runtime import memory_stats
from wasmlet.runtime.engine import EXIT_START_FAILED, ExitStatus, ModuleError

log = logging.getLogger(__name__)

WORKERS = 4
DEADLINE = Rejection("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")


class PodController:
    def __init__(
        self,
        *,
        images: Images,
        volumes: Volumes,
        network: Network,
        starter: Starter,
        prober: Prober,
        status: Status,
        events: EventSink,
        admission_by: Admission,
        log_root: Path,
        queue: WorkQueue | None = None,
    ) -> None:
        self.images = images
        self.volumes = volumes
        self.network = network
        self.starter = starter
        self.prober = prober
        self.status = status
        self.events = events
        self.admission = admission_by
        self.log_root = log_root
        self.queue = queue or WorkQueue()
        self.runs: dict[str, PodRun] = {}
        self.lock = threading.Lock()
        self.admission_lock = threading.Lock()  # one admission decision at a time
        self.listed = threading.Event()  # set once the node's pods have been listed (for the GC)

    # -- what others read and ask for (from their own threads) ---------------------------------
    def find(self, key: str) -> PodRun | None:
        with self.lock:
            return self.runs.get(key)

    def all_runs(self) -> list[PodRun]:
        with self.lock:
            return list(self.runs.values())

    def in_use(self) -> image_gc.InUse:
        """The images and uids of every pod this node knows (for garbage collection)."""
        runs = self.all_runs()
        images = {crun.image for run in runs for crun in run.all_containers()}
        return image_gc.InUse(images=images, pod_uids={run.uid for run in runs})

    def memory_usage(self) -> list[eviction.PodUsage]:
        """Every running pod's linear memory, resident bytes per container (the eviction manager's)."""
        runs = {
            pod_key(r.pod): r for r in self.all_runs() if stages.runs_containers(r.stage) and not r.eviction
        }
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
        run = self.find(key)
        if run is not None:
            run.eviction = message  # applied by the pod's worker
            self.queue.add(key)

    def released(self, key: str) -> bool:
        """No module of the pod runs any more (its memory is back)."""
        run = self.find(key)
        return run is None or not any(c.running for c in run.all_containers())

    # -- what the watch tells ------------------------------------------------------------------
    def observe(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        with self.lock:
            run = self.runs.get(key)
            if run is not None and (run.object_gone or run.uid != pod["metadata"]["uid"]):
                run.object_gone = True  # replaced by a new pod of the same name: stop the old one now
                self._stop_all(run, 0.0)
                run = None
            if run is None:
                self.runs[key] = adopted(pod)
            else:
                run.pod = pod
        self.queue.add(key)

    def gone(self, key: str) -> None:
        run = self.find(key)
        if run is not None:
            run.object_gone = True  # applied by the pod's worker
            self.queue.add(key)

    def listed_all(self, keys: set[str]) -> None:
        """The watch listed every pod bound to the node: forget the others, and their logs."""
        with self.lock:
            missing = [key for key in self.runs if key not in keys]
            live = {run.uid for run in self.runs.values()}
        for key in missing:
            self.gone(key)
        removed = log_files.remove_orphan_pod_logs(self.log_root, live)
        if removed:
            log.info("removed the container logs of %d pods gone from this node: %s", len(removed), removed)
        self.listed.set()

    # -- the workers ---------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(WORKERS):
            threading.Thread(target=self.work, name=f"pod-worker-{i}", daemon=True).start()

    def shutdown(self, grace: float = 5.0) -> None:
        self.queue.close()
        self.prober.close()
        self.images.close()
        for run in self.all_runs():
            self._stop_all(run, grace)

    def work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                self.sync(key)
            except Exception:
                log.exception("pod %s: sync failed; retrying in 5s", key)
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)

    def sync(self, key: str) -> None:
        """Apply what other threads handed over, then do what the pod's stage asks."""
        run = self.find(key)
        if run is None:
            return
        self._apply_exits(key, run)
        if run.object_gone and not isinstance(run.stage, stages.Removed):
            self._move(key, run, stages.ObjectDeleted())
        if run.eviction and (stages.runs_containers(run.stage) or isinstance(run.stage, stages.Admitting)):
            self._move(key, run, stages.Fail(Rejection(eviction.REASON, run.eviction), disrupted=True))
        meta = run.pod["metadata"]
        if meta.get("deletionTimestamp") and not isinstance(run.stage, stages.Removed):
            grace = meta.get(
                "deletionGracePeriodSeconds", run.pod["spec"].get("terminationGracePeriodSeconds", 30)
            )
            self._move(key, run, stages.DeletionRequested(float(grace)))
        if isinstance(run.stage, stages.Removed):
            self._remove(key, run)
            return
        if isinstance(run.stage, stages.Terminating):
            self._terminate(key, run, run.stage.grace)
            return
        if isinstance(run.stage, stages.Admitting):
            self._admit(key, run)
        if stages.runs_containers(run.stage):
            self._sync_pod(key, run)
        if isinstance(run.stage, stages.Failed) and any(c.running for c in run.all_containers()):
            return  # the terminal phase only once every container has stopped, as kubelet; exits re-queue
        phase = self.status.report(run)
        if phase in {"Succeeded", "Failed"}:
            self._move(key, run, stages.Ended())

    # -- the stages ----------------------------------------------------------------------------
    def _admit(self, key: str, run: PodRun) -> None:
        """Take the pod or refuse it (Failed at once), as kubelet's admission handlers do."""
        with self.admission_lock:
            by = self.admission
            rejection = admission.not_wasm(run.pod) or admission.refusal_under_pressure(run.pod, by.pressure)
            refusal = by.host_paths.pod_refusal(run.pod)
            if rejection is None and refusal is not None:
                rejection = Rejection(host_paths.REASON, refusal)
            if rejection is None:
                with self.lock:
                    runs = list(self.runs.items())
                others = [r.pod for k, r in runs if k != key and stages.holds_resources(r.stage)]
                try:
                    rejection = admission.fit(run.pod, others, by.allocatable) or admission.port_conflict(
                        run.pod, others
                    )
                except ValueError as exc:
                    rejection = Rejection("UnexpectedAdmissionError", str(exc))
            self._move(key, run, stages.Admitted() if rejection is None else stages.Refused(rejection))

    def _sync_pod(self, key: str, run: PodRun) -> None:
        """kubelet's SyncPod: deadline, volumes, init containers in order, then the containers."""
        if self._past_deadline(key, run):
            self._move(key, run, stages.Fail(DEADLINE))
            return
        if not run.ips and not self._give_ips(key, run):
            return
        if not self.volumes.mount(key, run.pod):
            return
        exceeded = self.volumes.exceeded(run.pod)
        if exceeded:
            self._move(key, run, stages.Fail(Rejection(eviction.REASON, exceeded)))
            return
        for spec in run.pod["spec"].get("ephemeralContainers") or []:
            crun = run.ephemeral.setdefault(spec["name"], ContainerRun(spec["name"], spec.get("image", "")))
            self._apply(key, run, crun, lifecycle.Unsupported(ephemeral_refusal(spec["name"])))
        for spec in run.pod["spec"].get("initContainers") or []:
            crun = run.init_containers[spec["name"]]
            if not (crun.exit is not None and crun.exit.exit_code == 0 and not crun.running):
                self._sync_container(key, run, spec, crun)
                return
        for spec in run.pod["spec"].get("containers") or []:
            self._sync_container(key, run, spec, run.containers[spec["name"]])
            if not stages.runs_containers(run.stage):
                return  # failed as a whole (an image that is not wasm)

    def _give_ips(self, key: str, run: PodRun) -> bool:
        """The pod's IPs, where kubelet makes its sandbox; retried while none can be had."""
        try:
            run.ips = self.network.ips(run.pod)
        except AddressError as exc:
            self._event(run, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
            self.queue.add_after(key, 10.0)
            return False
        return True

    def _terminate(self, key: str, run: PodRun, grace: float) -> None:
        """kubelet's SyncTerminatingPod: once every container has stopped, delete the object."""
        self._stop_all(run, grace)
        if any(c.running for c in run.all_containers()):
            return  # each exit re-queues the pod
        self._close_writers(run)
        self.status.delete(run.pod)
        log.info("pod %s: stopped and deleted", key)

    def _remove(self, key: str, run: PodRun) -> None:
        """kubelet's SyncTerminatedPod and cleanup: volumes and logs removed, the pod forgotten."""
        self._stop_all(run, 0.0)
        if any(c.running for c in run.all_containers()):
            return
        self._close_writers(run)
        self.volumes.remove(run.pod)
        self.network.release(run.uid)
        self.images.forget(run.uid)
        meta = run.pod["metadata"]
        log_files.remove_pod_logs(
            log_files.pod_log_dir(self.log_root, meta["namespace"], meta["name"], run.uid)
        )
        with self.lock:
            if self.runs.get(key) is run:
                del self.runs[key]
        log.info("pod %s: removed from the node", key)

    def _past_deadline(self, key: str, run: PodRun) -> bool:
        """``activeDeadlineSeconds``: True once past it; until then, look again when it comes."""
        deadline = run.pod["spec"].get("activeDeadlineSeconds")
        if not deadline:
            return False
        started = dt.datetime.fromisoformat(run.start_time.replace("Z", "+00:00"))
        remaining = (started - dt.datetime.now(dt.UTC)).total_seconds() + float(deadline)
        if remaining > 0:
            self.queue.add_after(key, remaining)
        return remaining <= 0

    # -- containers ----------------------------------------------------------------------------
    def _sync_container(self, key: str, run: PodRun, spec: dict[str, Any], crun: ContainerRun) -> None:
        if crun.running:
            self._kill_unhealthy(run, crun)
            return
        if crun.exit is not None and not run.restarts(crun, crun.exit.exit_code):
            return
        wait = crun.life.not_before - time.monotonic()
        if wait > 0:
            self.queue.add_after(key, wait)
            return
        problem = unsupported(spec)
        if problem:
            self._apply(key, run, crun, lifecycle.Unsupported(problem))
            return
        pulled = self._module(key, run, crun, spec)
        if pulled is None:
            return  # Waiting (ContainerCreating) until the pull ends and re-queues the pod, or failed
        crun.image_id = pulled.digest
        try:
            ready = self.starter.configure(run, spec)
        except ConfigError as exc:
            self._apply(key, run, crun, lifecycle.ConfigFailed(str(exc)))
            return
        # Running before the start: the module's exit, however soon, comes after it.
        self._apply(key, run, crun, lifecycle.Started(timestamp()))
        crun.killed_unhealthy = False
        try:
            crun.execution = self.starter.launch(run, crun, pulled.compiled, ready, self._on_exit(key, crun))
        except BaseException as exc:  # no thread ran it (say, none could be made): it ended at once
            now = dt.datetime.now(dt.UTC)
            failed = ExitStatus(
                EXIT_START_FAILED, "Error", f"wasmlet could not start the module: {exc}", now, now
            )
            self._apply(key, run, crun, self._exit_event(run, crun, failed))
            raise
        self._event(run, "Normal", "Created", f"Created container {crun.name}")
        self._event(run, "Normal", "Started", f"Started container {crun.name}")
        probes = probes_of(spec)
        if probes:
            crun.health = Health(crun.name, probes)
            self.prober.watch(key, run.pod, crun.health, (run.ips or ("",))[0])

    def _kill_unhealthy(self, run: PodRun, crun: ContainerRun) -> None:
        """kubelet's computePodActions for a failed liveness or startup probe: kill the container,
        to be restarted unless the pod's policy is Never."""
        health = crun.health
        if health is None or health.failed is None or crun.killed_unhealthy or not crun.running:
            return
        crun.killed_unhealthy = True
        message = health.kill_message()
        if run.restart_policy(crun) != "Never":
            message += ", will be restarted"
        self._event(run, "Normal", "Killing", message)
        grace = health.failed.grace
        if grace is None:
            grace = float(run.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if crun.execution is not None:
            crun.execution.stop(grace)

    def _module(self, key: str, run: PodRun, crun: ContainerRun, spec: dict[str, Any]) -> Pulled | None:
        """The container's module; None while it is pulled, or after a failure applied here."""
        image = spec.get("image", "")
        try:
            return self.images.module(key, run.pod, spec)
        except NotWasmError as exc:
            message = f'Pod was rejected: image "{image}" is not a WebAssembly module: {exc.cause}'
            self._move(key, run, stages.Fail(Rejection("NotWasm", message)))
        except ModuleError as exc:  # pulled, but wasmtime cannot run it
            self._apply(key, run, crun, lifecycle.CreateFailed(str(exc)))
        except PullError as exc:
            self._apply(key, run, crun, lifecycle.PullFailed(image, exc.reason, str(exc)))
        return None

    def _on_exit(self, key: str, crun: ContainerRun) -> Callable[[ExitStatus], None]:
        def exited(status: ExitStatus) -> None:
            """On the module's thread: close its log and hand the exit to the pod's worker."""
            if crun.writer is not None:
                crun.writer.close()
            crun.ended = status
            self.queue.add(key)

        return exited

    def _apply_exits(self, key: str, run: PodRun) -> None:
        """Apply the exits the modules' threads handed over (only the pod's worker moves a state)."""
        for crun in run.all_containers():
            status, crun.ended = crun.ended, None
            if status is not None:
                if crun.health is not None:
                    crun.health.stopped = True  # probes of that run stop
                self._apply(key, run, crun, self._exit_event(run, crun, status))

    def _exit_event(self, run: PodRun, crun: ContainerRun, status: ExitStatus) -> lifecycle.Exited:
        return lifecycle.Exited(
            lifecycle.ended(status, f"wasmlet://{run.uid}/{crun.name}"),
            ran_for=(status.finished_at - status.started_at).total_seconds(),
            restart=stages.runs_containers(run.stage) and run.restarts(crun, status.exit_code),
            pod=run.described,
            container_name=crun.name,
        )

    # -- moving states and performing effects --------------------------------------------------
    def _apply(self, key: str, run: PodRun, crun: ContainerRun, event: lifecycle.Event) -> None:
        """Move the container by ``event`` and perform what the step asks for."""
        crun.life, effects = lifecycle.step(crun.life, event, time.monotonic())
        for effect in effects:
            if isinstance(effect, lifecycle.Record):
                self._event(run, effect.type, effect.reason, effect.message)
            else:
                self.queue.add_after(key, effect.after)

    def _move(self, key: str, run: PodRun, event: stages.Event) -> None:
        """Move the pod by ``event`` and perform what the step asks for."""
        run.stage, effects = stages.step(run.stage, event)
        for effect in effects:
            if isinstance(effect, lifecycle.Record):
                log.info("pod %s: %s: %s", key, effect.reason, effect.message)
                self._event(run, effect.type, effect.reason, effect.message)
            else:
                if effect.announce:
                    for crun in run.all_containers():
                        if crun.running:
                            self._event(run, "Normal", "Killing", f"Stopping container {crun.name}")
                self._stop_all(run, effect.grace)

    def _stop_all(self, run: PodRun, grace: float) -> None:
        for crun in run.all_containers():
            if crun.execution is not None and crun.running:
                crun.execution.stop(grace)

    def _close_writers(self, run: PodRun) -> None:
        for crun in run.all_containers():
            if crun.writer is not None:
                crun.writer.close()

    def _event(self, run: PodRun, kind: str, reason: str, message: str) -> None:
        self.events.event(run.pod, kind, reason, message)
