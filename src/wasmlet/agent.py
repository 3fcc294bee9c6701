"""The node agent's main loop: bootstrap, register, heartbeat, serve, run pods."""

from __future__ import annotations

import logging
import resource
import signal
import threading
from types import FrameType
from typing import Any

from wasmlet.config import NodeConfig
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import Client
from wasmlet.node import eviction, image_gc
from wasmlet.node.bootstrap import Bootstrapper
from wasmlet.node.connections import ConnectionLimits
from wasmlet.node.server import Authorizer, KubeletServer
from wasmlet.node.status import NodeAgent
from wasmlet.pod.controller import PodController
from wasmlet.runtime.engine import Runtime

log = logging.getLogger(__name__)

RENEW_CHECK_INTERVAL = 60.0
FILES_PER_POD = 6
FILES_FOR_THE_NODE = 1024


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


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.pods: PodController | None = None
        self.runtime: Runtime | None = None
        self.stop = threading.Event()
        self.bootstrapper = Bootstrapper(config)
        self.threads: list[threading.Thread] = []
        self.server: KubeletServer | None = None
        self.clients: list[Client] = []

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
        pressure = eviction.Pressure()
        node = NodeAgent(config, client, pressure)
        node.register()
        node.renew_lease()
        self._spawn(f"heartbeat:{config.node_name}", node.run, self.stop)
        # Pods run while the serving certificate waits for approval, as with a kubelet.
        budget = open_files_budget(files_limit, config.max_pods)
        log.info(
            "modules may hold %d files open together, each at most %d",
            budget,
            config.max_open_files_per_container,
        )
        self.runtime = Runtime(config.data_dir / "cache" / "compiled", open_files_budget=budget)
        pod_client = Client.from_kubeconfig(config.kubeconfig)
        self.clients.append(pod_client)
        self.pods = PodController(config, pod_client, self.runtime, pressure)
        self.pods.start()
        evictions = eviction.EvictionManager(
            config.eviction_hard,
            usage=self.pods.memory_usage,
            evict=self.pods.evict,
            gone=self.pods.released,
            pressure=pressure,
            transition=config.eviction_pressure_transition_period,
        )
        self._spawn("eviction", evictions.run, self.stop)
        gc = image_gc.ImageGC(
            self.pods.store,
            config.data_dir / "cache" / "compiled",
            config.data_dir / "pods",
            self.pods.in_use,
            image_gc.GCPolicy(
                config.image_gc_high_threshold, config.image_gc_low_threshold, config.image_minimum_gc_age
            ),
            forget_compiled=self.runtime.forget,
        )
        self._spawn("image-gc", gc.run, self.stop, self.pods.listed)
        self.bootstrapper.ensure_serving(self.stop)
        ca_pem = kubeconfig.load(config.kubeconfig).ca_pem or b""
        self.server = KubeletServer(
            (config.addr, config.port),
            cert_file=config.cert_file,
            key_file=config.private_key_file,
            client_ca_pem=ca_pem,
            authorizer=Authorizer(client, config.node_name),
            source=self.pods,
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
            self.pods.shutdown()
        if self.runtime is not None:
            self.runtime.close()
