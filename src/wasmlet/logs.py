"""Container log files in the CRI format, and the reader behind ``/containerLogs``.

Writing: a :class:`ContainerLogWriter` per container run receives the raw stdout/stderr
chunks of a wasm module (read from its output pipes by :mod:`wasmlet.runtime.outputs`) and
appends records the way containerd and CRI-O do for the kubelet::

    2024-05-01T12:00:00.123456789Z stdout F a complete line
    2024-05-01T12:00:00.2Z stderr P first 16 KiB of a longer line
    2024-05-01T12:00:00.2Z stderr F ...and the rest of it

One file per run, ``<root>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log``
(:func:`log_path`), rotated as the kubelet's container log manager rotates it
(:class:`LogRotation`): once the next write would take the file past ``max_size`` it is
renamed ``<restartCount>.log.<YYYYMMDD-HHMMSS.ffffff>`` (UTC) and a new one is started, and the
oldest rotated files beyond ``max_files - 1`` are deleted. The check costs one comparison per
write of a chunk (not per line); a chunk whose records would pass the size is split between
files at record boundaries, so no file exceeds ``max_size`` (only a single record longer than
it, at most ``MAX_RECORD_CONTENT`` plus its prefix, gets a file of its own). The kubelet checks
every 10 s instead, which lets a fast writer run far past the cap; it also gzips rotated files
older than the newest, which wasmlet does not: the disk bound is ``max_files * max_size``
either way, a follower that fell behind reads rotated files as they are, and no CPU goes to
compressing what a pod floods.

Reading: :func:`read_logs` turns a file back into what ``kubectl logs`` prints, applying
the ``tailLines``, ``sinceSeconds``/``sinceTime``, ``timestamps`` and ``limitBytes`` options
parsed by :meth:`LogOptions.from_query`, and follows the file while the container runs.

Where this differs from the kubelet, on purpose:

* A line split into ``P`` records is re-joined per stream before it is printed, even when
  the other stream wrote in between, and it gets one timestamp prefix (its first record's),
  not one per record. ``tailLines`` and the since filter count and judge such a line as one
  line, by that same first timestamp. Lines longer than ``MAX_JOINED_LINE`` are printed in
  pieces as they arrive instead of being held in memory.
* Following polls the file size every ``FOLLOW_POLL_SECONDS`` (50 ms) instead of using
  inotify, so a follower sees a new line at most ~50 ms after it was written.
* A follower goes on into the file that follows its own after a rotation (found among the
  rotated files by inode), so it sees every line once, unless it fell more than ``max_files``
  rotations behind (those files are gone; it goes on with the oldest left). Reads that do not
  follow, ``--tail`` included, see the current file only, as the kubelet's do.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]

LOG_FILE_MODE = 0o640
LOG_DIR_MODE = 0o750
MAX_RECORD_CONTENT = 16 * 1024
"""Longest content of one record; longer (or unterminated) lines are split into ``P`` records."""
MAX_JOINED_LINE = 1024 * 1024
"""Longest line the reader re-joins in memory; longer lines are printed in pieces."""
FOLLOW_POLL_SECONDS = 0.05
"""How often a follower checks the file for new records: the worst-case follow latency."""
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
"""The kubelet's ``--container-log-max-size`` default (10Mi)."""
DEFAULT_MAX_FILES = 5
"""The kubelet's ``--container-log-max-files`` default: the current file and 4 rotated ones."""

_READ_BLOCK = 64 * 1024
_STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
_STREAM_TOKENS: dict[bytes, Stream] = {b"stdout": "stdout", b"stderr": "stderr"}
_MAX_INT64 = 2**63 - 1


# --- paths -------------------------------------------------------------------------------


def _component(kind: str, value: str) -> str:
    if not value or value in {".", ".."} or "/" in value or "\0" in value:
        raise ValueError(f"invalid {kind} name {value!r} for a container log path")
    return value


# The signatures follow the kubelet layout, outermost first; the parent session asked for positionals.
def log_path(  # noqa: PLR0917
    root: Path, namespace: str, pod: str, uid: str, container: str, restart_count: int
) -> Path:
    """The log file of one run of a container, in the kubelet's ``/var/log/pods`` layout."""
    if restart_count < 0:
        raise ValueError(f"restart count must be >= 0, got {restart_count}")
    return (
        pod_log_dir(root, namespace, pod, uid) / _component("container", container) / f"{restart_count}.log"
    )


def pod_log_dir(root: Path, namespace: str, pod: str, uid: str) -> Path:
    """``<root>/<namespace>_<pod>_<uid>``: every log of one pod (the kubelet's ``/var/log/pods`` entry)."""
    return (
        root / f"{_component('namespace', namespace)}_{_component('pod', pod)}_{_component('pod uid', uid)}"
    )


def previous_log_path(  # noqa: PLR0917
    root: Path, namespace: str, pod: str, uid: str, container: str, restart_count: int
) -> Path:
    """The log of the run before ``restart_count`` (``kubectl logs --previous``).

    Raises ValueError, with the kubelet's message, when the container never restarted.
    """
    if restart_count < 1:
        raise ValueError(f'previous terminated container "{container}" in pod "{pod}" not found')
    return log_path(root, namespace, pod, uid, container, restart_count - 1)


@dataclass(frozen=True, slots=True)
class LogRotation:
    """When a container log is rotated (the kubelet's ``LogRotatePolicy``)."""

    max_size: int = DEFAULT_MAX_SIZE
    """Bytes a log file may reach before the write that would pass it goes to a new file."""
    max_files: int = DEFAULT_MAX_FILES
    """Files kept per container run, the current one included (at least 2, as in the kubelet)."""

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"container log max size must be > 0 bytes, got {self.max_size}")
        if self.max_files < 2:
            raise ValueError(f"container log max files must be >= 2, got {self.max_files}")


def rotated_logs(path: Path) -> list[Path]:
    """The rotated files of the log ``path`` (``<path>.<timestamp>``), oldest first."""
    return [path.parent / name for name in _rotated_names(path)]


def _rotated_names(path: Path) -> list[str]:
    prefix = path.name + "."
    try:
        with os.scandir(path.parent) as entries:
            return sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _run_number(name: str) -> int | None:
    """The restart count of a run's log file name (``3.log``, ``3.log.<timestamp>``), or None."""
    head, sep, _rest = name.partition(".log")
    return int(head) if sep and head.isdigit() else None


def remove_runs_before(container_dir: Path, restart_count: int) -> None:
    """Delete the log files of runs before ``restart_count`` (the kubelet keeps one dead run)."""
    try:
        with os.scandir(container_dir) as entries:
            old = [
                e.name for e in entries if (run := _run_number(e.name)) is not None and run < restart_count
            ]
    except FileNotFoundError:
        return
    for name in old:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(container_dir / name)


def remove_pod_logs(pod_dir: Path) -> None:
    """Delete a pod's log directory; a second pass catches a file created during the first."""
    for _attempt in range(3):
        shutil.rmtree(pod_dir, ignore_errors=True)
        if not pod_dir.exists():
            return
    log.warning("cannot remove the container logs of a deleted pod in %s; check its permissions", pod_dir)


def remove_orphan_pod_logs(root: Path, live_uids: Collection[str]) -> list[str]:
    """Delete the log directories of pods whose uid is not in ``live_uids``; their names.

    Only ``<namespace>_<pod>_<uid>`` directories are touched: anything else under ``root``
    is not a pod's and stays.
    """
    try:
        with os.scandir(root) as entries:
            dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name.count("_") == 2]
    except FileNotFoundError:
        return []
    removed = [name for name in dirs if name.rsplit("_", 1)[1] not in live_uids]
    for name in removed:
        remove_pod_logs(root / name)
    return removed


# --- timestamps --------------------------------------------------------------------------


def format_timestamp(ns: int) -> bytes:
    """``ns`` since the epoch as Go's ``time.RFC3339Nano`` in UTC (trailing zeros trimmed)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return (text + "Z").encode()


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def parse_timestamp(text: str) -> int:
    """Parse an RFC 3339 timestamp (as Go's ``time.Parse(time.RFC3339, ...)``) into ns since the epoch."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zone = match.group(7), match.group(8)
    try:
        datetime(year, month, day, hour, minute, second)  # validates the ranges
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp: {exc}") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            raise ValueError(f"{text!r} is not an RFC 3339 timestamp: time zone offset out of range")
        seconds -= sign * (zone_hours * 3600 + zone_minutes * 60)
    nanos = int(frac[:9].ljust(9, "0")) if frac else 0
    return seconds * 1_000_000_000 + nanos


def _datetime_ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; pass an aware datetime")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


# --- writing -----------------------------------------------------------------------------


class ContainerLogWriter:
    """Appends a container's stdout and stderr to one CRI-format log file.

    ``write`` is called with every chunk read from the module's output; it is serialised
    by a per-writer lock and costs one ``os.write`` per call (nothing is buffered in user
    space except the unterminated tail of each stream), so followers see complete lines
    immediately. With ``rotation``, records that would take the file past its ``max_size``
    go to a new file (see the module's docstring). ``clock`` returns ns since the epoch;
    tests inject their own.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_record: int = MAX_RECORD_CONTENT,
        rotation: LogRotation | None = None,
    ) -> None:
        if max_record < 1:
            raise ValueError(f"max_record must be >= 1, got {max_record}")
        self.path = path
        self._clock = clock
        self._max = max_record
        self._rotation = rotation
        # No rotation: a limit no file reaches, so the check in _write stays one comparison.
        self._max_size = rotation.max_size if rotation is not None else _MAX_INT64
        self._rotate_failed = False
        self._rotated_us = 0  # the last rotated file's timestamp, in µs: names never repeat
        path.parent.mkdir(parents=True, exist_ok=True, mode=LOG_DIR_MODE)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size  # a restarted node appends to the run's file
        self._lock = threading.Lock()
        self._pending: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._closed = False
        self._write_failed = False
        self._second = -1
        self._second_text = ""

    def __enter__(self) -> ContainerLogWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def stdout(self, data: bytes) -> None:
        """The consumer of the module's stdout (``RunSpec.stdout``)."""
        self.write("stdout", data)

    def stderr(self, data: bytes) -> None:
        """The consumer of the module's stderr (``RunSpec.stderr``)."""
        self.write("stderr", data)

    def write(self, stream: Stream, data: bytes) -> None:
        """Append ``data`` printed on ``stream``: complete lines now, the unterminated tail later."""
        if stream not in _STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
        if not data:
            return
        with self._lock:
            if self._closed:
                raise ValueError(f"write to closed container log {self.path}")
            pending = self._pending[stream]
            records: list[bytes] = []
            lines = data.split(b"\n")
            tail = lines.pop()
            if lines:
                prefix = self._prefix(stream)
                if pending:
                    lines[0] = bytes(pending) + lines[0]
                    pending.clear()
                if max(map(len, lines)) <= self._max:  # the usual case: one join, no loop in Python
                    head = prefix + b"F "
                    records.append(head + (b"\n" + head).join(lines) + b"\n")
                else:
                    for line in lines:
                        self._records(records, prefix, line, final=True)
            pending += tail
            if len(pending) > self._max:
                cut = (len(pending) - 1) // self._max * self._max  # keep 1..max bytes pending
                self._records(records, self._prefix(stream), bytes(pending[:cut]), final=False)
                del pending[:cut]
            if records:
                self._write(b"".join(records))

    def close(self) -> None:
        """Write out the unterminated tail of each stream as a ``P`` record, and close the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                records: list[bytes] = []
                for stream in _STREAMS:
                    pending = self._pending[stream]
                    if pending:
                        self._records(records, self._prefix(stream), bytes(pending), final=False)
                        pending.clear()
                if records:
                    self._write(b"".join(records))
            finally:
                os.close(self._fd)

    def _prefix(self, stream: Stream) -> bytes:
        """``<timestamp> <stream> `` for a line completed now."""
        ns = self._clock()
        seconds, frac = divmod(ns, 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        text = self._second_text
        if frac:
            text += "." + f"{frac:09d}".rstrip("0")
        return f"{text}Z {stream} ".encode()

    def _records(self, out: list[bytes], prefix: bytes, line: bytes, *, final: bool) -> None:
        """Append records for ``line``: ``P`` for every full ``max`` slice but the last, then the last."""
        size, start = len(line), 0
        while size - start > self._max:
            out.append(prefix + b"P " + line[start : start + self._max] + b"\n")
            start += self._max
        if start < size or final:
            out.append(prefix + (b"F " if final else b"P ") + line[start:] + b"\n")

    def _open(self) -> int:
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LOG_FILE_MODE
        )
        os.fchmod(fd, LOG_FILE_MODE)  # independent of the umask
        return fd

    def _rotate(self, rotation: LogRotation) -> bool:
        """Rename the current file ``<name>.<timestamp>``, delete the oldest, start a new one.

        The oldest go before the new file is made, so there are never more than ``max_files``.
        """
        now_us = max(self._clock() // 1000, self._rotated_us + 1)
        seconds, micros = divmod(now_us, 1_000_000)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds))
        rotated = self.path.with_name(f"{self.path.name}.{stamp}.{micros:06d}")
        try:
            os.rename(self.path, rotated)
        except OSError as exc:
            self._rotation_failed(exc)
            return False
        self._rotated_us = now_us
        kept = rotation.max_files - 1  # the current file counts as one
        for old in _rotated_names(self.path)[:-kept]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.parent / old)
        try:
            fd = self._open()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rename(rotated, self.path)  # keep appending where followers look
            self._rotation_failed(exc)
            return False
        self._rotate_failed = False
        os.close(self._fd)
        self._fd, self._size = fd, 0
        return True

    def _rotation_failed(self, exc: OSError) -> None:
        if not self._rotate_failed:
            self._rotate_failed = True
            log.warning(
                "cannot rotate container log %s: %s; it grows past %d bytes until rotation works "
                "(check free space and permissions of the log directory)",
                self.path,
                exc,
                self._max_size,
            )

    def _write(self, blob: bytes) -> None:
        if self._size + len(blob) <= self._max_size or self._rotation is None:  # the usual case
            self._append(memoryview(blob))
        else:
            self._write_rotating(blob, self._rotation)

    def _write_rotating(self, blob: bytes, rotation: LogRotation) -> None:
        """Write ``blob`` (whole records) into as many files as it takes to keep each within the size.

        Records are never split; a record longer than ``max_size`` gets a file of its own.
        """
        view, start, end = memoryview(blob), 0, len(blob)
        while start < end:
            room = max(0, self._max_size - self._size)  # a reopened file may be over already
            if end - start <= room:
                self._append(view[start:])
                return
            cut = blob.rfind(b"\n", start, start + room) + 1  # after the last whole record that fits
            if cut <= start:  # not one more record fits
                if self._size == 0:  # a record longer than max_size: alone in its file
                    cut = blob.find(b"\n", start) + 1 or end
                elif self._rotate(rotation):
                    continue
                else:  # cannot rotate: keep the output rather than drop it
                    cut = end
            self._append(view[start:cut])
            start = cut
            if start < end and not self._rotate(rotation):
                self._append(view[start:])
                return

    def _append(self, view: memoryview) -> None:
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.warning(
                    "cannot write container log %s: %s; output is dropped until writes succeed "
                    "(check free space and permissions of the log directory)",
                    self.path,
                    exc,
                )
            return
        self._write_failed = False


# --- options -----------------------------------------------------------------------------

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _parse_bool(name: str, value: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ValueError(f'could not parse "{name}": {value!r} is not a boolean (true, false, 1, 0)')


def _parse_int(name: str, value: str) -> int:
    """Go's ``strconv.Atoi`` on a 64-bit platform."""
    if _GO_INT.fullmatch(value) is None:
        raise ValueError(f'could not parse "{name}": {value!r} is not an integer')
    number = int(value)
    if not -_MAX_INT64 - 1 <= number <= _MAX_INT64:
        raise ValueError(f'could not parse "{name}": {value!r} is out of range')
    return number


@dataclass(frozen=True, slots=True)
class LogOptions:
    """The query options of ``GET /containerLogs/{ns}/{pod}/{container}`` (``v1.PodLogOptions``)."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_seconds: int | None = None
    since_time: datetime | None = None
    """Kept to the microsecond (``datetime``); the apiserver sends whole seconds."""

    def __post_init__(self) -> None:
        if self.tail_lines is not None and self.tail_lines < 0:
            raise ValueError(f'"tailLines" must be greater than or equal to 0, got {self.tail_lines}')
        if self.limit_bytes is not None and self.limit_bytes < 1:
            raise ValueError(f'"limitBytes" must be greater than 0, got {self.limit_bytes}')
        if self.since_seconds is not None and self.since_seconds < 1:
            raise ValueError(f'"sinceSeconds" must be greater than 0, got {self.since_seconds}')
        if self.since_time is not None and self.since_time.tzinfo is None:
            raise ValueError('"sinceTime" must have a time zone')
        if self.since_seconds is not None and self.since_time is not None:
            raise ValueError('both "sinceSeconds" and "sinceTime" are set; use at most one of them')

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> LogOptions:
        """Parse query parameters as virtual-kubelet's ``parseLogOptions`` does.

        Empty values count as absent, unknown parameters are ignored, and every error is a
        ValueError naming the parameter (for an HTTP 400).
        """

        def text(name: str) -> str | None:
            value = params.get(name)
            return value if value else None

        def flag(name: str) -> bool:
            value = text(name)
            return _parse_bool(name, value) if value is not None else False

        def number(name: str) -> int | None:
            value = text(name)
            return _parse_int(name, value) if value is not None else None

        since_time: datetime | None = None
        raw_since = text("sinceTime")
        if raw_since is not None:
            try:
                ns = parse_timestamp(raw_since)
            except ValueError as exc:
                raise ValueError(f'could not parse "sinceTime": {exc}') from None
            since_time = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
        return cls(
            follow=flag("follow"),
            previous=flag("previous"),
            timestamps=flag("timestamps"),
            tail_lines=number("tailLines"),
            limit_bytes=number("limitBytes"),
            since_seconds=number("sinceSeconds"),
            since_time=since_time,
        )

    def since_ns(self, now: datetime) -> int | None:
        """The earliest line timestamp to print (ns since the epoch), or None for no limit."""
        if self.since_time is not None:
            return _datetime_ns(self.since_time)
        if self.since_seconds is not None:
            return _datetime_ns(now) - self.since_seconds * 1_000_000_000
        return None


# --- reading -----------------------------------------------------------------------------


def _parse_record(record: bytes) -> tuple[bytes, Stream, bool, bytes] | None:
    """``(timestamp, stream, partial, content)`` of one record (without its newline), or None."""
    fields = record.split(b" ", 3)
    if len(fields) < 3:
        return None
    stream = _STREAM_TOKENS.get(fields[1])
    if stream is None:
        return None
    tag = fields[2].split(b":", 1)[0]  # "F" or "P", with room for future ":"-separated tags
    if tag not in (b"F", b"P"):
        return None
    return fields[0], stream, tag == b"P", fields[3] if len(fields) == 4 else b""


def _records_backwards(fd: int, size: int) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, end, head)`` of each complete record, last first, reading backwards in blocks.

    ``head`` is the record's first 64 bytes (enough for its timestamp, stream and tag). An
    incomplete record at the end, still being written, is skipped.
    """
    pos, data = size, b""
    while (last_newline := data.rfind(b"\n")) < 0:
        if pos == 0:
            return
        low = max(0, pos - _READ_BLOCK)
        data, pos = os.pread(fd, pos - low, low) + data, low
    hi = last_newline + 1  # data[:hi] holds the records not returned yet, up to a newline
    while hi > 0:
        newline = data.rfind(b"\n", 0, hi - 1)
        if newline < 0 and pos > 0:
            low = max(0, pos - _READ_BLOCK)
            block = os.pread(fd, pos - low, low)
            data, hi, pos = block + data[:hi], hi + len(block), low
            continue
        yield pos + newline + 1, pos + hi, data[newline + 1 : min(hi - 1, newline + 65)]
        hi = newline + 1


def _tail_window(fd: int, size: int, lines: int) -> tuple[int, int]:
    """Where to start reading for the last ``lines`` lines, and the drop boundary.

    Returns ``(start, boundary)``: read records from ``start``, and drop every line whose
    last record ends at or before ``boundary``. The two differ only when a counted line's
    ``P`` records precede a line of the other stream that is not counted. A stream's
    unterminated tail (``P`` records not followed by an ``F``) counts as a line.
    """
    records = _records_backwards(fd, size)
    if lines == 0:
        last = next(records, None)
        return (last[1], last[1]) if last is not None else (0, 0)
    count, start = 0, size
    boundary: int | None = None
    state: dict[Stream, str] = {}  # "collecting" a counted line's earlier records, or "closed"
    for offset, end, head in records:
        parsed = _parse_record(head)
        if parsed is None:
            continue
        stream, partial = parsed[1], parsed[2]
        current = state.get(stream)
        if current == "collecting" and partial:
            start = offset  # an earlier piece of a line already counted
        elif current != "closed":
            # An F ends a line; so does a P that is the stream's unterminated tail.
            if count < lines:
                count += 1
                state[stream] = "collecting"
                start = offset
            else:
                state[stream] = "closed"
                boundary = end if boundary is None else boundary
        if boundary is not None and "collecting" not in state.values():
            break
    if boundary is None:
        return 0, 0
    return min(start, boundary), boundary


@dataclass(slots=True)
class _Line:
    """A stream's line being re-joined from ``P`` records."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    first_offset: int = -1
    last_end: int = 0
    timestamp: bytes = b""
    wanted: bool = True  # passes the since filter
    streaming: bool = False  # too long to hold: its pieces are printed as they come

    def reset(self) -> None:
        self.parts.clear()
        self.size = 0
        self.first_offset = -1
        self.streaming = False


class _Assembler:
    """Turns CRI records into ``kubectl logs`` output."""

    def __init__(self, *, timestamps: bool, since_ns: int | None, boundary: int) -> None:
        self._timestamps = timestamps
        self._since = since_ns
        self._boundary = boundary
        self._lines: dict[Stream, _Line] = {"stdout": _Line(), "stderr": _Line()}
        self._second = b""
        self._second_ns = 0
        self.out: list[bytes] = []

    def take(self) -> bytes:
        chunk = b"".join(self.out)
        self.out.clear()
        return chunk

    def record(self, record: bytes, offset: int, end: int) -> None:
        parsed = _parse_record(record)
        if parsed is None:
            log.debug("skipping malformed container log record at offset %d", offset)
            return
        timestamp, stream, partial, content = parsed
        line = self._lines[stream]
        if not line.parts and not line.streaming:
            line.first_offset = offset
            line.timestamp = timestamp
            line.wanted = self._since is None or self._timestamp_ns(timestamp) >= self._since
        line.last_end = end
        keep = line.wanted and end > self._boundary
        if line.streaming:
            if keep:
                self.out.append(content if partial else content + b"\n")
            if not partial:
                line.reset()
            return
        if partial:
            line.parts.append(content)
            line.size += len(content)
            if line.size > MAX_JOINED_LINE:
                if keep:
                    self.out.append(self._prefix(line) + b"".join(line.parts))
                line.reset()
                line.streaming = True
            return
        if keep:
            self.out.append(self._prefix(line) + b"".join(line.parts) + content + b"\n")
        line.reset()

    def finish(self) -> None:
        """Print the unterminated tail of each stream, oldest first, without a newline."""
        pending = [line for line in self._lines.values() if line.parts]
        for line in sorted(pending, key=lambda item: item.first_offset):
            if line.wanted and line.last_end > self._boundary:
                self.out.append(self._prefix(line) + b"".join(line.parts))
            line.reset()

    def _prefix(self, line: _Line) -> bytes:
        return line.timestamp + b" " if self._timestamps else b""

    def _timestamp_ns(self, timestamp: bytes) -> int:
        # Consecutive records almost always share the second: parse the fraction only.
        if len(timestamp) >= 20 and timestamp[19:20] in (b".", b"Z") and timestamp.endswith(b"Z"):
            if timestamp[:19] != self._second:
                self._second_ns = parse_timestamp(timestamp[:19].decode("ascii", "replace") + "Z")
                self._second = timestamp[:19]
            frac = timestamp[20:-1]
            if not frac:
                return self._second_ns
            if frac.isdigit():
                return self._second_ns + int(frac[:9].ljust(9, b"0"))
        try:
            return parse_timestamp(timestamp.decode("ascii", "replace"))
        except ValueError:
            return 0  # unreadable timestamps sort before any since limit


class _FileRecords:
    """Feeds the records of a log file, from an offset on, to an assembler; follows rotations.

    Offsets given to the assembler run on across files (``base`` is the size of the files
    read before), so they only grow.
    """

    def __init__(self, file: BinaryIO, pos: int, assembler: _Assembler, path: Path) -> None:
        self._file = file
        self._fd = file.fileno()
        self._base = 0
        self._pos = pos
        self._carry = b""
        self._assembler = assembler
        self._path = path

    def close(self) -> None:
        self._file.close()

    def grew(self) -> bool:
        return os.fstat(self._fd).st_size > self._pos

    def rotated(self) -> bool:
        """Whether the log's path now names another file than the one being read."""
        try:
            current = os.stat(self._path)
        except FileNotFoundError:  # between the writer's rename and its new file, or removed
            return False
        return not os.path.samestat(current, os.fstat(self._fd))

    def follow_rotation(self) -> bool:
        """Go on with the file written after the one read to its end now; False if it is gone."""
        successor = self._successor()
        try:
            file = successor.open("rb", buffering=0)
        except FileNotFoundError:  # deleted (fell behind again) or renamed since: look again
            return False
        self._file.close()
        self._file, self._fd = file, file.fileno()
        self._base += self._pos
        self._pos, self._carry = 0, b""
        return True

    def _successor(self) -> Path:
        mine = os.fstat(self._fd)
        names = _rotated_names(self._path)
        following = self._path
        for name in reversed(names):  # a follower that keeps up finds its file among the newest
            try:
                if os.path.samestat(os.stat(self._path.parent / name), mine):
                    return following
            except FileNotFoundError:  # deleted since the listing: older ones are gone too
                break
            following = self._path.parent / name
        # Ours was deleted: the writer rotated max-files times since we looked.
        log.info("container log %s: a follower fell behind its rotation; older lines are gone", self._path)
        return following

    def blocks(self) -> Iterator[None]:
        """Feed one block of records per step, until the end of the file."""
        while block := os.pread(self._fd, _READ_BLOCK, self._pos):
            self._pos += len(block)
            data = self._carry + block if self._carry else block
            records = data.split(b"\n")
            self._carry = records.pop()  # a record still being written
            offset = self._base + self._pos - len(data)
            for record in records:
                end = offset + len(record) + 1
                self._assembler.record(record, offset, end)
                offset = end
            if len(self._carry) > MAX_JOINED_LINE:
                log.warning(
                    "container log %s: dropping a %d-byte run without a newline", self._path, len(self._carry)
                )
                self._carry = b""
            yield


class _Limit:
    """``limitBytes``: cuts the output once it has reached the limit."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit
        self.reached = False

    def cut(self, chunk: bytes) -> bytes:
        if self._left is None:
            return chunk
        if len(chunk) >= self._left:
            chunk, self._left, self.reached = chunk[: self._left], 0, True
        else:
            self._left -= len(chunk)
        return chunk


def read_logs(
    path: Path,
    options: LogOptions,
    now: datetime | None = None,
    *,
    stop: threading.Event | None = None,
    is_finished: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """What ``kubectl logs`` prints for the CRI log at ``path``, as an iterator of chunks.

    The file is opened at once (FileNotFoundError before any output, so a server can still
    answer 404); the rest happens while iterating. ``now`` (default: the current time)
    anchors ``sinceSeconds``. ``options.previous`` is the caller's business: pass
    :func:`previous_log_path`. Chunks are never empty and hold up to about 64 KiB of whole
    lines (the ``limitBytes`` cut may split a line).

    With ``options.follow`` the iterator keeps yielding lines as they are appended, polling
    every ``FOLLOW_POLL_SECONDS`` (new lines show up within ~50 ms), until ``stop`` is set
    (it returns at once) or ``is_finished()`` is true, after which it yields what is left
    and returns. Without ``is_finished`` it follows until ``stop`` is set or the iterator is
    closed.
    """
    since = options.since_ns(now if now is not None else datetime.now(UTC))
    file = path.open("rb", buffering=0)  # a file object, so an iterator never started still closes it
    stop = stop if stop is not None else threading.Event()
    return _read(file, path=path, options=options, since=since, stop=stop, is_finished=is_finished)


def _read(
    file: BinaryIO,
    *,
    path: Path,
    options: LogOptions,
    since: int | None,
    stop: threading.Event,
    is_finished: Callable[[], bool] | None,
) -> Iterator[bytes]:
    fd = file.fileno()
    with contextlib.closing(file):
        start, boundary = (0, 0)
        if options.tail_lines is not None:
            start, boundary = _tail_window(fd, os.fstat(fd).st_size, options.tail_lines)
        assembler = _Assembler(timestamps=options.timestamps, since_ns=since, boundary=boundary)
        source = _FileRecords(file, start, assembler, path)
        with contextlib.closing(source):  # the file read last, after a rotation
            yield from _stream(source, assembler, options, stop=stop, is_finished=is_finished)


def _stream(
    source: _FileRecords,
    assembler: _Assembler,
    options: LogOptions,
    *,
    stop: threading.Event,
    is_finished: Callable[[], bool] | None,
) -> Iterator[bytes]:
    limit = _Limit(options.limit_bytes)

    def drain() -> Iterator[bytes]:
        """What the file holds now; stops early at the limit or the stop event."""
        for _block in source.blocks():
            if chunk := limit.cut(assembler.take()):
                yield chunk
            if limit.reached or stop.is_set():
                return

    while True:
        finished = options.follow and is_finished is not None and is_finished()
        if not options.follow or finished or source.grew():
            yield from drain()
        if options.follow and not (limit.reached or stop.is_set()) and source.rotated():
            # Renamed after its last write: what it holds now is all it will ever hold.
            yield from drain()
            if not (limit.reached or stop.is_set()) and source.follow_rotation():
                continue
        if limit.reached or stop.is_set():
            return
        if not options.follow or finished:
            assembler.finish()
            if chunk := limit.cut(assembler.take()):
                yield chunk
            return
        # An unset stop event doubles as the poll sleep, and wakes up at once when set.
        if stop.wait(FOLLOW_POLL_SECONDS):
            return
