"""Starting a container: what its spec asks checked, its environment and mounts built, its log
opened and its module handed to the runtime -- kubelet's ``startContainer`` for a wasm module.

:meth:`ContainerStarter.configure` may fail with :class:`ConfigError` (the container's
``CreateContainerConfigError``: a missing ConfigMap, a mount that cannot be made) before anything
runs; :meth:`ContainerStarter.launch` then starts the module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wasmlet.kube.events import EventSink
from wasmlet.kube.quantity import parse_quantity
from wasmlet.logs import files as log_files
from wasmlet.logs.rotation import LogRotation
from wasmlet.logs.writer import ContainerLogWriter
from wasmlet.pod import env as pod_env
from wasmlet.pod.env_error import EnvError
from wasmlet.pod.probes import ProbeError, probes_of
from wasmlet.pod.run import ContainerRun, PodRun, RunningModule
from wasmlet.pod.volumes.mounts import Preopen, close_preopens
from wasmlet.pod.volumes.spec import VolumeError
from wasmlet.runtime import components
from wasmlet.runtime.engine import ExitStatus, RunSpec
from wasmlet.serve import cgi, wagi
from wasmlet.serve.wagi import WagiServing
from wasmlet.serve.wasi_http import DEFAULT_PORT as WASI_HTTP_PORT
from wasmlet.serve.wasi_http import WasiHttpServing

# Container fields a WebAssembly module cannot honour, each refused with the reason.
UNSUPPORTED_CONTAINER_FIELDS = {
    "lifecycle": "lifecycle hooks exec a command or call the container over the network",
    "stdin": "a module reads an empty stdin and attach is not served",
    "tty": "a module has no terminal",
    "volumeDevices": "a WASI module can only mount directories, not block devices",
    "workingDir": "a WASI module has no working directory; its paths resolve against its mounts",
}


def ephemeral_refusal(name: str) -> str:
    """Why an ephemeral container (``kubectl debug``) waits forever: wasmlet does not run them."""
    return (
        f"ephemeral containers are not supported by wasmlet (container {name}): kubectl debug joins "
        "a running container's processes, and a WebAssembly pod has none to join; read its output "
        "with kubectl logs"
    )


def unsupported(spec: Mapping[str, Any]) -> str:
    """Why wasmlet cannot create this container as asked, or ""."""
    if spec.get("restartPolicy") == "Always":
        name = spec["name"]
        return f"sidecar containers (restartPolicy Always) are not supported by wasmlet (container {name})"
    for field_name, reason in UNSUPPORTED_CONTAINER_FIELDS.items():
        if spec.get(field_name):
            return f"{field_name} is not supported by wasmlet: {reason} (container {spec['name']})"
    try:
        probes_of(spec)
    except ProbeError as exc:
        return f"{exc}: not supported by wasmlet"
    return ""


class ConfigError(Exception):
    """The container cannot be configured yet (kubelet's ``CreateContainerConfigError``)."""


class ModuleRunner(Protocol):
    """Runs modules (:class:`wasmlet.runtime.engine.Runtime`)."""

    def start(self, spec: RunSpec, on_exit: Callable[[ExitStatus], None]) -> RunningModule: ...


class Mounts(Protocol):
    """A pod's volumes as preopened directories (:class:`wasmlet.pod.volumes.manager.VolumeManager`)."""

    def preopens(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[Preopen]: ...


@dataclass
class Configured:
    """A container ready to start: its variables and its open mounts (closed if it never starts)."""

    spec: Mapping[str, Any]
    env: dict[str, str]
    preopens: list[Preopen]
    route: cgi.Route | None = None  # a WAGI handler's route: served, not run


@dataclass(frozen=True)
class Limits:
    """What the node gives a container that does not say."""

    default_memory: int  # bytes of linear memory without limits.memory
    max_open_files: int


class ContainerStarter:
    def __init__(
        self,
        runtime: ModuleRunner,
        mounts: Mounts,
        sources: pod_env.Sources,
        events: EventSink,
        *,
        node_ip: str,
        allocatable: Mapping[str, str],
        log_root: Path,
        log_rotation: LogRotation,
        limits: Limits,
        wagi: WagiServing | None = None,
        wasi_http: WasiHttpServing | None = None,
    ) -> None:
        self.wagi = wagi
        self.wasi_http = wasi_http
        self.runtime = runtime
        self.mounts = mounts
        self.sources = sources
        self.events = events
        self.node_ip = node_ip
        self.allocatable = allocatable
        self.log_root = log_root
        self.log_rotation = log_rotation
        self.limits = limits

    def configure(self, run: PodRun, spec: Mapping[str, Any]) -> Configured:
        """The container's variables as kubelet builds them, and its mounts; ConfigError when either
        cannot be made yet."""
        pod_ips = run.ips or (self.node_ip,)
        try:
            route = cgi.handler_routes(run.pod).get(str(spec["name"]))
        except cgi.WagiError as exc:
            raise ConfigError(str(exc)) from exc
        if route is not None and self.wagi is None:
            raise ConfigError(f"container {spec['name']} is a WAGI handler, and this node serves no HTTP")
        try:
            resolved = pod_env.resolve_environment(
                run.pod,
                spec,
                self.sources,
                host_ips=(self.node_ip,),
                pod_ips=pod_ips,
                allocatable=self.allocatable,
            )
        except EnvError as exc:
            raise ConfigError(str(exc)) from exc
        for skipped in resolved.skipped:
            self.events.event(run.pod, "Warning", skipped.reason, skipped.message)
        try:
            preopens = self.mounts.preopens(run.pod, spec, resolved.env)
        except VolumeError as exc:
            raise ConfigError(str(exc)) from exc
        return Configured(spec, resolved.env, preopens, route)

    def launch(
        self,
        run: PodRun,
        crun: ContainerRun,
        module: Path,
        ready: Configured,
        on_exit: Callable[[ExitStatus], None],
    ) -> RunningModule:
        """Open the run's log and start the module; its mounts are the runtime's from here on."""
        meta = run.pod["metadata"]
        try:
            restarts = crun.life.restart_count
            if crun.writer is not None:
                crun.writer.close()
            path = log_files.log_path(
                self.log_root, meta["namespace"], meta["name"], run.uid, crun.name, restarts
            )
            if restarts > 1:  # the kubelet keeps the logs of one dead run (--previous)
                log_files.remove_runs_before(path.parent, restarts - 1)
            crun.writer = writer = ContainerLogWriter(path, rotation=self.log_rotation)
            limits = (ready.spec.get("resources") or {}).get("limits") or {}
            run_spec = RunSpec(
                module=module,
                argv=pod_env.argv(ready.spec, ready.env),
                env=ready.env,
                preopens=ready.preopens,
                # limits.memory (or the node's default) caps the linear memory; limits.cpu is a
                # CFS-like quota per 100 ms.
                memory_limit_bytes=(
                    int(parse_quantity(str(limits["memory"])))
                    if "memory" in limits
                    else self.limits.default_memory
                ),
                max_open_files=self.limits.max_open_files,
                cpu_limit=float(parse_quantity(str(limits["cpu"]))) if "cpu" in limits else None,
                stdout=writer.stdout,
                stderr=writer.stderr,
                name=f"{meta['namespace']}/{meta['name']}/{crun.name}",
            )
            if components.is_http_component(module):
                if ready.route is not None:
                    raise ConfigError(
                        f"container {crun.name} is a WAGI handler, and its image is a component"
                    )
                if self.wasi_http is None:
                    raise ConfigError(
                        f"container {crun.name} is a wasi:http component: this node serves none"
                    )
                addresses = self._addresses(run, ready.spec, WASI_HTTP_PORT)
                return self.wasi_http.serve(run_spec, addresses, ready.preopens, on_exit)
            if ready.route is not None and self.wagi is not None:
                addresses = self._addresses(run, ready.spec, wagi.DEFAULT_PORT)
                return self.wagi.serve(run_spec, ready.route, addresses, ready.preopens, on_exit)
            return self.runtime.start(run_spec, on_exit)
        except BaseException:
            close_preopens(ready.preopens)  # the runtime closes them once it has them (closing is idempotent)
            raise

    def _addresses(self, run: PodRun, spec: Mapping[str, Any], default_port: int) -> list[tuple[str, int]]:
        """Where a serving container listens: the pod IP on its first TCP containerPort (else the
        port of Krustlet's ``alpha.wagi.krustlet.dev/default-host``, else ``default_port``), and the
        node's IP (or the port's hostIP) on its hostPort when the pod has its own IP."""
        pod_ip = (run.ips or (self.node_ip,))[0]
        ports = [p for p in spec.get("ports") or [] if str(p.get("protocol") or "TCP") == "TCP"]
        if ports:
            port = int(ports[0]["containerPort"])
        else:
            default_host = (run.pod["metadata"].get("annotations") or {}).get(cgi.KRUSTLET_DEFAULT_HOST, "")
            port = (
                int(default_host.rpartition(":")[2])
                if default_host.rpartition(":")[2].isdigit()
                else default_port
            )
        addresses = [(pod_ip, port)]
        if ports and ports[0].get("hostPort") and pod_ip != self.node_ip:
            addresses.append((str(ports[0].get("hostIP") or self.node_ip), int(ports[0]["hostPort"])))
        return addresses
