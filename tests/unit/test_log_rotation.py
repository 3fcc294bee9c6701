"""wasmlet.logs: container logs rotated in the writer as the kubelet rotates them, followed across
rotations, and removed with their run or their pod.

Writers get an injected clock; follow tests run the reader in a thread and wait on queues with
deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wasmlet import config
from wasmlet.logs.files import (
    LOG_FILE_MODE,
    pod_log_dir,
    remove_orphan_pod_logs,
    remove_pod_logs,
    remove_runs_before,
)
from wasmlet.logs.options import LogOptions
from wasmlet.logs.reader import read_logs
from wasmlet.logs.rotation import LogRotation, rotated_logs
from wasmlet.logs.writer import ContainerLogWriter

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z


def clock() -> int:
    return T0


def files_of(path: Path) -> list[Path]:
    """The rotated files of the log at ``path``, oldest first, then the current one."""
    return [*rotated_logs(path), path]


def contents(path: Path) -> list[str]:
    """The content of every record in the files of ``path``, oldest file first."""
    out = []
    for file in files_of(path):
        out += [line.split(" ", 3)[3] for line in file.read_text().splitlines()]
    return out


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "ns_pod_uid" / "app" / "0.log"


def test_rotation_policy_refuses_fewer_than_two_files_and_empty_sizes() -> None:
    with pytest.raises(ValueError, match="max files must be >= 2, got 1"):
        LogRotation(max_size=1024, max_files=1)
    with pytest.raises(ValueError, match="max size must be > 0 bytes, got 0"):
        LogRotation(max_size=0)
    assert LogRotation() == LogRotation(max_size=10 * 1024 * 1024, max_files=5)


def test_writer_without_rotation_keeps_one_file(log_file: Path) -> None:
    with ContainerLogWriter(log_file, clock=clock) as writer:
        for i in range(2000):
            writer.write("stdout", b"line %d\n" % i)
    assert rotated_logs(log_file) == []
    assert len(log_file.read_text().splitlines()) == 2000


def test_a_file_never_passes_max_size_and_the_newest_max_files_are_kept(log_file: Path) -> None:
    rotation = LogRotation(max_size=4096, max_files=3)
    written = []
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        for i in range(1500):
            # From one line to chunks whose records are several times max_size.
            chunk = b"".join(b"line %d.%d\n" % (i, j) for j in range((i * 37) % 400 + 1))
            writer.write("stdout" if i % 2 else "stderr", chunk)
            written += chunk.decode().splitlines()
            sizes = [f.stat().st_size for f in files_of(log_file)]
            assert max(sizes) <= rotation.max_size, (i, sizes)
            assert len(sizes) <= rotation.max_files
    assert len(files_of(log_file)) == rotation.max_files
    # The rotated files (oldest first) and the current one hold the last lines written, in order.
    kept = contents(log_file)
    assert kept == written[-len(kept) :]
    assert len(kept) > 2 * 4096 // 40  # two full files at least (records of ~40 bytes)
    for rotated in rotated_logs(log_file):
        assert rotated.stat().st_size > rotation.max_size - 100  # filled up to the last record that fits
        assert rotated.name.startswith("0.log.20231114-221320.")  # <name>.<UTC timestamp>.<µs>
        assert rotated.stat().st_mode & 0o777 == LOG_FILE_MODE


def test_the_oldest_file_is_deleted_before_the_new_one_is_made(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that there are never more than max_files, not even for a moment."""
    rotation = LogRotation(max_size=256, max_files=3)
    before_open: list[int] = []
    original = ContainerLogWriter._open

    def counting_open(writer: ContainerLogWriter) -> int:
        before_open.append(len(list(writer.path.parent.iterdir())))
        return original(writer)

    monkeypatch.setattr(ContainerLogWriter, "_open", counting_open)
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        for i in range(200):
            writer.write("stdout", b"line %d\n" % i)
    assert len(before_open) > 10
    assert max(before_open) == rotation.max_files - 1


def test_a_record_longer_than_max_size_gets_a_file_of_its_own(log_file: Path) -> None:
    rotation = LogRotation(max_size=1024, max_files=5)
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        writer.write("stdout", b"small\n")
        writer.write("stdout", b"x" * 100 + b"\n" + b"y" * 5000 + b"\n" + b"z" * 10 + b"\n")
        writer.write("stdout", b"after\n")
    first, big, current = files_of(log_file)
    assert [line.split(" ", 3)[3][:1] for line in first.read_text().splitlines()] == ["s", "x"]
    assert [line.split(" ", 3)[3] for line in big.read_text().splitlines()] == ["y" * 5000]
    assert [line.split(" ", 3)[3] for line in current.read_text().splitlines()] == ["z" * 10, "after"]


def test_a_node_restarted_with_an_oversized_file_rotates_it_at_the_first_write(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True)
    log_file.write_text("2023-11-14T22:13:20Z stdout F old\n" * 100)  # 3300 bytes, over 1024
    with ContainerLogWriter(log_file, clock=clock, rotation=LogRotation(max_size=1024)) as writer:
        writer.write("stdout", b"new\n")
    assert log_file.read_text() == "2023-11-14T22:13:20Z stdout F new\n"
    assert len(rotated_logs(log_file)) == 1


def test_rotated_names_stay_in_write_order_when_the_clock_stands_still(log_file: Path) -> None:
    rotation = LogRotation(max_size=64, max_files=1000)
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        for i in range(50):
            writer.write("stdout", b"%04d\n" % i)
    # One line a file; sorted names are the write order, so the lines come back in order.
    assert contents(log_file) == [f"{i:04d}" for i in range(50)]
    assert len(rotated_logs(log_file)) == 49


def test_a_reopened_writer_counts_what_the_file_already_holds(log_file: Path) -> None:
    rotation = LogRotation(max_size=1024, max_files=3)
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        writer.write("stdout", b"a" * 900 + b"\n")
    # A restarted node appends to the same run's file: the next write passes the size.
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        writer.write("stdout", b"b" * 200 + b"\n")
    assert len(rotated_logs(log_file)) == 1
    assert log_file.read_text().endswith("b" * 200 + "\n")


def test_tail_since_and_timestamps_read_the_current_file_as_the_kubelet_does(log_file: Path) -> None:
    rotation = LogRotation(max_size=512, max_files=3)
    with ContainerLogWriter(log_file, clock=clock, rotation=rotation) as writer:
        for i in range(100):
            writer.write("stdout", b"line %03d\n" % i)
    current = [line.split(" ", 3)[3] for line in log_file.read_text().splitlines()]
    now = datetime.fromtimestamp(T0 / 1e9, UTC)
    everything = b"".join(read_logs(log_file, LogOptions(), now)).decode().splitlines()
    assert everything == current
    assert current[-1] == "line 099"
    tail = b"".join(read_logs(log_file, LogOptions(tail_lines=2, timestamps=True), now)).decode()
    assert tail == "2023-11-14T22:13:20Z line 098\n2023-11-14T22:13:20Z line 099\n"
    since = b"".join(read_logs(log_file, LogOptions(since_seconds=1), now)).decode().splitlines()
    assert since == current


class Follower:
    """``kubectl logs -f`` on a thread: each line it prints is put on ``lines``."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.finished = threading.Event()
        self.stop = threading.Event()
        self._chunks = read_logs(
            path, LogOptions(follow=True, **options), stop=self.stop, is_finished=self.finished.is_set
        )
        self._done = threading.Event()
        self._carry = ""
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                text = self._carry + chunk.decode()
                *whole, self._carry = text.split("\n")
                for line in whole:
                    self.lines.put(line)
        finally:
            self._done.set()

    def take(self, count: int, timeout: float = 20.0) -> list[str]:
        return [self.lines.get(timeout=timeout) for _line in range(count)]

    def join(self, timeout: float = 20.0) -> list[str]:
        """Everything printed after the container finished."""
        self.finished.set()
        assert self._done.wait(timeout), "the follower did not return after the container finished"
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get_nowait())
        return rest


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.stop.set()


def test_a_follower_sees_every_line_once_across_many_rotations_between_its_polls(
    log_file: Path, followers: list[Follower]
) -> None:
    """Nothing deleted (max_files is large): however many rotations happen between two polls,
    the follower walks the rotated files in order into the current one."""
    rotation = LogRotation(max_size=1024, max_files=100_000)
    writer = ContainerLogWriter(log_file, rotation=rotation)
    writer.write("stdout", b"first\n")
    follower = Follower(log_file)
    followers.append(follower)
    assert follower.take(1) == ["first"]
    expected = []
    for i in range(3000):
        line = b"%05d %s\n" % (i, b"s" * (i % 50))
        writer.write("stderr" if i % 3 == 0 else "stdout", line)
        expected.append(line.decode().rstrip("\n"))
    writer.close()
    assert len(rotated_logs(log_file)) > 100
    seen = follower.take(len(expected) - 100) + follower.join()
    assert seen == expected


def test_a_follower_keeping_up_sees_every_line_once_while_old_files_are_deleted(
    log_file: Path, followers: list[Follower]
) -> None:
    """max_files 2: the file being followed is deleted at the second rotation after it; a
    follower that keeps up has moved on by then and loses nothing."""
    rotation = LogRotation(max_size=150, max_files=2)
    writer = ContainerLogWriter(log_file, rotation=rotation)
    follower = Follower(log_file, timestamps=True)
    followers.append(follower)
    for i in range(60):
        line = b"line %03d\n" % i
        writer.write("stdout", line)
        (got,) = follower.take(1)
        assert got.endswith(f" line {i:03d}"), (i, got)
    writer.close()
    assert follower.join() == []
    assert len(files_of(log_file)) == 2


def test_a_follower_that_fell_behind_past_max_files_goes_on_with_the_oldest_file_left(
    log_file: Path, followers: list[Follower]
) -> None:
    rotation = LogRotation(max_size=1024, max_files=3)
    writer = ContainerLogWriter(log_file, rotation=rotation)
    writer.write("stdout", b"start\n")
    follower = Follower(log_file)
    followers.append(follower)
    assert follower.take(1) == ["start"]
    for i in range(5000):
        writer.write("stdout", b"%04d\n" % i)
    writer.close()
    rest = follower.join()
    numbers = [int(line) for line in rest]
    # In order, no line twice, and at least the last files' lines (those never deleted).
    assert numbers == sorted(set(numbers))
    assert numbers[-1] == 4999
    kept = [int(line) for line in contents(log_file)]
    assert set(kept) <= set(numbers)


def test_logs_of_runs_before_the_previous_one_are_deleted(tmp_path: Path) -> None:
    container = tmp_path / "ns_pod_uid" / "app"
    container.mkdir(parents=True)
    names = ["0.log", "0.log.20231114-221320.000001", "1.log", "1.log.20231114-221320.000002", "2.log"]
    names += ["10.log", "notes"]
    for name in names:
        (container / name).write_text("x")
    remove_runs_before(container, 1)
    assert sorted(p.name for p in container.iterdir()) == sorted(names[2:])
    remove_runs_before(container, 2)
    assert sorted(p.name for p in container.iterdir()) == ["10.log", "2.log", "notes"]
    remove_runs_before(tmp_path / "missing", 3)  # nothing to do, no error


def test_orphan_pod_log_directories_are_deleted_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    live = pod_log_dir(root, "default", "web", "uid-live")
    gone = pod_log_dir(root, "kube-system", "old", "uid-gone")
    for pod_dir in (live, gone):
        (pod_dir / "app").mkdir(parents=True)
        (pod_dir / "app" / "0.log").write_text("x")
    (root / "README").write_text("not a pod's")
    (root / "not-a-pod").mkdir()
    assert remove_orphan_pod_logs(root, {"uid-live"}) == ["kube-system_old_uid-gone"]
    assert sorted(p.name for p in root.iterdir()) == ["README", "default_web_uid-live", "not-a-pod"]
    assert remove_orphan_pod_logs(tmp_path / "none", set()) == []


def test_a_pods_log_directory_is_removed_with_everything_in_it(tmp_path: Path) -> None:
    pod_dir = pod_log_dir(tmp_path, "default", "web", "uid")
    assert pod_dir == tmp_path / "default_web_uid"
    (pod_dir / "app").mkdir(parents=True)
    (pod_dir / "app" / "0.log.20231114-221320.000001").write_text("x")
    remove_pod_logs(pod_dir)
    assert not pod_dir.exists()
    remove_pod_logs(pod_dir)  # already gone: no error
    with pytest.raises(ValueError, match="invalid pod name"):
        pod_log_dir(tmp_path, "default", "../x", "uid")


def test_log_rotation_flags_default_to_the_kubelets_and_refuse_bad_values(tmp_path: Path) -> None:
    base = ["--data-dir", str(tmp_path), "--node-ip", "127.0.0.2"]
    defaults = config.load(base, {})
    assert (defaults.container_log_max_size, defaults.container_log_max_files) == (10 * 1024 * 1024, 5)
    cfg = config.load([*base, "--container-log-max-size", "64Ki"], {"WASMLET_CONTAINER_LOG_MAX_FILES": "2"})
    assert (cfg.container_log_max_size, cfg.container_log_max_files) == (65536, 2)
    with pytest.raises(config.ConfigError, match=r"--container-log-max-files: 1 is out of range 2\.\.1000"):
        config.load([*base, "--container-log-max-files", "1"], {})
    with pytest.raises(config.ConfigError, match="--container-log-max-size: 'ten' is not a quantity"):
        config.load([*base, "--container-log-max-size", "ten"], {})
    with pytest.raises(config.ConfigError, match="--container-log-max-size: '0' must be a whole number"):
        config.load([*base, "--container-log-max-size", "0"], {})
