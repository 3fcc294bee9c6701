"""Garbage collection on a real temporary filesystem, with time and disk usage injected."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

import pytest

from wasmlet.node.image_gc import GCPolicy, GCReport, ImageGC, InUse
from wasmlet.oci.store import DIGEST_FILE, LOCK_FILE, MODULE_FILE, ModuleStore

REG = "registry.test:5000"
MIB = 2**20


class World:
    """A data dir: module store, compiled cache, pod dirs; a clock and a disk that fill as told."""

    def __init__(self, root: Path) -> None:
        self.store = ModuleStore(root / ".oci" / "modules")
        self.compiled = root / "cache" / "compiled"
        self.pods = root / "pods"
        self.compiled.mkdir(parents=True)
        self.pods.mkdir()
        self.now = 1_000_000.0
        self.capacity = 100 * MIB
        self.used = 0
        self.images: set[str] = set()
        self.uids: set[str] = set()
        self.forgotten: list[Path] = []
        self.gc = ImageGC(
            self.store,
            self.compiled,
            self.pods,
            lambda: InUse(set(self.images), set(self.uids)),
            GCPolicy(high_threshold=85, low_threshold=80, min_age=120.0),
            clock=lambda: self.now,
            disk_usage=lambda _path: (self.capacity, self.used, self.capacity - self.used),
            forget_compiled=self.forgotten.append,
        )

    def module(self, name: str, size: int) -> tuple[str, Path, Path]:
        image = f"{REG}/{name}:v1"
        data = b"\0asm" + name.encode() * (size // len(name) + 1)
        data = data[:size]
        entry = self.store.entry_dir(image)
        entry.mkdir(parents=True)
        (entry / MODULE_FILE).write_bytes(data)
        (entry / DIGEST_FILE).write_text(f"sha256:{'0' * 64}\n")
        compiled = self.compiled / f"{hashlib.sha256(data).hexdigest()}.cwasm"
        compiled.write_bytes(b"compiled")
        os.utime(compiled, (self.now, self.now))
        self.used += size
        return image, entry, compiled

    def as_http_component(self, compiled: Path, size: int = 8) -> Path:
        """What the runtime keeps of a wasi:http component: ``<sha256>.http.wasm`` for the ``.cwasm``."""
        kept = compiled.with_name(compiled.name.removesuffix(".cwasm") + ".http.wasm")
        kept.write_bytes(b"c" * size)
        os.utime(kept, (self.now, self.now))
        compiled.unlink()
        return kept


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_below_the_high_threshold_no_module_is_removed(world: World) -> None:
    _image, entry, compiled = world.module("old", 10 * MIB)
    world.used = 84 * MIB
    world.gc.collect()
    world.now += 3600
    report = world.gc.collect()
    assert report.modules_removed == [] and report.bytes_wanted == 0
    assert entry.is_dir() and compiled.exists()


def test_over_the_high_threshold_least_recently_used_go_first_down_to_the_low_threshold(world: World) -> None:
    a, a_entry, a_compiled = world.module("a", 3 * MIB)
    b, b_entry, b_compiled = world.module("b", 3 * MIB)
    c, c_entry, c_compiled = world.module("c", 3 * MIB)
    world.images = {b}
    world.gc.collect()  # detected at t0; b used at t0
    world.now += 60
    world.images = {a}
    world.gc.collect()  # a used at t0+60: b is now less recently used than a; c never used
    world.now += 120
    world.images = set()
    world.used = 85 * MIB  # at the high threshold: free 85 - 80 = 5 MiB
    report = world.gc.collect()
    assert report.bytes_wanted == 5 * MIB
    assert report.modules_removed == [c_entry, b_entry]  # never used, then the oldest use
    assert a_entry.is_dir() and not c_entry.exists() and not b_entry.exists()
    assert a_compiled.exists()
    assert world.forgotten == [c_compiled, b_compiled]  # the runtime lets go of their loaded copies
    assert not (world.store.root / "registry.test_5000" / "c").exists()  # empty parents pruned
    assert world.store.lookup(a) is not None and world.store.lookup(c) is None


def test_a_module_a_known_pod_names_is_never_removed(world: World) -> None:
    image, entry, compiled = world.module("busy", 10 * MIB)
    world.images = {image}
    world.used = 99 * MIB
    world.gc.collect()
    world.now += 10_000
    report = world.gc.collect()
    assert report.modules_removed == [] and report.bytes_freed < report.bytes_wanted
    assert entry.is_dir() and compiled.exists()


def test_a_module_younger_than_the_minimum_age_is_kept(world: World) -> None:
    _image, entry, _compiled = world.module("fresh", 10 * MIB)
    world.used = 99 * MIB
    world.gc.collect()
    world.now += 119
    assert world.gc.collect().modules_removed == []
    world.now += 1
    assert world.gc.collect().modules_removed == [entry]


def test_a_module_being_pulled_is_skipped(world: World) -> None:
    _image, entry, _compiled = world.module("pulling", 10 * MIB)
    world.used = 99 * MIB
    world.gc.collect()
    world.now += 600
    fd = os.open(entry / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert world.gc.collect().modules_removed == []
        assert (entry / MODULE_FILE).exists()
    finally:
        os.close(fd)
    assert world.gc.collect().modules_removed == [entry]


def test_compiled_modules_without_their_module_go_once_old_enough(world: World) -> None:
    _image, _entry, kept = world.module("kept", MIB)
    orphan = world.compiled / f"{'f' * 64}.cwasm"
    orphan.write_bytes(b"stale")
    os.utime(orphan, (world.now, world.now))
    assert world.gc.collect().compiled_removed == []
    world.now += 121
    assert world.gc.collect().compiled_removed == [orphan]
    assert kept.exists()
    assert world.forgotten == [orphan]  # the runtime lets go of its loaded copy too


def test_the_http_wasm_of_a_removed_module_goes_with_it(world: World) -> None:
    _a, a_entry, a_compiled = world.module("a", 3 * MIB)
    a_kept = world.as_http_component(a_compiled)
    b, b_entry, b_compiled = world.module("b", 3 * MIB)
    b_kept = world.as_http_component(b_compiled)
    world.images = {b}
    world.used = 99 * MIB
    world.gc.collect()
    world.now += 120
    report = world.gc.collect()
    assert report.modules_removed == [a_entry] and report.compiled_removed == []
    assert not a_entry.exists() and not a_kept.exists()
    assert b_entry.is_dir() and b_kept.exists() and b_kept not in world.forgotten


def test_http_wasm_without_its_module_goes_once_old_enough(world: World) -> None:
    _image, _entry, compiled = world.module("kept", MIB)
    kept = world.as_http_component(compiled)
    orphan = world.compiled / f"{'f' * 64}.http.wasm"
    orphan.write_bytes(b"stale")
    os.utime(orphan, (world.now, world.now))
    assert world.gc.collect().compiled_removed == []
    world.now += 121
    assert world.gc.collect().compiled_removed == [orphan]
    assert not orphan.exists() and kept.exists()
    assert world.forgotten == [orphan]


def test_the_http_wasm_counts_in_its_modules_size(world: World) -> None:
    _image, entry, compiled = world.module("sized", 3 * MIB)
    world.as_http_component(compiled, 2 * MIB)
    world.used = 99 * MIB
    world.gc.collect()
    world.now += 120
    report = world.gc.collect()
    assert report.modules_removed == [entry]
    assert report.bytes_freed == 3 * MIB + 2 * MIB


def test_directories_of_pods_the_node_no_longer_knows_are_removed(world: World) -> None:
    running, gone = world.pods / "uid-running", world.pods / "uid-gone"
    for pod_dir in (running, gone):
        (pod_dir / "volumes" / "kubernetes.io~empty-dir" / "data").mkdir(parents=True)
        (pod_dir / "volumes" / "kubernetes.io~empty-dir" / "data" / "file").write_text("x")
    world.uids = {"uid-running"}
    assert world.gc.collect().pod_dirs_removed == [gone]
    assert (running / "volumes" / "kubernetes.io~empty-dir" / "data" / "file").read_text() == "x"


def test_a_pod_directory_made_during_a_pass_is_not_an_orphan(world: World) -> None:
    late = world.pods / "uid-late"

    def known_now() -> InUse:  # the pod arrives (known, then its directory) while the pass runs
        late.mkdir()
        return InUse(set(), {"uid-late"})

    world.gc.in_use = known_now
    world.gc.collect()
    assert late.is_dir()


def test_the_first_pass_waits_until_the_pods_are_listed(world: World) -> None:
    (world.pods / "uid-unlisted").mkdir()
    stop, ready = threading.Event(), threading.Event()
    passes: list[int] = []
    collect = world.gc.collect

    def counted() -> GCReport:
        passes.append(1)
        stop.set()
        return collect()

    world.gc.collect = counted  # type: ignore[method-assign]
    thread = threading.Thread(target=world.gc.run, args=(stop, ready, 0.01))
    thread.start()
    assert not stop.wait(0.3) and passes == []
    world.uids = {"uid-unlisted"}
    ready.set()
    thread.join(5)
    assert passes == [1] and (world.pods / "uid-unlisted").is_dir()


@pytest.mark.parametrize(("high", "low"), [(80, 80), (101, 80), (85, -1)])
def test_thresholds_must_be_ordered_percentages(high: int, low: int) -> None:
    with pytest.raises(ValueError, match="image GC thresholds"):
        GCPolicy(high_threshold=high, low_threshold=low)


def test_a_node_without_a_module_store_yet_measures_the_filesystem_it_will_be_on(tmp_path: Path) -> None:
    gc = ImageGC(
        ModuleStore(tmp_path / "data" / ".oci" / "modules"),
        tmp_path / "data" / "cache" / "compiled",
        tmp_path / "data" / "pods",
        lambda: InUse(set(), set()),
        GCPolicy(high_threshold=1, low_threshold=0),  # always over: the real disk usage is read
    )
    report = gc.collect()
    assert report.modules_removed == [] and report.bytes_wanted > 0
