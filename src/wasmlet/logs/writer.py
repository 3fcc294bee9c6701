"""The writer of a container's log: stdout/stderr chunks to CRI records, rotated by size.

See docs/logs.md for the format, the rotation and where it differs from the kubelet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wasmlet.logs.cri import STREAMS, Stream
from wasmlet.logs.files import LOG_DIR_MODE, LOG_FILE_MODE
from wasmlet.logs.rotation import LogRotation, rotated_names

log = logging.getLogger(__name__)

MAX_RECORD_CONTENT = 16 * 1024
"""Longest content of one record; longer (or unterminated) lines are split into ``P`` records."""

_MAX_INT64 = 2**63 - 1  # a size no file reaches


class ContainerLogWriter:
    """Appends a container's stdout and stderr to one CRI-format log file.

    ``write`` is called with every chunk read from the module's output; it is serialised
    by a per-writer lock and costs one ``os.write`` per call (nothing is buffered in user
    space except the unterminated tail of each stream), so followers see complete lines
    immediately. With ``rotation``, records that would take the file past its ``max_size``
    go to a new file (see docs/logs.md). ``clock`` returns ns since the epoch; tests inject
    their own.
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
        if stream not in STREAMS:
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
                for stream in STREAMS:
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
        for old in rotated_names(self.path)[:-kept]:
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
