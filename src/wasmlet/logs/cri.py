"""The CRI log format: ``<RFC 3339 timestamp> <stream> <F|P> <content>`` records, one a line.

Timestamps are Go's ``time.RFC3339Nano`` in UTC; ``P`` marks a piece of a longer line, ``F`` its
last piece (or a whole line). See docs/logs.md.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime
from typing import Literal

Stream = Literal["stdout", "stderr"]

STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
_STREAM_TOKENS: dict[bytes, Stream] = {b"stdout": "stdout", b"stderr": "stderr"}


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


def parse_record(record: bytes) -> tuple[bytes, Stream, bool, bytes] | None:
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
