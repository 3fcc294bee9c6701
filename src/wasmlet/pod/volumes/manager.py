"""The volume manager: each pod's volumes set up before its containers start, kept fresh while it
runs (ConfigMaps, Secrets, tokens, downward API), checked against emptyDir ``sizeLimit`` s, and
removed with the pod -- kubelet's volume manager, with retries timed as its are."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmlet.kube.events import EventSink
from wasmlet.pod.volumes.content import VolumeSources
from wasmlet.pod.volumes.host_paths import HostPathPolicy
from wasmlet.pod.volumes.mounts import Preopen
from wasmlet.pod.volumes.pod_volumes import PodVolumes
from wasmlet.pod.volumes.spec import VolumeError
from wasmlet.pod.volumes.tokens import TokenNotYetBound

# Volumes that failed to mount are tried again after this, doubling up to the maximum (kubelet).
MOUNT_RETRY_START = 0.5
MOUNT_RETRY_MAX = 120.0
# How often emptyDir sizeLimits are checked (kubelet's eviction manager runs every 10 s).
EVICTION_CHECK = 10.0


@dataclass
class _Mount:
    volumes: PodVolumes
    mounted: bool = False
    retry: float = 0.0  # seconds until the next try of a failed setup
    next_check: float = 0.0  # monotonic time of the next refresh or size check


class VolumeManager:
    """Volumes by pod uid; ``requeue(key, after)`` asks for the pod's next sync."""

    def __init__(
        self,
        root: Path,
        sources: VolumeSources,
        *,
        allocatable: Mapping[str, str],
        host_paths: HostPathPolicy,
        events: EventSink,
        requeue: Callable[[str, float], None],
    ) -> None:
        self.root = root
        self.sources = sources
        self.allocatable = allocatable
        self.host_paths = host_paths
        self.events = events
        self.requeue = requeue
        self._mounts: dict[str, _Mount] = {}  # by pod uid; only the pod's worker touches its entry

    def mount(self, key: str, pod: dict[str, Any]) -> bool:
        """Set up the pod's volumes (once), then keep them fresh; False while they cannot be set up."""
        uid = str(pod["metadata"]["uid"])
        state = self._mounts.get(uid)
        if state is None:
            volumes = PodVolumes(
                pod,
                self.root / uid / "volumes",
                self.sources,
                allocatable=self.allocatable,
                host_paths=self.host_paths,
            )
            state = self._mounts[uid] = _Mount(volumes)
        try:
            if not state.mounted:
                for warning in state.volumes.setup():
                    self.events.event(pod, "Warning", "VolumeWarning", warning)
                state.mounted, state.retry = True, 0.0
            elif time.monotonic() >= state.next_check or _metadata_changed(state.volumes.pod, pod):
                state.volumes.refresh(pod)
        except TokenNotYetBound as exc:  # the apiserver has not seen the binding yet: no event
            if state.mounted:  # a refresh: try it again then
                state.next_check = time.monotonic() + exc.retry_after
            self.requeue(key, exc.retry_after)
            return state.mounted
        except VolumeError as exc:
            for message in exc.messages:
                self.events.event(pod, "Warning", "FailedMount", message)
            if not state.mounted:
                state.retry = min(max(state.retry * 2, MOUNT_RETRY_START), MOUNT_RETRY_MAX)
                self.requeue(key, state.retry)
                return False
        self._schedule_check(key, pod, state)
        return True

    def exceeded(self, pod: Mapping[str, Any]) -> str:
        """Why the pod's emptyDirs are over their ``sizeLimit`` (the eviction message), or ""."""
        state = self._mounts.get(str(pod["metadata"]["uid"]))
        return "; ".join(state.volumes.usage_exceeded()) if state is not None else ""

    def preopens(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[Preopen]:
        """The container's mounts as preopened directories (a VolumeError says which cannot be)."""
        state = self._mounts.get(str(pod["metadata"]["uid"]))
        return state.volumes.preopens(container, env) if state is not None else []

    def remove(self, pod: Mapping[str, Any]) -> None:
        """The pod is gone: remove its volumes."""
        state = self._mounts.pop(str(pod["metadata"]["uid"]), None)
        if state is not None:
            state.volumes.cleanup()

    def _schedule_check(self, key: str, pod: Mapping[str, Any], state: _Mount) -> None:
        """One pending check at a time: a sync in between leaves it where it is."""
        if state.next_check > time.monotonic():
            return
        waits = [state.volumes.next_refresh()]
        if any((v.get("emptyDir") or {}).get("sizeLimit") for v in pod["spec"].get("volumes") or []):
            waits.append(EVICTION_CHECK)
        wait = min((w for w in waits if w is not None), default=None)
        if wait is not None:
            state.next_check = time.monotonic() + wait
            self.requeue(key, wait)


def _metadata_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether what downwardAPI volumes show of the pod changed (its labels or annotations)."""
    before, after = old.get("metadata") or {}, new.get("metadata") or {}
    return any(before.get(k) != after.get(k) for k in ("labels", "annotations"))
