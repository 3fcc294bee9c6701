"""The reader behind ``/containerLogs``: a CRI log turned back into what ``kubectl logs`` prints.

:func:`read_logs` applies ``tailLines``, ``sinceSeconds``/``sinceTime``, ``timestamps`` and
``limitBytes`` (:class:`~wasmlet.logs.options.LogOptions`), and follows the file, across
rotations, while the container runs. See docs/logs.md for where it differs from the kubelet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from wasmlet.logs.cri import Stream, parse_record, parse_timestamp
from wasmlet.logs.options import LogOptions
from wasmlet.logs.rotation import rotated_names

log = logging.getLogger(__name__)

MAX_JOINED_LINE = 1024 * 1024
"""Longest line the reader re-joins in memory; longer lines are printed in pieces."""
FOLLOW_POLL_SECONDS = 0.05
"""How often a follower checks the file for new records: the worst-case follow latency."""

_READ_BLOCK = 64 * 1024


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
        parsed = parse_record(head)
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
        parsed = parse_record(record)
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
        names = rotated_names(self._path)
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
    :func:`~wasmlet.logs.files.previous_log_path`. Chunks are never empty and hold up to about
    64 KiB of whole lines (the ``limitBytes`` cut may split a line).

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
