"""What the kubelet API serves of the pods on this node: their containers' log files and the pods
themselves (:class:`wasmlet.node.server.LogSource`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmlet.logs import files as log_files
from wasmlet.node.server import NotFound
from wasmlet.pod import lifecycle
from wasmlet.pod.run import ContainerRun, PodRun


class PodLogSource:
    """``find(key)`` gives the node's run of a pod (None when it has none); ``runs()`` all of them."""

    def __init__(
        self, log_root: Path, find: Callable[[str], PodRun | None], runs: Callable[[], list[PodRun]]
    ) -> None:
        self.log_root = log_root
        self.find = find
        self.runs = runs

    def _run_of(self, namespace: str, pod: str, container: str) -> tuple[PodRun, ContainerRun]:
        run = self.find(f"{namespace}/{pod}")
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
        return [run.pod for run in self.runs()]

    def pod_ip(self, namespace: str, pod: str) -> tuple[str, str] | None:
        """The uid and IP ("" before it has one) of a pod this node runs, for port-forward."""
        run = self.find(f"{namespace}/{pod}")
        return None if run is None else (run.uid, run.ips[0] if run.ips else "")
