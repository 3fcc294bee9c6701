"""wasmlet.logs: CRI log files written from module output, and read back as ``kubectl logs`` does.

Writers get an injected clock so timestamps are exact; follow tests run the reader in a
thread and wait on queues with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wasmlet.logs.cri import Stream, format_timestamp, parse_timestamp
from wasmlet.logs.files import log_path, previous_log_path
from wasmlet.logs.options import LogOptions
from wasmlet.logs.reader import MAX_JOINED_LINE, read_logs
from wasmlet.logs.writer import MAX_RECORD_CONTENT, ContainerLogWriter

pytestmark = pytest.mark.timeout(20)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
SECOND = 1_000_000_000


class Clock:
    """A settable clock in ns since the epoch."""

    def __init__(self, ns: int = T0) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns

    def at(self, seconds: float) -> Clock:
        self.ns = T0 + int(seconds * SECOND)
        return self


def records(path: Path) -> list[tuple[str, str, str, str]]:
    """(timestamp, stream, tag, content) of every record in a log file."""
    out = []
    for line in path.read_bytes().decode().split("\n")[:-1]:
        ts, stream, tag, content = line.split(" ", 3)
        out.append((ts, stream, tag, content))
    return out


def read(path: Path, **options: Any) -> bytes:
    """Everything read_logs yields for ``LogOptions(**options)``, with now = T0."""
    return b"".join(read_logs(path, LogOptions(**options), datetime.fromtimestamp(T0 / SECOND, UTC)))


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "ns_pod_uid" / "app" / "0.log"


# --- writer ------------------------------------------------------------------------------


def test_writer_emits_one_full_record_per_line_with_the_write_time(log_file: Path) -> None:
    clock = Clock()
    with ContainerLogWriter(log_file, clock=clock) as writer:
        writer.write("stdout", b"one\ntwo\n")
        clock.at(1.5)
        writer.write("stdout", b"\nthree\n")
    assert records(log_file) == [
        ("2023-11-14T22:13:20Z", "stdout", "F", "one"),
        ("2023-11-14T22:13:20Z", "stdout", "F", "two"),
        ("2023-11-14T22:13:21.5Z", "stdout", "F", ""),
        ("2023-11-14T22:13:21.5Z", "stdout", "F", "three"),
    ]


def test_writer_creates_directories_and_a_0640_file(log_file: Path) -> None:
    old = os.umask(0o077)
    try:
        ContainerLogWriter(log_file).close()
    finally:
        os.umask(old)
    assert log_file.stat().st_mode & 0o777 == 0o640
    assert log_file.read_bytes() == b""


def test_chunks_split_mid_line_are_joined_and_stamped_when_the_line_completes(log_file: Path) -> None:
    clock = Clock()
    with ContainerLogWriter(log_file, clock=clock) as writer:
        writer.write("stdout", b"hel")
        clock.at(1)
        writer.write("stdout", b"lo wor")
        clock.at(2)
        writer.write("stdout", b"ld\nnext")
        clock.at(3)
        writer.write("stdout", b" line\n")
    assert records(log_file) == [
        ("2023-11-14T22:13:22Z", "stdout", "F", "hello world"),
        ("2023-11-14T22:13:23Z", "stdout", "F", "next line"),
    ]


def test_stderr_interleaved_with_a_partial_stdout_line_keeps_streams_apart(log_file: Path) -> None:
    with ContainerLogWriter(log_file, clock=Clock()) as writer:
        writer.write("stdout", b"out-")
        writer.write("stderr", b"err 1\nerr-")
        writer.write("stdout", b"line\n")
        writer.write("stderr", b"line\n")
    assert [(s, t, c) for _ts, s, t, c in records(log_file)] == [
        ("stderr", "F", "err 1"),
        ("stdout", "F", "out-line"),
        ("stderr", "F", "err-line"),
    ]
    assert read(log_file) == b"err 1\nout-line\nerr-line\n"


def test_close_writes_the_unterminated_tail_as_partial_and_reading_keeps_it_without_newline(
    log_file: Path,
) -> None:
    writer = ContainerLogWriter(log_file, clock=Clock())
    writer.write("stdout", b"done\nno newline")
    writer.write("stderr", b"bye")
    assert [c for *_rest, c in records(log_file)] == ["done"]  # partials stay buffered until close
    writer.close()
    writer.close()  # idempotent
    assert [(s, t, c) for _ts, s, t, c in records(log_file)] == [
        ("stdout", "F", "done"),
        ("stdout", "P", "no newline"),
        ("stderr", "P", "bye"),
    ]
    assert read(log_file) == b"done\nno newlinebye"
    with pytest.raises(ValueError, match="closed"):
        writer.write("stdout", b"late\n")


def test_a_line_over_16_kib_becomes_partial_records_then_a_full_one(log_file: Path) -> None:
    big = b"x" * (MAX_RECORD_CONTENT + 100)
    with ContainerLogWriter(log_file, clock=Clock()) as writer:
        writer.write("stdout", big)  # unterminated and over the limit: 16 KiB go out as P now
        assert [(t, len(c)) for _ts, _stream, t, c in records(log_file)] == [("P", MAX_RECORD_CONTENT)]
        writer.write("stdout", b"end\n")
        writer.write("stderr", b"y" * (2 * MAX_RECORD_CONTENT + 1) + b"\n")  # complete but long
    assert [(s, t, len(c)) for _ts, s, t, c in records(log_file)] == [
        ("stdout", "P", MAX_RECORD_CONTENT),
        ("stdout", "F", 103),
        ("stderr", "P", MAX_RECORD_CONTENT),
        ("stderr", "P", MAX_RECORD_CONTENT),
        ("stderr", "F", 1),
    ]
    assert read(log_file) == big + b"end\n" + b"y" * (2 * MAX_RECORD_CONTENT + 1) + b"\n"


def test_a_buffer_of_exactly_16_kib_stays_pending(log_file: Path) -> None:
    with ContainerLogWriter(log_file, clock=Clock()) as writer:
        writer.write("stdout", b"a" * MAX_RECORD_CONTENT)
        assert log_file.read_bytes() == b""
        writer.write("stdout", b"\n")
    assert [(t, len(c)) for _ts, _stream, t, c in records(log_file)] == [("F", MAX_RECORD_CONTENT)]


def test_writer_rejects_unknown_streams(log_file: Path) -> None:
    with ContainerLogWriter(log_file) as writer, pytest.raises(ValueError, match="stream"):
        writer.write("stdin", b"x\n")  # type: ignore[arg-type]


def test_concurrent_writers_on_both_streams_never_tear_a_record(log_file: Path) -> None:
    with ContainerLogWriter(log_file) as writer:

        def spam(stream: Stream) -> None:
            for i in range(2000):
                writer.write(stream, f"{stream} {i}\n".encode())

        threads = [threading.Thread(target=spam, args=(s,), name=f"spam-{s}") for s in ("stdout", "stderr")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    recs = records(log_file)
    assert len(recs) == 4000
    for stream in ("stdout", "stderr"):
        assert [c for _ts, s, _tag, c in recs if s == stream] == [f"{stream} {i}" for i in range(2000)]


def test_timestamps_are_rfc3339nano_with_trailing_zeros_trimmed() -> None:
    assert format_timestamp(T0) == b"2023-11-14T22:13:20Z"
    assert format_timestamp(T0 + 120_000_000) == b"2023-11-14T22:13:20.12Z"
    assert format_timestamp(T0 + 1) == b"2023-11-14T22:13:20.000000001Z"
    assert parse_timestamp("2023-11-14T22:13:20.000000001Z") == T0 + 1
    assert parse_timestamp("2023-11-14T23:13:20.5+01:00") == T0 + SECOND // 2


# --- paths -------------------------------------------------------------------------------


def test_log_paths_follow_the_kubelet_layout_and_previous_is_the_run_before(tmp_path: Path) -> None:
    assert log_path(tmp_path, "default", "web", "u-1", "app", 2) == tmp_path / "default_web_u-1/app/2.log"
    assert (
        previous_log_path(tmp_path, "default", "web", "u-1", "app", 2)
        == tmp_path / "default_web_u-1/app/1.log"
    )
    with pytest.raises(ValueError, match='previous terminated container "app" in pod "web" not found'):
        previous_log_path(tmp_path, "default", "web", "u-1", "app", 0)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b"])
def test_log_path_rejects_names_that_escape_the_log_directory(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="container name"):
        log_path(tmp_path, "default", "web", "u-1", bad, 0)


def test_previous_log_is_read_like_any_other(tmp_path: Path) -> None:
    for run in (0, 1):
        with ContainerLogWriter(log_path(tmp_path, "ns", "p", "u", "c", run), clock=Clock()) as writer:
            writer.write("stdout", f"run {run}\n".encode())
    assert read(previous_log_path(tmp_path, "ns", "p", "u", "c", 1)) == b"run 0\n"
    assert read(log_path(tmp_path, "ns", "p", "u", "c", 1)) == b"run 1\n"


# --- option parsing ----------------------------------------------------------------------


def test_options_parse_every_parameter() -> None:
    options = LogOptions.from_query(
        {
            "follow": "true",
            "previous": "1",
            "timestamps": "T",
            "tailLines": "0",
            "limitBytes": "+10",
            "sinceTime": "2023-11-14T22:13:20Z",
            "insecureSkipTLSVerifyBackend": "true",
        }
    )
    assert options == LogOptions(
        follow=True,
        previous=True,
        timestamps=True,
        tail_lines=0,
        limit_bytes=10,
        since_time=datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
    )
    assert LogOptions.from_query({}) == LogOptions()
    assert LogOptions.from_query({"follow": "", "tailLines": "", "timestamps": "False"}) == LogOptions()
    assert LogOptions.from_query({"sinceSeconds": "30"}).since_seconds == 30


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"follow": "yes"}, '"follow"'),
        ({"previous": "2"}, '"previous"'),
        ({"timestamps": "on"}, '"timestamps"'),
        ({"tailLines": "-1"}, '"tailLines"'),
        ({"tailLines": "ten"}, '"tailLines"'),
        ({"tailLines": "1.5"}, '"tailLines"'),
        ({"tailLines": " 5"}, '"tailLines"'),
        ({"tailLines": "99999999999999999999"}, '"tailLines"'),
        ({"limitBytes": "0"}, '"limitBytes"'),
        ({"limitBytes": "-5"}, '"limitBytes"'),
        ({"limitBytes": "1k"}, '"limitBytes"'),
        ({"sinceSeconds": "0"}, '"sinceSeconds"'),
        ({"sinceSeconds": "-3"}, '"sinceSeconds"'),
        ({"sinceSeconds": "1m"}, '"sinceSeconds"'),
        ({"sinceTime": "yesterday"}, '"sinceTime"'),
        ({"sinceTime": "2023-11-14"}, '"sinceTime"'),
        ({"sinceTime": "2023-11-14T22:13:20"}, '"sinceTime"'),
        ({"sinceTime": "2023-13-14T22:13:20Z"}, '"sinceTime"'),
        ({"sinceSeconds": "10", "sinceTime": "2023-11-14T22:13:20Z"}, '"sinceSeconds" and "sinceTime"'),
    ],
)
def test_option_errors_name_the_parameter(params: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        LogOptions.from_query(params)


# --- reading -----------------------------------------------------------------------------


@pytest.fixture
def sample(log_file: Path) -> Path:
    """Five lines at T0+0s..T0+4s, the third on stderr, the fourth split into P records."""
    clock = Clock()
    with ContainerLogWriter(log_file, clock=clock, max_record=4) as writer:
        writer.write("stdout", b"zero\n")
        clock.at(1)
        writer.write("stdout", b"one\n")
        clock.at(2)
        writer.write("stderr", b"two\n")
        clock.at(3)
        writer.write("stdout", b"three and more")  # P records stamped T0+3s
        clock.at(4)
        writer.write("stdout", b"\nfour\n")
    return log_file


def test_read_prints_the_contents_and_rejoins_partial_records(sample: Path) -> None:
    assert read(sample) == b"zero\none\ntwo\nthree and more\nfour\n"


def test_timestamps_prefix_each_line_once_with_its_first_record_time(sample: Path) -> None:
    assert read(sample, timestamps=True) == (
        b"2023-11-14T22:13:20Z zero\n"
        b"2023-11-14T22:13:21Z one\n"
        b"2023-11-14T22:13:22Z two\n"
        b"2023-11-14T22:13:23Z three and more\n"
        b"2023-11-14T22:13:24Z four\n"
    )


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (0, b""),
        (1, b"four\n"),
        (2, b"three and more\nfour\n"),
        (3, b"two\nthree and more\nfour\n"),
        (5, b"zero\none\ntwo\nthree and more\nfour\n"),
        (1000, b"zero\none\ntwo\nthree and more\nfour\n"),
    ],
)
def test_tail_lines_counts_rejoined_lines(sample: Path, tail: int, expected: bytes) -> None:
    assert read(sample, tail_lines=tail) == expected


def test_tail_keeps_a_long_line_whole_when_the_other_stream_wrote_in_between(log_file: Path) -> None:
    with ContainerLogWriter(log_file, clock=Clock(), max_record=4) as writer:
        writer.write("stdout", b"first\n")
        writer.write("stdout", b"long line ")  # P records
        writer.write("stderr", b"between\n")
        writer.write("stdout", b"ends\n")
        writer.write("stderr", b"tail")  # unterminated: P on close
    assert read(log_file) == b"first\nbetween\nlong line ends\ntail"
    assert read(log_file, tail_lines=1) == b"tail"
    assert read(log_file, tail_lines=2) == b"long line ends\ntail"
    assert read(log_file, tail_lines=3) == b"between\nlong line ends\ntail"


def test_tail_on_a_big_file_reads_only_its_end(log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    with ContainerLogWriter(log_file, clock=clock) as writer:
        for block in range(50):
            clock.at(block)
            writer.write("stdout", b"".join(b"line %d\n" % (block * 1000 + i) for i in range(1000)))
    size = log_file.stat().st_size
    assert size > 1_500_000

    read_bytes = 0
    real_pread = os.pread

    def counting_pread(fd: int, length: int, offset: int) -> bytes:
        nonlocal read_bytes
        data = real_pread(fd, length, offset)
        read_bytes += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting_pread)  # wasmlet.logs.reader calls os.pread
    started = time.perf_counter()
    assert read(log_file, tail_lines=3) == b"line 49997\nline 49998\nline 49999\n"
    assert read_bytes <= 3 * 64 * 1024  # the last block, not the 1.5 MB before it
    out = read(log_file, tail_lines=20_000)
    elapsed = time.perf_counter() - started
    assert out.count(b"\n") == 20_000
    assert out.startswith(b"line 30000\n")
    assert elapsed < 2.0


def test_limit_bytes_cuts_the_output_even_mid_line(sample: Path) -> None:
    assert read(sample, limit_bytes=7) == b"zero\non"
    assert read(sample, limit_bytes=10_000) == b"zero\none\ntwo\nthree and more\nfour\n"
    assert read(sample, limit_bytes=30, timestamps=True) == b"2023-11-14T22:13:20Z zero\n2023"


def test_since_time_keeps_lines_stamped_at_or_after_it(sample: Path) -> None:
    since = datetime.fromtimestamp(T0 / SECOND, UTC) + timedelta(seconds=2)
    assert read(sample, since_time=since) == b"two\nthree and more\nfour\n"
    assert read(sample, since_time=since + timedelta(microseconds=1)) == b"three and more\nfour\n"
    assert read(sample, since_time=since + timedelta(days=1)) == b""


def test_since_seconds_counts_back_from_now(sample: Path) -> None:
    now = datetime.fromtimestamp(T0 / SECOND, UTC) + timedelta(seconds=5)
    options = LogOptions(since_seconds=2)
    assert b"".join(read_logs(sample, options, now)) == b"three and more\nfour\n"
    assert b"".join(read_logs(sample, LogOptions(since_seconds=2, tail_lines=3), now)) == (
        b"three and more\nfour\n"
    )


def test_malformed_records_are_skipped(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes(
        b"2023-11-14T22:13:20Z stdout F good\n"
        b"garbage\n"
        b"2023-11-14T22:13:20Z stdin F wrong stream\n"
        b"2023-11-14T22:13:20Z stdout X wrong tag\n"
        b"2023-11-14T22:13:20Z stdout F:future also good\n"
        b"2023-11-14T22:13:20Z stdout F"
    )
    assert read(log_file) == b"good\nalso good\n"
    assert read(log_file, tail_lines=1) == b"also good\n"  # the record without newline is not complete


def test_a_line_longer_than_the_join_limit_is_printed_in_pieces_with_one_timestamp(log_file: Path) -> None:
    huge = b"z" * (MAX_JOINED_LINE + 3 * MAX_RECORD_CONTENT)
    with ContainerLogWriter(log_file, clock=Clock()) as writer:
        writer.write("stdout", huge + b"\nafter\n")
    assert (
        read(log_file, timestamps=True) == b"2023-11-14T22:13:20Z " + huge + b"\n2023-11-14T22:13:20Z after\n"
    )


def test_missing_file_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_logs(tmp_path / "nope.log", LogOptions())


# --- follow ------------------------------------------------------------------------------


class Follower:
    """Runs read_logs in a thread; every chunk lands in a queue with its arrival time."""

    def __init__(self, path: Path, options: LogOptions, is_finished: Callable[[], bool] | None) -> None:
        self.stop = threading.Event()
        self.chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.done = threading.Event()
        self._iterator: Iterator[bytes] = read_logs(path, options, stop=self.stop, is_finished=is_finished)
        self._thread = threading.Thread(target=self._run, name="test-log-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._iterator:
                self.chunks.put((time.monotonic(), chunk))
        finally:
            self.done.set()

    def until(self, expected: bytes, timeout: float = 3.0) -> list[tuple[float, bytes]]:
        """Chunks received until their concatenation is ``expected``."""
        deadline = time.monotonic() + timeout
        got: list[tuple[float, bytes]] = []
        while b"".join(c for _at, c in got) != expected:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"follower got {b''.join(c for _at, c in got)!r}, expected {expected!r}"
            try:
                got.append(self.chunks.get(timeout=remaining))
            except queue.Empty:
                continue
        return got


def test_follow_yields_appended_lines_in_order_and_returns_when_the_container_finished(
    log_file: Path,
) -> None:
    writer = ContainerLogWriter(log_file)
    writer.write("stdout", b"before\n")
    finished = threading.Event()
    follower = Follower(log_file, LogOptions(follow=True), finished.is_set)
    follower.until(b"before\n")

    written: dict[int, float] = {}

    def produce() -> None:
        for i in range(10):
            written[i] = time.monotonic()
            writer.write("stderr" if i % 3 == 0 else "stdout", b"line %d\n" % i)
            time.sleep(0.03)  # the container's pace, not an assertion wait
        writer.write("stdout", b"last words")
        writer.close()
        finished.set()

    producer = threading.Thread(target=produce, name="test-log-producer")
    producer.start()
    expected = b"".join(b"line %d\n" % i for i in range(10)) + b"last words"
    got = follower.until(expected)
    producer.join()
    assert follower.done.wait(2.0), "follower did not return after the container finished"
    assert follower.chunks.empty()

    arrival: dict[int, float] = {}
    seen = b""
    for at, chunk in got:
        seen += chunk
        for i in range(10):
            if i not in arrival and b"line %d\n" % i in seen:
                arrival[i] = at
    latency = max(arrival[i] - written[i] for i in range(10))
    assert latency < 0.5, f"worst follow latency {latency * 1000:.0f} ms"


def test_follow_with_tail_starts_from_the_last_lines(log_file: Path) -> None:
    finished = threading.Event()
    with ContainerLogWriter(log_file) as writer:
        writer.write("stdout", b"a\nb\nc\n")
        follower = Follower(log_file, LogOptions(follow=True, tail_lines=1), finished.is_set)
        follower.until(b"c\n")
        writer.write("stdout", b"d\n")
        follower.until(b"d\n")
    finished.set()
    assert follower.done.wait(2.0)


def test_follow_stops_promptly_when_the_stop_event_is_set(log_file: Path) -> None:
    with ContainerLogWriter(log_file) as writer:
        writer.write("stdout", b"running\n")
        follower = Follower(log_file, LogOptions(follow=True), is_finished=lambda: False)
        follower.until(b"running\n")
        stopped = time.monotonic()
        follower.stop.set()
        assert follower.done.wait(2.0), "follower ignored the stop event"
        assert time.monotonic() - stopped < 0.5


def test_follow_ends_when_limit_bytes_is_reached(log_file: Path) -> None:
    with ContainerLogWriter(log_file) as writer:
        follower = Follower(log_file, LogOptions(follow=True, limit_bytes=6), is_finished=lambda: False)
        writer.write("stdout", b"abc\n")
        follower.until(b"abc\n")
        writer.write("stdout", b"defgh\n")
        follower.until(b"de")
        assert follower.done.wait(2.0)
