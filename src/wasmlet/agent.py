"""The node agent's main loop: bootstrap, register, heartbeat, serve, run pods."""

from __future__ import annotations

import logging
import resource
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

from wasmlet import paths
from wasmlet.config import NodeConfig
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client
from wasmlet.kube.events import EventRecorder
from wasmlet.kube.workqueue import WorkQueue
from wasmlet.logs.rotation import LogRotation
from wasmlet.network.pod_network import PodNetwork
from wasmlet.node import eviction, image_gc
from wasmlet.node import status as node_status
from wasmlet.node.bootstrap import Bootstrapper
from wasmlet.node.connections import ConnectionLimits
from wasmlet.node.server import Authorizer, KubeletServer
from wasmlet.node.status import NodeAgent
from wasmlet.oci.client import RegistryOptions
from wasmlet.oci.store import ModuleStore
from wasmlet.pod.collaborators import Admission
from wasmlet.pod.controller import PodController
from wasmlet.pod.image import ContainerImages
from wasmlet.pod.logsource import PodLogSource
from wasmlet.pod.prober import Prober
from wasmlet.pod.sources import ApiSources
from wasmlet.pod.start import ContainerStarter, Limits
from wasmlet.pod.status import StatusWriter
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.pod.volumes.manager import VolumeManager
from wasmlet.pod.watch import PodWatch
from wasmlet.runtime.engine import Runtime
from wasmlet.serve.listeners import HttpServers
from wasmlet.serve.wagi import WagiServing
from wasmlet.serve.wasi_http import WasiHttpServing

log = logging.getLogger(__name__)

RENEW_CHECK_INTERVAL = 60.0
FILES_PER_POD = 6
FILES_FOR_THE_NODE = 1024
POD_CIDR_WAIT = 10.0  # seconds a new node waits for the controller manager to give it a podCIDR


def _raise_open_files_limit() -> int:
    """Every running container holds five descriptors (its output pipes, both ends, and its log):
    lift the soft limit (often 1024) to the hard one, as Go programs such as the kubelet do at
    start. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above fs.nr_open
        log.warning("cannot raise the open files limit from %d: %s", soft, exc)
        return soft
    log.info("open files limit raised from %d to %d", soft, hard)
    return hard


def open_files_budget(limit: int, max_pods: int) -> int:
    """What modules may hold open together: the process's limit less what the node keeps for itself
    (six per pod for pipes and logs, and 1024 for sockets, the store and the rest), at least a quarter."""
    reserve = FILES_PER_POD * max_pods + FILES_FOR_THE_NODE
    return max(limit - reserve, limit // 4)


@dataclass
class PodParts:
    """The pod controller and what it was built from that others use too."""

    controller: PodController
    store: ModuleStore
    events: EventRecorder
    logs: PodLogSource


def event_recorder(config: NodeConfig, client: Client) -> EventRecorder:
    """The node's one event recorder (its pods' events and its own), as kubelet's."""
    return EventRecorder(client, "wasmlet", config.node_name, qps=config.event_qps, burst=config.event_burst)


def build_pods(
    config: NodeConfig,
    client: Client,
    runtime: Runtime,
    pressure: eviction.Pressure,
    *,
    events: EventRecorder | None = None,
    network: PodNetwork | None = None,
    servers: HttpServers | None = None,
) -> PodParts:
    """The pod controller with its collaborators, from the node's settings."""
    store = ModuleStore(config.data_dir / ".oci" / "modules")
    if events is None:
        events = event_recorder(config, client)
    sources = ApiSources(client)
    allocatable = node_status.allocatable(config, node_status.capacity(config))
    # The node's own state is never a pod's hostPath, whatever --allowed-host-paths says.
    own = (config.data_dir, paths.cluster_dir(), config.kubeconfig.parent, config.cert_file.parent)
    host_paths = HostPathPolicy.of(config.allowed_host_paths, protected=own)
    log_root = config.data_dir / "logs"
    queue = WorkQueue()
    options = RegistryOptions(
        insecure_registries=config.insecure_registries,
        ca_files=config.registry_ca_files,
        pull_timeout=config.image_pull_timeout,
        max_module_size=config.max_module_size,
    )
    images = ContainerImages(
        store,
        runtime,
        options,
        pull_secrets=lambda namespace, name: client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}"),
        events=events,
        requeue=queue.add,
        max_parallel=config.max_parallel_image_pulls,
    )
    volumes = VolumeManager(
        config.data_dir / "pods",
        sources,
        allocatable=allocatable,
        host_paths=host_paths,
        events=events,
        requeue=queue.add_after,
    )
    starter = ContainerStarter(
        runtime,
        volumes,
        sources,
        events,
        node_ip=config.node_ip,
        allocatable=allocatable,
        log_root=log_root,
        log_rotation=LogRotation(config.container_log_max_size, config.container_log_max_files),
        limits=Limits(config.default_memory_limit, config.max_open_files_per_container),
        wagi=WagiServing(runtime, servers) if servers is not None else None,
        wasi_http=WasiHttpServing(config.wasmtime_cli, config.data_dir / "wasi-http")
        if servers is not None
        else None,
    )
    controller = PodController(
        images=images,
        volumes=volumes,
        network=network or PodNetwork(config.node_ip),
        starter=starter,
        prober=Prober(events, queue.add),
        status=StatusWriter(client, config.node_ip),
        events=events,
        admission_by=Admission(allocatable, pressure, host_paths),
        log_root=log_root,
        queue=queue,
    )
    return PodParts(controller, store, events, PodLogSource(log_root, controller.find, controller.all_runs))


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.pods: PodParts | None = None
        self.runtime: Runtime | None = None
        self.stop = threading.Event()
        self.bootstrapper = Bootstrapper(config)
        self.threads: list[threading.Thread] = []
        self.server: KubeletServer | None = None
        self.clients: list[Client] = []
        self.events: EventRecorder | None = None
        self.servers: HttpServers | None = None
        self.network: PodNetwork | None = None

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        config = self.config
        files_limit = _raise_open_files_limit()
        self.bootstrapper.ensure_client(self.stop)
        client = Client.from_kubeconfig(config.kubeconfig)
        self.clients.append(client)
        pod_client = Client.from_kubeconfig(config.kubeconfig)
        self.clients.append(pod_client)
        self.events = events = event_recorder(config, pod_client)
        pressure = eviction.Pressure()
        self.network = network = PodNetwork(config.node_ip, (*config.cluster_cidrs, *config.service_cidrs))
        network.start()  # the cluster's ranges stay on this machine before any pod runs
        node = NodeAgent(config, client, pressure, events, on_pod_cidr=network.use_pod_cidr)
        node.register()
        node.renew_lease()
        if not node.await_pod_cidr(POD_CIDR_WAIT):
            log.warning(
                "node %s has no podCIDR: its pods use the node IP %s", config.node_name, config.node_ip
            )
        self._spawn(f"heartbeat:{config.node_name}", node.run, self.stop)
        # Pods run while the serving certificate waits for approval, as with a kubelet.
        budget = open_files_budget(files_limit, config.max_pods)
        log.info(
            "modules may hold %d files open together, each at most %d",
            budget,
            config.max_open_files_per_container,
        )
        self.runtime = Runtime(config.data_dir / "cache" / "compiled", open_files_budget=budget)
        self.servers = HttpServers()
        self.pods = pods = build_pods(
            config, pod_client, self.runtime, pressure, events=events, network=network, servers=self.servers
        )
        pods.controller.start()
        node.allocatable_enforced()  # admission holds the pods to the allocatable from now on
        PodWatch(pod_client, config.node_name, pods.controller, self.stop).start()
        evictions = eviction.EvictionManager(
            config.eviction_hard,
            usage=pods.controller.memory_usage,
            evict=pods.controller.evict,
            gone=pods.controller.released,
            pressure=pressure,
            transition=config.eviction_pressure_transition_period,
        )
        self._spawn("eviction", evictions.run, self.stop)
        gc = image_gc.ImageGC(
            pods.store,
            config.data_dir / "cache" / "compiled",
            config.data_dir / "pods",
            pods.controller.in_use,
            image_gc.GCPolicy(
                config.image_gc_high_threshold, config.image_gc_low_threshold, config.image_minimum_gc_age
            ),
            forget_compiled=self.runtime.forget,
        )
        self._spawn("image-gc", gc.run, self.stop, pods.controller.listed)
        self.bootstrapper.ensure_serving(self.stop)
        ca_pem = kubeconfig.load(config.kubeconfig).ca_pem or b""
        self.server = KubeletServer(
            (config.addr, config.port),
            cert_file=config.cert_file,
            key_file=config.private_key_file,
            client_ca_pem=ca_pem,
            authorizer=Authorizer(client, config.node_name),
            source=pods.logs,
            limits=ConnectionLimits(max_connections=config.max_api_connections),
        )
        self._spawn(f"kubelet-api:{config.addr}:{config.port}", self.server.serve_forever)
        log.info("node %s is up: kubelet API on https://%s:%d", config.node_name, config.addr, config.port)
        self._spawn("certificate-renewal", self._renew_loop)
        self.stop.wait()
        self.shutdown()

    def _renew_loop(self) -> None:
        while not self.stop.wait(RENEW_CHECK_INTERVAL):
            try:
                if self.bootstrapper.ensure_client(self.stop):
                    for client in self.clients:
                        client.reload()
                if self.bootstrapper.ensure_serving(self.stop) and self.server is not None:
                    self.server.reload_certificate()
            except Exception as exc:  # keep running; try again at the next check
                log.warning("certificate renewal for node %s failed: %s", self.config.node_name, exc)

    def shutdown(self) -> None:
        self.stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.pods is not None:
            self.pods.controller.shutdown()
        if self.servers is not None:
            self.servers.close()
        if self.network is not None:
            self.network.stop()
        if self.events is not None:
            self.events.flush(2.0)
            self.events.close()
        if self.runtime is not None:
            self.runtime.close()
