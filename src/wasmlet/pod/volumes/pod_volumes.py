"""A pod's volumes, each given to the module as a WASI preopened directory at its mountPath.

:class:`PodVolumes` sets them up, keeps them fresh, mounts them and removes them; one module per
volume type or concern beside it. The design (layout, updates, held directories): docs/volumes.md.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wasmlet.pod.env_error import EnvError
from wasmlet.pod.volumes.atomic_writer import make_dirs, write_payload
from wasmlet.pod.volumes.content import Contents, VolumeSources
from wasmlet.pod.volumes.empty_dir import set_up_empty_dir, size_limit_exceeded
from wasmlet.pod.volumes.host_paths import HostPathPolicy, check_host_path
from wasmlet.pod.volumes.mounts import Preopen, container_preopens
from wasmlet.pod.volumes.spec import CONTENT_KINDS, Volume, VolumeError, namespace_of, volume_dir, volumes_of
from wasmlet.pod.volumes.tokens import Tokens

CONTENT_REFRESH_SECONDS = 60.0  # kubelet re-reads ConfigMaps and Secrets at every pod sync (~1 min)


class PodVolumes:
    """The volumes of one pod.

    ``pod`` is the pod object; ``root`` the directory they live in (created on :meth:`setup`);
    ``sources`` gives ConfigMaps, Secrets and tokens; ``allocatable`` is the node's
    ``status.allocatable`` (for ``resourceFieldRef``); ``host_paths`` what hostPath volumes may
    mount (nothing by default); ``clock`` gives epoch seconds.

    - :meth:`setup` before the first container starts (and again on each pod sync: it is
      idempotent); a :class:`VolumeError` from it is kubelet's ``FailedMount``.
    - :meth:`preopens` for each container start; a :class:`VolumeError` from it is the
      container's ``CreateContainerConfigError``.
    - :meth:`refresh` when :meth:`next_refresh` says so, and with the new pod object when it
      changes (labels and annotations of downwardAPI files).
    - :meth:`usage_exceeded` now and then; a non-empty answer evicts the pod.
    - :meth:`cleanup` once the pod's containers are all stopped and the pod is gone.

    The methods may be called from any thread; they take a lock.
    """

    def __init__(
        self,
        pod: Mapping[str, Any],
        root: Path,
        sources: VolumeSources,
        *,
        allocatable: Mapping[str, Any] | None = None,
        host_paths: HostPathPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pod = pod
        self.root = root
        self.sources = sources
        self.allocatable = allocatable or {}
        self.host_paths = host_paths or HostPathPolicy()
        self.clock = clock
        self._lock = threading.RLock()
        self._synced_at: float | None = None
        self._contents: Contents | None = None  # the last sync's
        self._tokens = Tokens(sources, clock)
        self._pinned: set[Path] = set()
        self._warned: set[str] = set()

    # -- the public API ---------------------------------------------------------------------

    def setup(self) -> list[str]:
        """Materialize every volume of the pod; returns warnings (each given once).

        Idempotent: existing directories are kept, contents re-read and rewritten only when
        they changed. Raises :class:`VolumeError` for a malformed or unsupported volume (at
        once), or with one ``MountVolume.SetUp failed for volume "x" : <cause>`` message per
        volume that could not be set up (after trying them all).
        """
        with self._lock:
            warnings: list[tuple[str, str]] = []
            self._sync(self._volumes(), warnings, content_only=False)
            self._warned.update(name for name, _message in warnings)
            return [message for _name, message in warnings]

    def refresh(self, pod: Mapping[str, Any] | None = None) -> bool:
        """Re-read configMap, secret, downwardAPI and projected volumes; True when a file changed.

        ``pod``, when given, replaces the pod object (new labels or annotations). Does nothing
        before :meth:`setup`. A volume that cannot be read keeps its files (kubelet does the
        same); the failures are raised as in :meth:`setup`, after the others are updated.
        """
        with self._lock:
            if pod is not None:
                self.pod = pod
            if self._synced_at is None:
                return False
            return self._sync(self._volumes(), [], content_only=True)

    def next_refresh(self) -> float | None:
        """Seconds until :meth:`refresh` is due (0 when it is); None when no volume needs it.

        ConfigMap and Secret contents every :data:`CONTENT_REFRESH_SECONDS`; a token at 80% of
        its lifetime or after 24 hours, whichever comes first.
        """
        with self._lock:
            if self._synced_at is None:
                return None
            due = self._tokens.refresh_times()
            if self._contents is not None and self._contents.watches_objects:
                due.append(self._synced_at + CONTENT_REFRESH_SECONDS)
            return max(0.0, min(due) - self.clock()) if due else None

    def preopens(self, container: Mapping[str, Any], env: Mapping[str, str] | None = None) -> list[Preopen]:
        """The preopened directories of ``container``'s ``volumeMounts``, in their order.

        ``env`` is the container's environment (for ``subPathExpr``). configMap, secret,
        downwardAPI and projected volumes are always read-only, others when ``readOnly``.
        A ``subPath`` must be relative, without ``..``, and stay inside the volume once its
        symlinks are resolved; a missing one is created in an emptyDir or hostPath volume, as
        kubelet does. Call after :meth:`setup`. Raises :class:`VolumeError` naming the mount
        (having closed what it opened); otherwise the caller closes the directories.
        """
        with self._lock:
            volumes = self._volumes()
            return container_preopens(
                container, volumes, env or {}, root=self.root, host_paths=self.host_paths, pinned=self._pinned
            )

    def usage_exceeded(self) -> list[str]:
        """kubelet's eviction message for each emptyDir whose disk usage is over its sizeLimit.

        ``Usage of EmptyDir volume "x" exceeds the limit "1Gi". `` (the pod is then evicted:
        phase Failed, reason Evicted, this message). Usage counts allocated blocks.
        """
        with self._lock:
            try:
                volumes = self._volumes()
            except VolumeError:
                return []
            messages = []
            for volume in volumes.values():
                if volume.kind != "emptyDir":
                    continue
                message = size_limit_exceeded(self.root, volume)
                if message:
                    messages.append(message)
            return messages

    def cleanup(self) -> None:
        """Remove the pod's volume directories (never a hostPath's contents: they are not in it).

        Symlinks are removed, not followed. Raises :class:`VolumeError` when it cannot.
        """
        with self._lock:
            try:
                if self.root.is_symlink():
                    self.root.unlink()
                elif self.root.exists():
                    shutil.rmtree(self.root)
            except OSError as exc:
                raise VolumeError(f"cannot remove the volumes of the pod: {exc}") from exc
            self._synced_at = None
            self._tokens.clear()
            self._pinned.clear()
            self._contents = None

    # -- the pod's volumes ----------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return namespace_of(self.pod)

    def _volumes(self) -> dict[str, Volume]:
        return volumes_of(self.pod)

    # -- setup and refresh ------------------------------------------------------------------

    def _sync(
        self, volumes: Mapping[str, Volume], warnings: list[tuple[str, str]], *, content_only: bool
    ) -> bool:
        failures: list[tuple[str, str]] = []
        changed = False
        contents = self._contents = Contents(
            self.pod, self.sources, self._tokens, allocatable=self.allocatable
        )
        self._tokens.start()
        for volume in volumes.values():
            if content_only and volume.kind not in CONTENT_KINDS:
                continue
            try:
                changed |= self._set_up(volume, contents, warnings)
            except (VolumeError, EnvError, OSError) as exc:
                failures.append((volume.name, f'MountVolume.SetUp failed for volume "{volume.name}" : {exc}'))
        self._synced_at = self.clock()
        if not failures:  # a failing volume may not have asked for its token: keep them all then
            self._tokens.keep_used()
        if failures:
            raise VolumeError(*(m for _n, m in failures), volumes=[n for n, _m in failures])
        return changed

    def _set_up(self, volume: Volume, contents: Contents, warnings: list[tuple[str, str]]) -> bool:
        if volume.kind == "emptyDir":
            warning = set_up_empty_dir(self.root, volume, warned=self._warned)
            if warning:
                warnings.append((volume.name, warning))
            return False
        if volume.kind == "hostPath":
            check_host_path(volume, self.host_paths)
            return False
        payload = contents.payload(volume)
        target = volume_dir(self.root, volume)
        make_dirs(self.root, target.relative_to(self.root))
        return write_payload(target, payload, keep=self._pinned)
