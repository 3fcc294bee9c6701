"""SPDY/3.1 framing as github.com/moby/spdystream speaks it: what kubectl and kube-apiserver use for
``kubectl port-forward`` (k8s.io/streaming's httpstream/spdy upgrades to it).

Frames are encoded and decoded here, nothing more: streams, flow and their limits are the
caller's (:mod:`wasmlet.node.port_forward`). Header blocks travel zlib-compressed, one zlib stream
per direction for the whole connection, primed with SPDY/3's dictionary and flushed with
``Z_SYNC_FLUSH`` after each block, as spdystream's Framer does. spdystream does no flow control
(it neither sends nor heeds WINDOW_UPDATE), so neither does anything built on this module.

The decoder treats its input as hostile: a frame longer than :attr:`Limits.max_frame_payload` is
refused as soon as its 8-byte head is in (before its payload is buffered), a header block may
inflate to :attr:`Limits.max_header_block` bytes at most, and anything malformed raises
:class:`ProtocolError`, after which the connection cannot be trusted (the zlib stream is shared).

One file (430 lines): every frame type shares the connection's one header-compression context,
which must see each header block in order.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
MAX_LENGTH = (1 << 24) - 1  # the 24-bit length field of every frame
MAX_STREAM_ID = (1 << 31) - 1

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM only

_CONTROL_BIT = 0x80000000
_HEAD = struct.Struct(">II")
_U32 = struct.Struct(">I")


def _dictionary() -> bytes:
    """SPDY/3's header compression dictionary (spdystream's spdy/dictionary.go, 1423 bytes):
    length-prefixed header names and values, then a run of common strings."""
    words = (
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
        "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
        "cache-control", "connection", "content-base", "content-encoding", "content-language",
        "content-length", "content-location", "content-md5", "content-range", "content-type",
        "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
        "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
        "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
        "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
        "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
    )  # fmt: skip
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(_U32.pack(len(word)) + word.encode() for word in words) + tail.encode()


DICTIONARY = _dictionary()


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


Headers = dict[str, list[str]]
"""Header names lowercased (as on the wire), each with its values (NUL-separated on the wire)."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0
    associated_to: int = 0
    priority: int = 0  # 3 bits
    slot: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass(frozen=True)
class UnknownControl:
    """A control frame of a type SPDY/3.1 does not define: to be ignored, as the spec says."""

    frame_type: int
    flags: int
    payload: bytes


Frame = (
    SynStream
    | SynReply
    | RstStream
    | Settings
    | Ping
    | GoAway
    | HeadersFrame
    | WindowUpdate
    | Data
    | UnknownControl
)


class ProtocolError(Exception):
    """The peer broke SPDY/3.1 framing (or a limit): the connection is to be ended with GOAWAY."""


@dataclass(frozen=True)
class Limits:
    max_frame_payload: int = 1 << 20  # spdystream's own writers send at most 32 KiB of data a frame
    max_header_block: int = 64 << 10  # decompressed
    max_headers: int = 100

    def __post_init__(self) -> None:
        if not 16 <= self.max_frame_payload <= MAX_LENGTH:
            raise ValueError(f"max_frame_payload must be 16..{MAX_LENGTH}, not {self.max_frame_payload}")
        if self.max_header_block < 4 or self.max_headers < 0:
            raise ValueError("max_header_block must be at least 4 and max_headers not negative")


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: a count, then length-prefixed lowercased names and
    NUL-joined values, in the order given."""
    out = [_U32.pack(len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode()
        raw_value = "\x00".join(values).encode()
        out += [_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(block: bytes, limits: Limits = Limits()) -> Headers:
    """Parse an uncompressed name/value block; ProtocolError if it is malformed or names a header
    twice or in upper case (spdystream's reader fails on both)."""
    view = memoryview(block)
    offset = 0

    def take(size: int) -> bytes:
        nonlocal offset
        if size > len(view) - offset:
            raise ProtocolError("header block ends early")
        chunk = bytes(view[offset : offset + size])
        offset += size
        return chunk

    def length() -> int:
        value: int = _U32.unpack(take(4))[0]
        return value

    count = length()
    if count > limits.max_headers:
        raise ProtocolError(f"{count} headers in a block (at most {limits.max_headers})")
    headers: Headers = {}
    for index in range(count):
        try:
            name = take(length()).decode()
            value = take(length()).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"header {index} is not UTF-8") from exc
        if not name:
            raise ProtocolError("empty header name")
        if name != name.lower():
            raise ProtocolError(f"header name {name!r} is not lowercase")
        if name in headers:
            raise ProtocolError(f"header {name!r} appears twice")
        headers[name] = value.split("\x00")
    if offset != len(view):
        raise ProtocolError(f"{len(view) - offset} bytes after the header block")
    return headers


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"control frame payload of {len(payload)} bytes (at most {MAX_LENGTH})")
    return (
        _HEAD.pack(_CONTROL_BIT | VERSION << 16 | frame_type, (flags & 0xFF) << 24 | len(payload)) + payload
    )


def _stream_id(stream_id: int) -> int:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} is not 1..{MAX_STREAM_ID}")
    return stream_id


class Encoder:
    """Frames to bytes; one per connection direction (it holds the header compressor)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def _compressed(self, headers: Headers) -> bytes:
        return self._deflate.compress(encode_header_block(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        """Serialize ``frame``; ValueError for a field out of range (a bug of the caller)."""
        if isinstance(frame, Data):
            if len(frame.data) > MAX_LENGTH:
                raise ValueError(f"data frame of {len(frame.data)} bytes (at most {MAX_LENGTH})")
            head = _HEAD.pack(_stream_id(frame.stream_id), (frame.flags & 0xFF) << 24 | len(frame.data))
            return head + frame.data
        frame_type, flags, payload = 0, 0, b""
        match frame:
            case SynStream():
                frame_type, flags = FrameType.SYN_STREAM, frame.flags
                payload = struct.pack(
                    ">IIBB",
                    _stream_id(frame.stream_id),
                    frame.associated_to & MAX_STREAM_ID,
                    (frame.priority & 0x7) << 5,
                    frame.slot & 0xFF,
                ) + self._compressed(frame.headers)
            case SynReply() | HeadersFrame():
                frame_type = FrameType.SYN_REPLY if isinstance(frame, SynReply) else FrameType.HEADERS
                flags = frame.flags
                payload = _U32.pack(_stream_id(frame.stream_id)) + self._compressed(frame.headers)
            case RstStream():
                if frame.status == 0:
                    raise ValueError("RST_STREAM status 0 is invalid")
                frame_type, payload = (
                    FrameType.RST_STREAM,
                    _HEAD.pack(_stream_id(frame.stream_id), frame.status),
                )
            case Settings():
                frame_type, flags = FrameType.SETTINGS, frame.flags
                payload = _U32.pack(len(frame.entries)) + b"".join(
                    _HEAD.pack((bits & 0xFF) << 24 | ident & 0xFFFFFF, value)
                    for bits, ident, value in frame.entries
                )
            case Ping():
                if frame.ping_id == 0:
                    raise ValueError("PING id 0 is invalid")
                frame_type, payload = FrameType.PING, _U32.pack(frame.ping_id)
            case GoAway():
                frame_type = FrameType.GOAWAY
                payload = _HEAD.pack(frame.last_good_stream_id & MAX_STREAM_ID, frame.status)
            case WindowUpdate():
                frame_type = FrameType.WINDOW_UPDATE
                payload = _HEAD.pack(frame.stream_id & MAX_STREAM_ID, frame.delta)
            case UnknownControl():
                frame_type, flags, payload = frame.frame_type, frame.flags, frame.payload
        return _control(frame_type, flags, payload)


class Decoder:
    """Bytes to frames, fed as they arrive; one per connection direction (it holds the header
    decompressor). :meth:`next_frame` gives each complete frame in turn."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded: at most one frame's, and what came after it."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed; ProtocolError if the bytes
        are not SPDY/3.1 (or exceed the limits)."""
        if len(self._buffer) < 8:
            return None
        first, second = _HEAD.unpack_from(self._buffer)
        flags, length = second >> 24, second & MAX_LENGTH
        if length > self.limits.max_frame_payload:
            raise ProtocolError(f"a frame of {length} bytes (at most {self.limits.max_frame_payload})")
        if len(self._buffer) < 8 + length:
            return None
        payload = bytes(self._buffer[8 : 8 + length])
        del self._buffer[: 8 + length]
        if not first & _CONTROL_BIT:
            if first == 0:
                raise ProtocolError("a data frame on stream 0")
            return Data(first, payload, flags)
        version, frame_type = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"a control frame of SPDY version {version}, not {VERSION}")
        return self._control(frame_type, flags, payload)

    def _headers(self, compressed: bytes) -> Headers:
        limit = self.limits.max_header_block
        try:
            block = self._inflate.decompress(compressed, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"a header block that does not inflate: {exc}") from exc
        if len(block) > limit or self._inflate.unconsumed_tail:
            raise ProtocolError(f"a header block of more than {limit} bytes")
        return decode_header_block(block, self.limits)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        if frame_type in (FrameType.SYN_STREAM, FrameType.SYN_REPLY, FrameType.HEADERS):
            return self._with_headers(FrameType(frame_type), flags, payload)
        if frame_type == FrameType.SETTINGS:
            size = len(payload)
            if size < 4 or (size - 4) % 8 or _U32.unpack_from(payload)[0] != (size - 4) // 8:
                raise ProtocolError(f"a SETTINGS frame of {size} bytes that does not hold its entries")
            entries = tuple(
                (word >> 24, word & 0xFFFFFF, value) for word, value in struct.iter_unpack(">II", payload[4:])
            )
            return Settings(entries, flags)
        if frame_type in _FIXED:
            return _fixed(FrameType(frame_type), payload)
        return UnknownControl(frame_type, flags, payload)

    def _with_headers(self, frame_type: FrameType, flags: int, payload: bytes) -> Frame:
        """SYN_STREAM, SYN_REPLY, HEADERS: stream fields, then a compressed header block."""
        fields = 10 if frame_type == FrameType.SYN_STREAM else 4
        if len(payload) < fields:
            raise ProtocolError(f"a {frame_type.name} frame of {len(payload)} bytes")
        stream_id = _stream(frame_type, _U32.unpack_from(payload)[0])
        headers = self._headers(payload[fields:])
        if frame_type == FrameType.SYN_REPLY:
            return SynReply(stream_id, headers, flags)
        if frame_type == FrameType.HEADERS:
            return HeadersFrame(stream_id, headers, flags)
        associated, priority, slot = struct.unpack_from(">IBB", payload, 4)
        return SynStream(stream_id, headers, flags, associated & MAX_STREAM_ID, priority >> 5, slot)


_FIXED = {FrameType.RST_STREAM: 8, FrameType.PING: 4, FrameType.GOAWAY: 8, FrameType.WINDOW_UPDATE: 8}


def _stream(frame_type: FrameType, stream_id: int) -> int:
    stream_id &= MAX_STREAM_ID
    if stream_id == 0:
        raise ProtocolError(f"a {frame_type.name} frame on stream 0")
    return stream_id


def _fixed(frame_type: FrameType, payload: bytes) -> Frame:
    """The control frames of a fixed size, checked as spdystream's reader checks them."""
    size = _FIXED[frame_type]
    if len(payload) != size:
        raise ProtocolError(f"a {frame_type.name} frame of {len(payload)} bytes, not {size}")
    words = struct.unpack(">" + "I" * (size // 4), payload)
    frame: Frame
    match frame_type:
        case FrameType.RST_STREAM:
            if words[1] == 0:
                raise ProtocolError("a RST_STREAM frame with status 0")
            frame = RstStream(_stream(frame_type, words[0]), words[1])
        case FrameType.PING:
            if words[0] == 0:
                raise ProtocolError("a PING frame with id 0")
            frame = Ping(words[0])
        case FrameType.GOAWAY:
            frame = GoAway(words[0] & MAX_STREAM_ID, words[1])
        case _:
            frame = WindowUpdate(words[0] & MAX_STREAM_ID, words[1] & MAX_STREAM_ID)
    return frame
