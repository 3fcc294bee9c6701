"""The query options of ``kubectl logs`` (``GET /containerLogs``), parsed as virtual-kubelet does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wasmlet.logs.cri import parse_timestamp

_MAX_INT64 = 2**63 - 1  # Go's int, 64 bits
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


def _datetime_ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; pass an aware datetime")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


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
