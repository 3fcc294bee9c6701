"""What the pod controller is given, each through a small interface (virtual-kubelet's
``PodLifecycleHandler`` separates its controller from the provider the same way): the agent
passes the real parts (:func:`wasmlet.agent.build_pods`), unit tests pass fakes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wasmlet.node import eviction
from wasmlet.pod.image import Pulled
from wasmlet.pod.run import ContainerRun, PodRun, RunningModule
from wasmlet.pod.start import Configured
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.runtime.engine import ExitStatus


class Images(Protocol):
    """:class:`wasmlet.pod.image.ContainerImages`"""

    def module(self, key: str, pod: dict[str, Any], spec: Mapping[str, Any]) -> Pulled | None: ...

    def forget(self, uid: str) -> None: ...

    def close(self) -> None: ...


class Volumes(Protocol):
    """:class:`wasmlet.pod.volumes.manager.VolumeManager`"""

    def mount(self, key: str, pod: dict[str, Any]) -> bool: ...

    def exceeded(self, pod: Mapping[str, Any]) -> str: ...

    def remove(self, pod: Mapping[str, Any]) -> None: ...


class Network(Protocol):
    """:class:`wasmlet.network.pod_network.PodNetwork`"""

    def ips(self, pod: Mapping[str, Any]) -> tuple[str, ...]: ...

    def release(self, uid: str) -> None: ...


class Starter(Protocol):
    """:class:`wasmlet.pod.start.ContainerStarter`"""

    def configure(self, run: PodRun, spec: Mapping[str, Any]) -> Configured: ...

    def launch(
        self,
        run: PodRun,
        crun: ContainerRun,
        module: Path,
        ready: Configured,
        on_exit: Callable[[ExitStatus], None],
    ) -> RunningModule: ...


class Status(Protocol):
    """:class:`wasmlet.pod.status.StatusWriter`"""

    def report(self, run: PodRun) -> str | None: ...

    def delete(self, pod: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Admission:
    """What admission decides by: the node's allocatable, its pressure and the hostPath policy."""

    allocatable: Mapping[str, str]
    pressure: eviction.Pressure
    host_paths: HostPathPolicy
