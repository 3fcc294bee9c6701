"""Garbage collection of modules, their compiled artefacts and the directories of gone pods.

The kubelet's image GC (pkg/kubelet/images/image_gc_manager.go) over wasmlet's files: what is
removed when, and why a new pod's directory is never taken for an orphan, is in
docs/security.md ("Image pulls and garbage collection").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from wasmlet.oci.store import DIGEST_FILE, LOCK_FILE, MODULE_FILE, ModuleStore

log = logging.getLogger(__name__)

DEFAULT_HIGH_THRESHOLD = 85
DEFAULT_LOW_THRESHOLD = 80
DEFAULT_MIN_AGE = 120.0
GC_PERIOD = 300.0  # the kubelet's ImageGCPeriod
# What the runtime makes of a module (<sha256>.cwasm) or keeps of a wasi:http component
# (<sha256>.http.wasm) in the compiled-module cache.
COMPILED_SUFFIXES = (".cwasm", ".http.wasm")


@dataclass(frozen=True)
class GCPolicy:
    high_threshold: int = DEFAULT_HIGH_THRESHOLD  # percent of the store's filesystem
    low_threshold: int = DEFAULT_LOW_THRESHOLD
    min_age: float = DEFAULT_MIN_AGE  # seconds

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold < self.high_threshold <= 100:
            raise ValueError(
                f"image GC thresholds must satisfy 0 <= low ({self.low_threshold}) "
                f"< high ({self.high_threshold}) <= 100"
            )


@dataclass(frozen=True)
class InUse:
    """What the pod controller knows: images named by its pods, and their uids."""

    images: Collection[str]
    pod_uids: Collection[str]


@dataclass
class _Record:
    first_detected: float
    last_used: float = 0.0
    size: int = 0


@dataclass
class GCReport:
    modules_removed: list[Path] = field(default_factory=list)
    compiled_removed: list[Path] = field(default_factory=list)
    pod_dirs_removed: list[Path] = field(default_factory=list)
    bytes_freed: int = 0
    bytes_wanted: int = 0


class ImageGC:
    """See the module docstring. ``clock`` (wall time) and ``disk_usage`` are injectable."""

    def __init__(
        self,
        store: ModuleStore,
        compiled_dir: Path,
        pods_dir: Path,
        in_use: Callable[[], InUse],
        policy: GCPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        disk_usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage,
        forget_compiled: Callable[[Path], None] = lambda _path: None,
    ) -> None:
        self.store = store
        self.compiled_dir = compiled_dir
        self.pods_dir = pods_dir
        self.in_use = in_use
        self.policy = policy or GCPolicy()
        self.clock = clock
        self.disk_usage = disk_usage
        self.forget_compiled = forget_compiled  # the runtime drops what it loaded of a removed .cwasm
        self._records: dict[Path, _Record] = {}
        self._hashes: dict[Path, tuple[tuple[int, int, int], str]] = {}  # module -> (stat key, sha256)

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, ready: threading.Event, period: float = GC_PERIOD) -> None:
        """Wait for ``ready`` (the pods are listed), collect, and again every ``period``."""
        while not ready.wait(1.0):
            if stop.is_set():
                return
        while not stop.is_set():
            try:
                self.collect()
            except Exception:  # never the node's end: try again next period
                log.exception("image garbage collection failed")
            stop.wait(period)

    # -- one pass ------------------------------------------------------------------------
    def collect(self) -> GCReport:
        report = GCReport()
        pod_dirs = self._list(self.pods_dir)  # before asking who is known: see the docstring
        entries = self._entries()
        known = self.in_use()
        now = self.clock()
        report.pod_dirs_removed = self._remove_orphan_pod_dirs(pod_dirs, set(known.pod_uids))
        used_entries = self._entries_of(known.images)
        hashes = {entry: self._module_hash(entry) for entry in entries}
        self._detect(entries, used_entries, hashes, now)
        report.compiled_removed = self._remove_orphan_compiled(set(hashes.values()), now)
        self._free_space(report, used_entries, hashes, now)
        if report.modules_removed or report.compiled_removed or report.pod_dirs_removed:
            log.info(
                "garbage collection: removed %d modules (%d bytes), %d compiled modules, %d pod directories",
                len(report.modules_removed),
                report.bytes_freed,
                len(report.compiled_removed),
                len(report.pod_dirs_removed),
            )
        return report

    def _free_space(self, report: GCReport, used: set[Path], hashes: dict[Path, str], now: float) -> None:
        if self.policy.high_threshold >= 100:
            return
        capacity, _used, available = self.disk_usage(_existing(self.store.root))
        if capacity <= 0:
            log.warning("image garbage collection: the store's filesystem reports capacity %d", capacity)
            return
        usage = 100 - available * 100 // capacity
        if usage < self.policy.high_threshold:
            return
        report.bytes_wanted = capacity * (100 - self.policy.low_threshold) // 100 - available
        log.info(
            "disk usage of %s is %d%%, at or over the high threshold %d%%: freeing %d bytes",
            self.store.root,
            usage,
            self.policy.high_threshold,
            report.bytes_wanted,
        )
        candidates = sorted(
            (entry for entry in self._records if entry not in used),
            key=lambda entry: (self._records[entry].last_used, self._records[entry].first_detected),
        )
        for entry in candidates:
            if report.bytes_freed >= report.bytes_wanted:
                break
            record = self._records[entry]
            if now - record.first_detected < self.policy.min_age:
                continue
            if self._remove_module(entry, hashes.get(entry, "")):
                del self._records[entry]
                report.modules_removed.append(entry)
                report.bytes_freed += record.size
        if report.bytes_freed < report.bytes_wanted:
            log.warning(
                "image garbage collection wanted to free %d bytes of %s but freed %d: the rest is in use "
                "or younger than --image-minimum-gc-age",
                report.bytes_wanted,
                self.store.root,
                report.bytes_freed,
            )

    # -- what is there ---------------------------------------------------------------------
    @staticmethod
    def _list(directory: Path) -> list[Path]:
        try:
            return [path for path in directory.iterdir() if path.is_dir() and not path.is_symlink()]
        except FileNotFoundError:
            return []

    def _entries(self) -> list[Path]:
        """Committed store entries: directories holding ``digest.txt`` and ``module.wasm``."""
        if not self.store.root.is_dir():
            return []
        return sorted(digest.parent for digest in self.store.root.rglob(DIGEST_FILE))

    def _entries_of(self, images: Collection[str]) -> set[Path]:
        entries = set()
        for image in images:
            with contextlib.suppress(ValueError):  # an invalid reference names no entry
                entries.add(self.store.entry_dir(image))
        return entries

    def _module_hash(self, entry: Path) -> str:
        """sha256 of the entry's module (the name of its ``.cwasm``), cached per file version."""
        module = entry / MODULE_FILE
        try:
            stat = module.stat()
        except FileNotFoundError:
            return ""
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._hashes.get(module)
        if cached is not None and cached[0] == key:
            return cached[1]
        hasher = hashlib.sha256()
        with module.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
        self._hashes[module] = (key, hasher.hexdigest())
        return hasher.hexdigest()

    def _detect(self, entries: list[Path], used: set[Path], hashes: dict[Path, str], now: float) -> None:
        present = set(entries)
        for gone in [entry for entry in self._records if entry not in present]:
            del self._records[gone]
        for entry in entries:
            record = self._records.setdefault(entry, _Record(first_detected=now))
            if entry in used:
                record.last_used = now
            record.size = _size(entry / MODULE_FILE) + sum(
                _size(self.compiled_dir / f"{hashes[entry]}{suffix}") for suffix in COMPILED_SUFFIXES
            )

    # -- removing ----------------------------------------------------------------------------
    def _remove_orphan_pod_dirs(self, pod_dirs: list[Path], known: set[str]) -> list[Path]:
        removed = []
        for pod_dir in pod_dirs:
            if pod_dir.name in known:
                continue
            shutil.rmtree(pod_dir, ignore_errors=True)
            if not pod_dir.exists():
                removed.append(pod_dir)
                log.info("removed the directory of pod %s, which this node no longer runs", pod_dir.name)
        return removed

    def _remove_orphan_compiled(self, module_hashes: set[str], now: float) -> list[Path]:
        removed = []
        try:
            compiled = [path for suffix in COMPILED_SUFFIXES for path in self.compiled_dir.glob(f"*{suffix}")]
        except OSError:
            return []
        for path in compiled:
            if path.name.partition(".")[0] in module_hashes:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime < self.policy.min_age:
                    continue
                path.unlink()
                self.forget_compiled(path)
                removed.append(path)
        return removed

    def _remove_module(self, entry: Path, module_hash: str) -> bool:
        """Remove a store entry (under its lock; a pull holding it means: busy, keep it)."""
        try:
            fd = os.open(entry / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            (entry / DIGEST_FILE).unlink(missing_ok=True)  # the commit record goes first
            for leftover in entry.iterdir():
                if leftover.name != LOCK_FILE:
                    leftover.unlink(missing_ok=True)
            (entry / LOCK_FILE).unlink(missing_ok=True)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            entry.rmdir()
        if module_hash:
            for suffix in COMPILED_SUFFIXES:
                compiled = self.compiled_dir / f"{module_hash}{suffix}"
                with contextlib.suppress(FileNotFoundError):
                    compiled.unlink()
                    self.forget_compiled(compiled)
        self._prune_parents(entry.parent)
        log.info("removed unused module %s", entry.relative_to(self.store.root))
        return True

    def _prune_parents(self, directory: Path) -> None:
        while directory != self.store.root and self.store.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing ancestor (a new node has no store yet: same filesystem)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
