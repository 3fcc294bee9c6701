"""Text as kubelet's Go writes it: quoted (strconv.Quote), label maps (FormatMap), UTF-8 bytes."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping


def format_map(values: Mapping[str, str]) -> str:
    """apimachinery's FormatMap: ``key="value"`` lines sorted by key, values Go-quoted, no final newline."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Go's strconv.Quote: a double-quoted literal, printable runes kept, the others escaped.

    A lone surrogate (JSON can carry one; Go decodes it as U+FFFD) is written as U+FFFD.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        elif ch == " " or (code > 0x20 and code != 0x7F and _printable(ch)):
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """``text`` in UTF-8 as Go has it: a lone surrogate (JSON can carry one) is U+FFFD."""
    return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _printable(ch: str) -> bool:
    """Go's unicode.IsPrint but for the space: letters, marks, numbers, punctuation, symbols."""
    return unicodedata.category(ch)[0] in "LMNPS"


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String of ``seconds`` truncated to milliseconds (kubelet's
    ``Truncate(time.Millisecond)``): 10s, 1m20s, 5m0s, 1h0m0s, 1.5s, 250ms."""
    millis = int(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}" + (f".{rest % 1000:03d}".rstrip("0") if rest % 1000 else "") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs
