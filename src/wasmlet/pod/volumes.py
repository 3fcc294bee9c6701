"""A pod's volumes, each given to the module as a WASI preopened directory at its mountPath.

One :class:`PodVolumes` per pod, rooted at ``<data_dir>/pods/<uid>/volumes``; every volume
lives in ``<root>/<plugin>/<name>`` as kubelet lays it out (``kubernetes.io~empty-dir``,
``kubernetes.io~configmap``, ``kubernetes.io~secret``, ``kubernetes.io~downward-api``,
``kubernetes.io~projected``); hostPath volumes are used in place, never copied or linked.

Volume types:

- ``emptyDir``: a directory, mode 0777 as kubelet makes it. ``medium: Memory`` is a plain
  directory on disk too (setup warns once); ``HugePages`` media are refused. ``sizeLimit`` is
  enforced as kubelet's eviction manager does it: :meth:`PodVolumes.usage_exceeded` gives the
  eviction message of each emptyDir whose disk usage is over its limit.
- ``configMap`` / ``secret``: keys (ConfigMap ``data`` and ``binaryData``) to files, or only the
  ``items`` (``key``, ``path``, ``mode``), ``defaultMode`` (0644), ``optional``. Secret files are
  never world-readable: their modes (item or default) lose the "other" bits (0644 → 0640), where
  kubelet would keep them. The token of a ``serviceAccountToken`` projection is 0600.
- ``downwardAPI``: ``fieldRef`` (``metadata.name``, ``namespace``, ``uid``, one label or
  annotation, or all of them as ``key="value"`` lines, sorted, values Go-quoted) and
  ``resourceFieldRef`` (``containerName``, ``divisor``) — the functions of :mod:`wasmlet.pod.env`.
- ``projected``: ``configMap``, ``secret``, ``downwardAPI`` and ``serviceAccountToken``
  (``audience``, ``expirationSeconds`` default 3600 min 600, ``path``) sources; a later source's
  file replaces an earlier one's of the same path, as in kubelet. ``clusterTrustBundle`` and
  ``podCertificate`` are refused.
- ``hostPath``: only under the directories the node allows (:mod:`wasmlet.pod.host_paths`, checked
  again with symlinks resolved when it is mounted); ``type`` "", ``DirectoryOrCreate`` (created
  0755), ``Directory``; the file-like
  types (``File``, ``FileOrCreate``, ``Socket``, ``CharDevice``, ``BlockDevice``) are refused at
  setup: a WASI preopen is a directory. A missing path with no type is created as a directory,
  as container runtimes do for a bind mount source.
- anything else (persistentVolumeClaim, nfs, csi, ephemeral, image, ...) is refused.

Updates (configMap, secret, downwardAPI, projected) are written as kubelet's AtomicWriter does:
the files go to a new ``..<timestamp>.<random>`` directory, then the ``..data`` symlink is
replaced (rename(2), atomic) to point at it, then the old directory is removed. The names the
module sees are symlinks through ``..data`` (``key -> ..data/key``), so every open sees either
the whole old set or the whole new set; WASI (cap-std) follows such relative symlinks inside a
preopen. A file the module holds open keeps its old content. A ``subPath`` into such a volume
is the content of when the container started (kubelet's bind mount does the same): the
directory it is in is kept until :meth:`PodVolumes.cleanup`.

Every directory handed to the module is opened here component by component without following
symlinks and held by its descriptor (:mod:`wasmlet.held_dir`): a module that swaps a directory in
its volume for a symlink while a sibling container's subPath is being mounted gets an error, not
the host's ``/`` (the kubelet's CVE-2017-1002101). The caller owns the descriptors
:meth:`PodVolumes.preopens` returns.

File modes only protect against other users of the host: a WASI module has no uid, it reads
what the wasmlet process can read, and readOnly is enforced by the preopen itself.

Errors are :class:`VolumeError`. Kubelet reports a volume that cannot be set up as a
``FailedMount`` event (``MountVolume.SetUp failed for volume "x" : <cause>``) while the pod stays
Pending with its containers ``ContainerCreating``, and a mount it cannot make (subPath, no such
volume) as the container's ``CreateContainerConfigError``; see :class:`PodVolumes` for which
method raises which.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from wasmlet.held_dir import HeldDir, UnsafePathError, open_beneath
from wasmlet.kube.quantity import parse_quantity
from wasmlet.kube.shapes import Shapes
from wasmlet.kube.shapes import kind as _kind
from wasmlet.pod.env import EnvError, expand, resource_value, utf8, volume_field_value
from wasmlet.pod.host_paths import HostPathPolicy

log = logging.getLogger(__name__)

Preopen = tuple[HeldDir, str, bool]
"""(host dir, held open; guest path; read_only): a preopen of a :class:`~wasmlet.runtime.engine.RunSpec`."""

CONTENT_REFRESH_SECONDS = 60.0  # kubelet re-reads ConfigMaps and Secrets at every pod sync (~1 min)
TOKEN_MAX_AGE_SECONDS = 24 * 3600.0
TOKEN_REFRESH_FRACTION = 0.8
DEFAULT_TOKEN_EXPIRATION = 3600
MIN_TOKEN_EXPIRATION = 600
MAX_TOKEN_EXPIRATION = 1 << 32
DEFAULT_MODE = 0o644
TOKEN_MODE = 0o600
DIR_MODE = 0o755
EMPTY_DIR_MODE = 0o777
DATA_DIR = "..data"

_PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
_CONTENT_KINDS = ("configMap", "secret", "downwardAPI", "projected")
_HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory")
_FILE_HOST_PATH_TYPES = ("File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice")
_PROJECTIONS = ("configMap", "secret", "downwardAPI", "serviceAccountToken")
_UNSUPPORTED_PROJECTIONS = ("clusterTrustBundle", "podCertificate")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_PATH = 4096
_MAX_SEGMENT = 255

Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


class VolumeError(Exception):
    """A volume cannot be set up or mounted.

    ``messages`` holds one message per failing volume (kubelet records one ``FailedMount`` event
    each); ``volumes`` the names of the volumes (or volumeMounts) concerned. ``str(error)`` is
    the messages joined with ``"; "``.
    """

    def __init__(self, *messages: str, volumes: Sequence[str] = ()) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages
        self.volumes = tuple(volumes)


class VolumeSources(Protocol):
    """Where volume contents come from (the pod's namespace is passed in).

    To fail for another reason than a missing object, raise :class:`~wasmlet.pod.env.EnvError`
    with the message the event should show (:class:`wasmlet.pod.sources.ApiSources` does).
    """

    def configmap_files(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The ConfigMap's ``data`` (UTF-8) and ``binaryData``, or None when there is no such ConfigMap."""

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """The Secret's ``data``, base64-decoded, or None when there is no such Secret."""

    def token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod_name: str,
        pod_uid: str,
        audience: str,
        expiration_seconds: int,
    ) -> tuple[str, datetime]:
        """A TokenRequest's token bound to the pod, and its expiration time."""


@dataclass(frozen=True)
class _Volume:
    name: str
    kind: str
    source: Mapping[str, Any]


@dataclass(frozen=True)
class _Token:
    token: str
    refresh_at: float  # epoch seconds
    expires_at: float


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
        self._watches_objects = False
        self._tokens: dict[tuple[str, int], _Token] = {}
        self._tokens_used: set[tuple[str, int]] = set()
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
            due = [token.refresh_at for token in self._tokens.values()]
            if self._watches_objects:
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
            if not isinstance(container, Mapping):
                raise VolumeError(f"container: expected an object, not {_kind(container)}")
            mounts = container.get("volumeMounts")
            if mounts is None:
                return []
            if not isinstance(mounts, list | tuple):
                raise VolumeError(f"volumeMounts: expected a list, not {_kind(mounts)}")
            result: list[Preopen] = []
            try:
                for index, mount in enumerate(mounts):
                    preopen = self._preopen(index, mount, volumes, env or {})
                    result.append(preopen)
                    if any(other[1] == preopen[1] for other in result[:-1]):
                        raise VolumeError(f'volumeMounts[{index}]: mountPath "{preopen[1]}" must be unique')
            except BaseException:
                close_preopens(result)
                raise
            return result

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
                text = volume.source.get("sizeLimit")
                try:
                    limit = _quantity(text)
                except VolumeError:
                    continue
                if limit > 0 and _disk_usage(self._dir(volume)) > limit:
                    messages.append(f'Usage of EmptyDir volume "{volume.name}" exceeds the limit "{text}". ')
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
            self._watches_objects = False

    # -- the pod's volumes ----------------------------------------------------------------

    @property
    def namespace(self) -> str:
        metadata = self.pod.get("metadata") if isinstance(self.pod, Mapping) else None
        value = metadata.get("namespace") if isinstance(metadata, Mapping) else None
        return value if isinstance(value, str) and value else "default"

    def _metadata(self, key: str) -> str:
        metadata = self.pod.get("metadata") if isinstance(self.pod, Mapping) else None
        value = metadata.get(key) if isinstance(metadata, Mapping) else None
        return value if isinstance(value, str) else ""

    def _volumes(self) -> dict[str, _Volume]:
        if not isinstance(self.pod, Mapping):
            raise VolumeError(f"pod: expected an object, not {_kind(self.pod)}")
        spec = self.pod.get("spec")
        if spec is None:
            return {}
        if not isinstance(spec, Mapping):
            raise VolumeError(f"pod spec: expected an object, not {_kind(spec)}")
        items = spec.get("volumes")
        if items is None:
            return {}
        if not isinstance(items, list | tuple):
            raise VolumeError(f"volumes: expected a list, not {_kind(items)}")
        volumes: dict[str, _Volume] = {}
        for index, item in enumerate(items):
            volume = _parse_volume(index, item)
            if volume.name in volumes:
                raise VolumeError(f'volume "{volume.name}": the name is used twice', volumes=[volume.name])
            volumes[volume.name] = volume
        return volumes

    def _dir(self, volume: _Volume) -> Path:
        return self.root / _PLUGIN_DIRS[volume.kind] / volume.name

    # -- setup and refresh ------------------------------------------------------------------

    def _sync(
        self, volumes: Mapping[str, _Volume], warnings: list[tuple[str, str]], *, content_only: bool
    ) -> bool:
        failures: list[tuple[str, str]] = []
        changed = False
        self._watches_objects = False
        self._tokens_used = set()
        for volume in volumes.values():
            if content_only and volume.kind not in _CONTENT_KINDS:
                continue
            try:
                changed |= self._set_up(volume, warnings)
            except (VolumeError, EnvError, OSError) as exc:
                failures.append((volume.name, f'MountVolume.SetUp failed for volume "{volume.name}" : {exc}'))
        self._synced_at = self.clock()
        if not failures:  # a failing volume may not have asked for its token: keep them all then
            self._tokens = {k: v for k, v in self._tokens.items() if k in self._tokens_used}
        if failures:
            raise VolumeError(*(m for _n, m in failures), volumes=[n for n, _m in failures])
        return changed

    def _set_up(self, volume: _Volume, warnings: list[tuple[str, str]]) -> bool:
        if volume.kind == "emptyDir":
            self._empty_dir(volume, warnings)
            return False
        if volume.kind == "hostPath":
            _host_path(volume, self.host_paths)
            return False
        payload = self._payload(volume)
        target = self._dir(volume)
        _make_dirs(self.root, target.relative_to(self.root))
        return _write_payload(target, payload, keep=self._pinned)

    def _empty_dir(self, volume: _Volume, warnings: list[tuple[str, str]]) -> None:
        medium = _string(volume.source, "medium", "emptyDir")
        if medium.startswith("HugePages"):
            raise VolumeError(f"emptyDir medium {medium} is not supported by wasmlet")
        if medium not in ("", "Memory"):
            raise VolumeError(f'unknown emptyDir medium "{medium}"')
        if volume.source.get("sizeLimit") is not None:
            _quantity(volume.source["sizeLimit"], "emptyDir.sizeLimit")
        path = self._dir(volume)
        _make_dirs(self.root, path.parent.relative_to(self.root))
        if path.is_symlink() or not path.is_dir():
            path.mkdir()
            os.chmod(path, EMPTY_DIR_MODE)  # mkdir's mode went through the umask
        if medium == "Memory" and volume.name not in self._warned:
            message = f'volume "{volume.name}": emptyDir medium Memory is a directory on disk under wasmlet'
            warnings.append((volume.name, message))

    def _payload(self, volume: _Volume) -> Payload:
        source = volume.source
        default_mode = _mode(source.get("defaultMode"), "defaultMode", DEFAULT_MODE)
        if volume.kind == "configMap":
            return self._object_payload(source, "configMap", "name", default_mode)
        if volume.kind == "secret":
            return self._object_payload(source, "secret", "secretName", default_mode)
        if volume.kind == "downwardAPI":
            return self._downward_payload(source, "downwardAPI", default_mode)
        sources = source.get("sources")
        if sources is None:
            return {}
        if not isinstance(sources, list | tuple):
            raise VolumeError(f"projected.sources: expected a list, not {_kind(sources)}")
        payload: Payload = {}
        errors: list[str] = []
        for index, item in enumerate(sources):
            try:
                payload.update(self._projection(index, item, default_mode))
            except (VolumeError, EnvError) as exc:
                errors.append(str(exc))
        if errors:
            raise VolumeError(_aggregate(errors))
        return payload

    def _projection(self, index: int, item: object, default_mode: int) -> Payload:
        where = f"sources[{index}]"
        if not isinstance(item, Mapping):
            raise VolumeError(f"{where}: expected an object, not {_kind(item)}")
        kinds = [k for k, v in item.items() if v is not None]
        for kind in kinds:
            if kind in _UNSUPPORTED_PROJECTIONS:
                raise VolumeError(f"{where}: {kind} projections are not supported by wasmlet")
            if kind not in _PROJECTIONS:
                raise VolumeError(f"{where}: unknown projection {kind}")
        if len(kinds) != 1:
            raise VolumeError(f"{where}: must specify exactly one of {', '.join(_PROJECTIONS)}")
        kind = kinds[0]
        source = _object(item[kind], f"{where}.{kind}")
        if kind in ("configMap", "secret"):
            return self._object_payload(source, kind, "name", default_mode)
        if kind == "downwardAPI":
            return self._downward_payload(source, f"{where}.downwardAPI", default_mode)
        return self._token_payload(source, f"{where}.serviceAccountToken")

    def _object_payload(self, source: Mapping[str, Any], kind: str, name_field: str, mode: int) -> Payload:
        name = _string(source, name_field, kind)
        if not name:
            raise VolumeError(f"{kind}.{name_field} is required")
        optional = _boolean(source, "optional", kind)
        secret = kind == "secret"
        self._watches_objects = True
        if secret:
            data = self.sources.secret(self.namespace, name)
        else:
            data = self.sources.configmap_files(self.namespace, name)
        if data is None:
            if optional:
                return {}
            raise VolumeError(f'{kind.lower()} "{name}" not found')
        items = source.get("items")
        if items is not None and not isinstance(items, list | tuple):
            raise VolumeError(f"{kind}.items: expected a list, not {_kind(items)}")
        mask = 0o770 if secret else 0o777
        payload: Payload = {}
        if not items:
            for key, value in data.items():
                payload[_clean_path(str(key), f"key {key}")] = (_bytes(value, key), mode & mask)
            return payload
        for index, item in enumerate(items):
            where = f"{kind}.items[{index}]"
            entry = _object(item, where)
            key, path = _string(entry, "key", where), _string(entry, "path", where)
            if not key or not path:
                raise VolumeError(f"{where}: key and path are required")
            item_mode = _mode(entry.get("mode"), f"{where}.mode", mode)
            if key not in data:
                if optional:
                    continue
                what = (
                    "secret references non-existent secret key"
                    if secret
                    else ("configmap references non-existent config key")
                )
                raise VolumeError(f"{what}: {key}")
            payload[_clean_path(path, where)] = (_bytes(data[key], key), item_mode & mask)
        return payload

    def _downward_payload(self, source: Mapping[str, Any], where: str, mode: int) -> Payload:
        items = source.get("items")
        if items is None:
            return {}
        if not isinstance(items, list | tuple):
            raise VolumeError(f"{where}.items: expected a list, not {_kind(items)}")
        payload: Payload = {}
        errors: list[str] = []
        for index, item in enumerate(items):
            item_where = f"{where}.items[{index}]"
            try:
                entry = _object(item, item_where)
                path = _clean_path(_string(entry, "path", item_where), item_where)
                item_mode = _mode(entry.get("mode"), f"{item_where}.mode", mode)
                payload[path] = (utf8(self._downward_value(entry, item_where)), item_mode)
            except (VolumeError, EnvError) as exc:
                errors.append(str(exc))
        if errors:
            raise VolumeError(_aggregate(errors))
        return payload

    def _downward_value(self, entry: Mapping[str, Any], where: str) -> str:
        refs = [k for k in ("fieldRef", "resourceFieldRef") if entry.get(k) is not None]
        if len(refs) != 1:
            raise VolumeError(f"{where}: must specify exactly one of fieldRef, resourceFieldRef")
        ref = _object(entry[refs[0]], f"{where}.{refs[0]}")
        if refs[0] == "fieldRef":
            _string(ref, "apiVersion", f"{where}.fieldRef")
            return volume_field_value(self.pod, _string(ref, "fieldPath", f"{where}.fieldRef"))
        return resource_value(
            self.pod,
            _string(ref, "containerName", f"{where}.resourceFieldRef"),
            _string(ref, "resource", f"{where}.resourceFieldRef"),
            divisor=ref.get("divisor"),
            allocatable=self.allocatable,
            where=f"{where}.resourceFieldRef",
        )

    def _token_payload(self, source: Mapping[str, Any], where: str) -> Payload:
        audience = _string(source, "audience", where)
        path = _clean_path(_string(source, "path", where), where)
        expiration = source.get("expirationSeconds")
        if expiration is None:
            expiration = DEFAULT_TOKEN_EXPIRATION
        if isinstance(expiration, bool) or not isinstance(expiration, int):
            raise VolumeError(f"{where}.expirationSeconds: expected an integer, not {_kind(expiration)}")
        if not MIN_TOKEN_EXPIRATION <= expiration <= MAX_TOKEN_EXPIRATION:
            raise VolumeError(
                f"{where}.expirationSeconds: must be between {MIN_TOKEN_EXPIRATION} and "
                f"{MAX_TOKEN_EXPIRATION} seconds"
            )
        return {path: (utf8(self._token(audience, expiration)), TOKEN_MODE)}

    def _token(self, audience: str, expiration: int) -> str:
        """The pod's token for this audience and lifetime: cached until due, as kubelet's token manager."""
        key = (audience, expiration)
        self._tokens_used.add(key)
        cached = self._tokens.get(key)
        now = self.clock()
        if cached is not None and now < cached.refresh_at:
            return cached.token
        spec = self.pod.get("spec")
        account = ""
        if isinstance(spec, Mapping):
            account = spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
        try:
            token, expires = self.sources.token(
                self.namespace,
                account if isinstance(account, str) and account else "default",
                pod_name=self._metadata("name"),
                pod_uid=self._metadata("uid"),
                audience=audience,
                expiration_seconds=expiration,
            )
        except EnvError as exc:
            if cached is not None and now < cached.expires_at:
                log.warning(
                    "pod %s: %s; the current token is kept until it expires", self._metadata("name"), exc
                )
                return cached.token
            raise
        expires_at = (expires if expires.tzinfo else expires.replace(tzinfo=UTC)).timestamp()
        lifetime = max(0.0, expires_at - now)
        refresh_at = now + min(TOKEN_REFRESH_FRACTION * lifetime, TOKEN_MAX_AGE_SECONDS)
        self._tokens[key] = _Token(token, refresh_at, expires_at)
        return token

    # -- mounts -----------------------------------------------------------------------------

    def _preopen(
        self, index: int, mount: object, volumes: Mapping[str, _Volume], env: Mapping[str, str]
    ) -> Preopen:
        if not isinstance(mount, Mapping):
            raise VolumeError(f"volumeMounts[{index}]: expected an object, not {_kind(mount)}")
        name = _string(mount, "name", f"volumeMounts[{index}]")
        if not name:
            raise VolumeError(f"volumeMounts[{index}]: name is required")
        where = f'volumeMount "{name}"'
        mount_path = _string(mount, "mountPath", where)
        if not mount_path or not _encodable(mount_path):
            raise VolumeError(
                f"{where}: mountPath is required (a path without NUL, in UTF-8)", volumes=[name]
            )
        read_only = _boolean(mount, "readOnly", where)
        volume = volumes.get(name)
        if volume is None:
            raise VolumeError(f'{where}: no volume named "{name}"', volumes=[name])
        sub_path = _sub_path(mount, env, where)
        host_path = volume.kind == "hostPath"
        try:
            if host_path:
                base = Path(_host_path_name(volume.source))
            else:
                base = self._dir(volume)
                if base.is_symlink() or not base.is_dir():
                    raise VolumeError(f'{where}: volume "{name}" is not set up', volumes=[name])
            held = self._resolve(
                base, sub_path, where, create=volume.kind in ("emptyDir", "hostPath"), host_path=host_path
            )
        except VolumeError as exc:
            raise VolumeError(*exc.messages, volumes=[name]) from exc
        except OSError as exc:
            raise VolumeError(f"{where}: {exc.strerror or exc}", volumes=[name]) from exc
        if volume.kind in _CONTENT_KINDS and sub_path:
            self._pin(base, held.path)
        return held, mount_path, read_only or volume.kind in _CONTENT_KINDS

    def _resolve(
        self, base: Path, sub_path: str, where: str, *, create: bool, host_path: bool = False
    ) -> HeldDir:
        """Resolve ``base/sub_path`` once, check it, and open it without following symlinks.

        The path is resolved (symlinks inside the volume are allowed, as kubelet allows them),
        checked to be inside the volume (and, for a hostPath, allowed by the node), then opened
        component by component from the volume's own directory (from ``/`` for a hostPath) with
        ``O_NOFOLLOW``: what changed in between fails the open and is never followed.
        """
        what = f'subPath "{sub_path}"' if sub_path else str(base)
        try:
            real_base = Path(os.path.realpath(base))
            target = Path(os.path.realpath(real_base / sub_path)) if sub_path else real_base
        except OSError as exc:  # a symlink on the way was replaced while it was read
            raise VolumeError(f"{where}: {what} changed while it was mounted: {exc.strerror}") from None
        if not _inside(target, real_base):
            raise VolumeError(f"{where}: {what} resolves outside the volume")
        if host_path:
            refusal = self.host_paths.refusal(str(target))
            if refusal:
                raise VolumeError(f"{where}: hostPath {refusal}")
        if not sub_path and not target.exists():
            raise VolumeError(f"{where}: {base} does not exist")
        top = Path("/") if host_path else real_base
        mode = stat.S_IMODE(real_base.stat().st_mode) if create and sub_path else None
        try:
            return open_beneath(top, target.relative_to(top), create_mode=mode)
        except FileNotFoundError:
            raise VolumeError(f"{where}: {what} does not exist in the volume") from None
        except UnsafePathError as exc:
            if target.is_file():
                raise VolumeError(
                    f"{where}: {what} is not a directory: a WASI module can only mount directories "
                    "(preopens), not files"
                ) from None
            raise VolumeError(f"{where}: {what} changed while it was mounted: {exc.strerror}") from None

    def _pin(self, base: Path, host: Path) -> None:
        """Keep the ``..<timestamp>`` directory a subPath preopen points into (see the module doc)."""
        parts = host.relative_to(os.path.realpath(base)).parts
        if parts and parts[0].startswith(".."):
            self._pinned.add(base / parts[0])  # as _write_payload lists it: base is the volume's target


# --- parsing ---------------------------------------------------------------------------------


def _parse_volume(index: int, item: object) -> _Volume:
    if not isinstance(item, Mapping):
        raise VolumeError(f"volumes[{index}]: expected an object, not {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise VolumeError(f"volumes[{index}]: name is required")
    if len(name) > 63 or _DNS1123_LABEL.fullmatch(name) is None:
        raise VolumeError(
            f'volume "{name}": the name must be a lowercase RFC 1123 label (at most 63 characters: '
            "a-z, 0-9 and '-', starting and ending with a letter or digit)",
            volumes=[name],
        )
    where = f'volume "{name}"'
    kinds = [k for k, v in item.items() if k != "name" and v is not None]
    if not kinds:
        raise VolumeError(f"{where}: must specify a volume type", volumes=[name])
    if len(kinds) > 1:
        raise VolumeError(
            f"{where}: may not specify more than 1 volume type (it specifies {', '.join(map(str, kinds))})",
            volumes=[name],
        )
    kind = str(kinds[0])
    if kind not in _PLUGIN_DIRS and kind != "hostPath":
        raise VolumeError(f"{where}: {kind} volumes are not supported by wasmlet", volumes=[name])
    source = item[kind]
    if not isinstance(source, Mapping):
        raise VolumeError(f"{where}: {kind}: expected an object, not {_kind(source)}", volumes=[name])
    return _Volume(name, kind, source)


def _host_path_name(source: Mapping[str, Any]) -> str:
    path = _string(source, "path", "hostPath")
    if not path.startswith("/") or not _encodable(path):
        raise VolumeError(f'hostPath.path "{path}" must be an absolute path (without NUL, in UTF-8)')
    if ".." in path.split("/"):
        raise VolumeError(f"hostPath.path \"{path}\" must not contain '..'")
    return path


def _host_path(volume: _Volume, policy: HostPathPolicy) -> None:
    """hostPath's type check (kubelet's checkType), after refusing what the node does not allow
    and what cannot be a preopen."""
    path = _host_path_name(volume.source)
    refusal = policy.refusal(path)
    if refusal:
        raise VolumeError(f"hostPath {refusal}")
    kind = _string(volume.source, "type", "hostPath")
    if kind in _FILE_HOST_PATH_TYPES:
        raise VolumeError(
            f"hostPath type {kind} cannot be mounted: a WASI module can only mount directories (preopens)"
        )
    if kind not in _HOST_PATH_TYPES:
        raise VolumeError(f"{kind} is an invalid volume type")
    if kind != "Directory" and not os.path.exists(path):
        try:
            policy.make_directory(path, DIR_MODE)
        except OSError as exc:  # UnsafePathError too: a component is not a real directory
            raise VolumeError(f"hostPath {path} cannot be created: {exc.strerror or exc}") from exc
    if kind and not os.path.isdir(path):
        raise VolumeError(f"hostPath type check failed: {path} is not a directory")


def _sub_path(mount: Mapping[str, Any], env: Mapping[str, str], where: str) -> str:
    """The mount's subPath, or its subPathExpr expanded (kubelet's ExpandContainerVolumeMounts)."""
    sub_path = _string(mount, "subPath", where)
    expression = _string(mount, "subPathExpr", where)
    if sub_path and expression:
        raise VolumeError(f"{where}: subPath and subPathExpr are mutually exclusive")
    if expression:
        lookup = _Lookup(env)
        sub_path = expand(expression, lookup)
        if lookup.missing:
            raise VolumeError(f"{where}: subPathExpr: missing value for {', '.join(sorted(lookup.missing))}")
    if not sub_path:
        return ""
    if not _encodable(sub_path):
        raise VolumeError(f"{where}: subPath must be UTF-8 without NUL")
    if sub_path.startswith("/"):
        raise VolumeError(f'{where}: subPath "{sub_path}" must not be an absolute path')
    if ".." in sub_path.split("/"):
        raise VolumeError(f"{where}: subPath \"{sub_path}\" must not contain '..'")
    return sub_path


class _Lookup(Mapping[str, str]):
    """Every name is "in" it; a name without a non-empty value is recorded as missing."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.missing: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        value = self.env.get(key, "")
        if not value:
            self.missing.add(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


# --- values ----------------------------------------------------------------------------------


_SHAPES = Shapes(VolumeError)
_object = _SHAPES.object
_string = _SHAPES.string
_boolean = _SHAPES.boolean


def _mode(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise VolumeError(f"{where}: must be a number between 0 and 0777 (octal), both inclusive")
    return value


def _quantity(value: object, where: str = "quantity") -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise VolumeError(f"{where}: expected a quantity, not {_kind(value)}")
    try:
        return parse_quantity(value if isinstance(value, str) else str(value))
    except ValueError as exc:
        raise VolumeError(f"{where}: {exc}") from None


def _bytes(value: object, key: str) -> bytes:
    if isinstance(value, str):
        return utf8(value)
    if not isinstance(value, bytes | bytearray):
        raise VolumeError(f"key {key}: expected bytes, not {_kind(value)}")
    return bytes(value)


def _encodable(text: str) -> bool:
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_path(path: str, where: str) -> str:
    """A payload path made relative and clean, or VolumeError (kubelet AtomicWriter's validatePath)."""
    if not path:
        raise VolumeError(f"{where}: path is required")
    if not _encodable(path):
        raise VolumeError(f"{where}: invalid path: must be UTF-8 without NUL")
    if path.startswith("/"):
        raise VolumeError(f"{where}: invalid path: must be relative path: {path}")
    if len(path) > _MAX_PATH:
        raise VolumeError(f"{where}: invalid path: path too long")
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise VolumeError(f"{where}: invalid path: must not contain '..': {path}")
    if any(len(s.encode()) > _MAX_SEGMENT for s in segments):
        raise VolumeError(f"{where}: invalid path: a path segment is too long: {path}")
    clean = "/".join(segments)
    if not clean:
        raise VolumeError(f"{where}: invalid path: {path}")
    if clean.startswith(".."):
        raise VolumeError(f"{where}: invalid path: must not start with '..': {path}")
    return clean


def _aggregate(errors: Sequence[str]) -> str:
    """apimachinery's NewAggregate(...).Error(): one message, or ``[a, b]``."""
    return errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def close_preopens(preopens: Sequence[Preopen]) -> None:
    """Close the directories of ``preopens`` (once the module's store holds its own, or on failure)."""
    for held, _guest, _read_only in preopens:
        held.close()


# --- the filesystem --------------------------------------------------------------------------


def _make_dirs(base: Path, relative: Path, mode: int = DIR_MODE) -> None:
    """Create ``base/relative`` one directory at a time with ``mode``, never through a symlink."""
    base.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        open_beneath(base, relative.as_posix(), create_mode=mode).close()
    except UnsafePathError as exc:
        raise VolumeError(str(exc.strerror)) from None


def _write_payload(target: Path, payload: Payload, *, keep: set[Path]) -> bool:
    """Write ``payload`` under ``target`` as kubelet's AtomicWriter does; True when it changed.

    ``keep``: old ``..<timestamp>`` directories not to remove (pinned by a subPath preopen).
    """
    _check_conflicts(payload)
    data_link = target / DATA_DIR
    current = os.readlink(data_link) if data_link.is_symlink() else None
    tops = {path.split("/")[0] for path in payload}
    holds = current is not None and _holds(target / current, payload)
    if holds and _links_ok(target, tops):
        return False
    if current is None or not holds:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
        try:
            os.chmod(new_dir, DIR_MODE)
            for path, (data, mode) in sorted(payload.items()):
                _make_dirs(new_dir, Path(path).parent)
                _write_file(new_dir / path, data, mode)
            tmp_link = target / f"{DATA_DIR}_tmp"
            if tmp_link.is_symlink() or tmp_link.exists():
                tmp_link.unlink()
            os.symlink(new_dir.name, tmp_link)
            os.replace(tmp_link, data_link)  # the swap: readers see the old set or the new one
        except BaseException:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        current = new_dir.name
    for top in sorted(tops):
        link = target / top
        want = f"{DATA_DIR}/{top}"
        if link.is_symlink() and os.readlink(link) == want:
            continue
        _remove(link)
        os.symlink(want, link)
    for entry in os.listdir(target):
        if entry in (DATA_DIR, current) or entry in tops or target / entry in keep:
            continue
        _remove(target / entry)  # old ..<timestamp> directories, user-visible links of removed paths
    return True


def _check_conflicts(payload: Payload) -> None:
    for path in payload:
        parts = path.split("/")
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            if prefix in payload:
                raise VolumeError(
                    f'paths "{prefix}" and "{path}" conflict: one would be a file and a directory'
                )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask applied at creation; only ever narrower than mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _holds(directory: Path, payload: Payload) -> bool:
    """Whether ``directory`` holds exactly ``payload`` (contents and modes)."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    found: set[str] = set()
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(parent) / name
            relative = path.relative_to(directory).as_posix()
            expected = payload.get(relative)
            if expected is None or path.is_symlink():
                return False
            if stat.S_IMODE(path.lstat().st_mode) != expected[1] or path.read_bytes() != expected[0]:
                return False
            found.add(relative)
    return found == set(payload)


def _links_ok(target: Path, tops: set[str]) -> bool:
    for entry in os.listdir(target):
        if entry.startswith(".."):
            continue
        if entry not in tops:
            return False
    for top in tops:
        link = target / top
        if not link.is_symlink() or os.readlink(link) != f"{DATA_DIR}/{top}":
            return False
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du``), symlinks not followed."""
    try:
        total = path.lstat().st_blocks * 512
    except OSError:
        return 0
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                continue
    return total
