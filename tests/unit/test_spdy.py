"""SPDY/3.1 framing (wasmlet.node.spdy) against bytes written by spdystream's own Framer.

The hex vectors below were printed by github.com/moby/spdystream v0.5.1's ``spdy.Framer``
(``WriteFrame``), the framer kubectl, kube-apiserver and the kubelet use. Go's flate and zlib's
deflate compress differently, so compressed header blocks are checked by inflating Go's bytes and
by round trips; every frame without a header block must match Go's bytes exactly.
"""

from __future__ import annotations

import zlib

import pytest

from wasmlet.node import spdy

# One Framer (one compression context) writing kubectl's two streams of a forwarded connection:
# headers Set("streamType", ...), Set("port", "8080"), Set("requestID", "0").
GO_KUBECTL_ERROR_STREAM = bytes.fromhex(
    "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e0"
    "1c60616061c0c0c0c0590489c64c50f2663400000000ffff"
)
GO_KUBECTL_DATA_STREAM = bytes.fromhex("800300010000001800000003000000000000c2aa19540e2512d60b000000ffff")
# Another Framer: the replies spdystream's server sends (SendReply(http.Header{}, false)).
GO_REPLY_1 = bytes.fromhex("80030002000000140000000178f9e3c6a7c26260606000000000ffff")
GO_REPLY_3 = bytes.fromhex("800300020000000c00000003026100000000ffff")
GO_DATA_FIN = bytes.fromhex("00000001010000046f6f7073")  # stream 1, FIN, "oops"
GO_RST_CANCEL = bytes.fromhex("80030003000000080000000300000005")  # stream 3, CANCEL
GO_PING = bytes.fromhex("800300060000000400000001")  # id 1
GO_GOAWAY = bytes.fromhex("80030007000000080000000500000000")  # last good 5, OK
GO_WINDOW_UPDATE = bytes.fromhex("80030009000000080000000100010000")  # stream 1, +65536
# The zlib header of every compressed stream: deflate, level 9, FDICT, then the dictionary's Adler-32.
ZLIB_HEADER = bytes.fromhex("78f9e3c6a7c2")

KUBECTL_HEADERS = {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}
KUBECTL_BLOCK = (
    b"\x00\x00\x00\x03"
    b"\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
    b"\x00\x00\x00\x04port\x00\x00\x00\x048080"
    b"\x00\x00\x00\x09requestid\x00\x00\x00\x010"
)


def decode_all(data: bytes, decoder: spdy.Decoder | None = None) -> list[spdy.Frame]:
    decoder = decoder or spdy.Decoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert decoder.buffered == 0
    return frames


def test_the_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2  # what Go's zlib header carries
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_kubectls_streams_as_go_writes_them_decode_in_one_context() -> None:
    assert decode_all(GO_KUBECTL_ERROR_STREAM + GO_KUBECTL_DATA_STREAM) == [
        spdy.SynStream(1, KUBECTL_HEADERS),
        spdy.SynStream(3, {**KUBECTL_HEADERS, "streamtype": ["data"]}),
    ]


def test_the_second_block_needs_the_first_blocks_context() -> None:
    with pytest.raises(spdy.ProtocolError):
        decode_all(GO_KUBECTL_DATA_STREAM)


def test_go_replies_decode() -> None:
    assert decode_all(GO_REPLY_1 + GO_REPLY_3) == [spdy.SynReply(1), spdy.SynReply(3)]


def test_frames_without_header_blocks_match_go_byte_for_byte() -> None:
    encoder = spdy.Encoder()
    assert encoder.encode(spdy.Data(1, b"oops", spdy.FLAG_FIN)) == GO_DATA_FIN
    assert encoder.encode(spdy.RstStream(3, spdy.RstStatus.CANCEL)) == GO_RST_CANCEL
    assert encoder.encode(spdy.Ping(1)) == GO_PING
    assert encoder.encode(spdy.GoAway(5)) == GO_GOAWAY
    assert encoder.encode(spdy.WindowUpdate(1, 65536)) == GO_WINDOW_UPDATE
    assert decode_all(GO_DATA_FIN + GO_RST_CANCEL + GO_PING + GO_GOAWAY + GO_WINDOW_UPDATE) == [
        spdy.Data(1, b"oops", spdy.FLAG_FIN),
        spdy.RstStream(3, spdy.RstStatus.CANCEL),
        spdy.Ping(1),
        spdy.GoAway(5),
        spdy.WindowUpdate(1, 65536),
    ]


def test_the_header_block_is_gos_before_compression() -> None:
    assert spdy.encode_header_block(KUBECTL_HEADERS) == KUBECTL_BLOCK
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(GO_KUBECTL_ERROR_STREAM[18:]) == KUBECTL_BLOCK
    assert spdy.decode_header_block(KUBECTL_BLOCK) == KUBECTL_HEADERS


def test_compressed_blocks_are_a_zlib_stream_with_the_dictionary_flushed_per_frame() -> None:
    encoder = spdy.Encoder()
    first = encoder.encode(spdy.SynReply(1))
    second = encoder.encode(spdy.SynReply(3))
    assert first[12:18] == ZLIB_HEADER  # after the 8-byte head and the stream id, as Go's
    assert first.endswith(b"\x00\x00\xff\xff") and second.endswith(b"\x00\x00\xff\xff")  # sync flush
    assert not second[12:].startswith(ZLIB_HEADER)  # the same stream goes on
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(first[12:]) == b"\x00\x00\x00\x00"
    assert inflate.decompress(second[12:]) == b"\x00\x00\x00\x00"


def test_header_names_are_lowercased_and_values_nul_joined() -> None:
    block = spdy.encode_header_block({"X-Stream-Protocol-Version": ["a", "b"]})
    assert block == b"\x00\x00\x00\x01\x00\x00\x00\x19x-stream-protocol-version\x00\x00\x00\x03a\x00b"
    assert spdy.decode_header_block(block) == {"x-stream-protocol-version": ["a", "b"]}


ALL_FRAMES: list[spdy.Frame] = [
    spdy.SynStream(1, KUBECTL_HEADERS, spdy.FLAG_FIN, associated_to=0, priority=7, slot=0),
    spdy.SynReply(1),
    spdy.SynStream(
        3, {"a": ["1", "2"], "b": [""]}, spdy.FLAG_UNIDIRECTIONAL, associated_to=1, priority=3, slot=9
    ),
    spdy.SynReply(3, {"x": ["y"]}, spdy.FLAG_FIN),
    spdy.HeadersFrame(3, {"late": ["header"]}),
    spdy.Data(3, b"\x00" * 70000),
    spdy.Data(3, b"", spdy.FLAG_FIN),
    spdy.RstStream(3, spdy.RstStatus.FLOW_CONTROL_ERROR),
    spdy.Settings(((1, 4, 100), (0, 7, 65536))),
    spdy.Ping(2**32 - 1),
    spdy.GoAway(3, spdy.GoAwayStatus.PROTOCOL_ERROR),
    spdy.WindowUpdate(0, 1),
    spdy.UnknownControl(0x42, 0x3, b"whatever"),
    spdy.Data(spdy.MAX_STREAM_ID, b"last"),
]


def test_every_frame_round_trips_in_one_context() -> None:
    encoder = spdy.Encoder()
    wire = b"".join(encoder.encode(frame) for frame in ALL_FRAMES)
    assert decode_all(wire) == ALL_FRAMES


def test_frames_fed_a_byte_at_a_time_come_out_whole() -> None:
    encoder = spdy.Encoder()
    wire = b"".join(encoder.encode(frame) for frame in ALL_FRAMES[:6])
    decoder = spdy.Decoder()
    frames = []
    for index in range(len(wire)):
        decoder.feed(wire[index : index + 1])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == ALL_FRAMES[:6]


def control(frame_type: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return (
        (0x80000000 | version << 16 | frame_type).to_bytes(4, "big")
        + (flags << 24 | len(payload)).to_bytes(4, "big")
        + payload
    )


def compressed(block: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    return deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)


def syn_stream(block: bytes, stream_id: int = 1) -> bytes:
    return control(1, stream_id.to_bytes(4, "big") + bytes(6) + compressed(block))


def test_an_oversized_frame_is_refused_from_its_head() -> None:
    decoder = spdy.Decoder(spdy.Limits(max_frame_payload=1024))
    decoder.feed(bytes.fromhex("00000001") + (1025).to_bytes(4, "big"))  # no payload sent yet
    with pytest.raises(spdy.ProtocolError, match="1025 bytes"):
        decoder.next_frame()


def test_a_frame_at_the_limit_is_taken() -> None:
    decoder = spdy.Decoder(spdy.Limits(max_frame_payload=1024))
    decoder.feed(spdy.Encoder().encode(spdy.Data(1, b"x" * 1024)))
    assert decoder.next_frame() == spdy.Data(1, b"x" * 1024)


def test_a_header_bomb_is_refused() -> None:
    block = (
        (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"a" + (1 << 20).to_bytes(4, "big") + bytes(1 << 20)
    )
    wire = syn_stream(block)
    assert len(wire) < 4096  # a megabyte of zeros inflates from a few kilobytes
    with pytest.raises(spdy.ProtocolError, match="more than 65536 bytes"):
        decode_all(wire)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x00\x00\x00\x01\x00\x00\x00\x04Port\x00\x00\x00\x011", "not lowercase"),
        (
            b"\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x011\x00\x00\x00\x01a\x00\x00\x00\x012",
            "appears twice",
        ),
        (b"\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x011", "ends early"),
        (b"\x00\x00\x00\x00\x00", "bytes after"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00", "empty header name"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x01\xff\x00\x00\x00\x00", "not UTF-8"),
        ((101).to_bytes(4, "big"), "101 headers"),
        (b"\x00\x00\x00\x01\xff\xff\xff\xff", "ends early"),
    ],
)
def test_malformed_header_blocks_are_protocol_errors(block: bytes, error: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=error):
        decode_all(syn_stream(block))


def test_a_block_that_does_not_inflate_is_a_protocol_error() -> None:
    with pytest.raises(spdy.ProtocolError, match="does not inflate"):
        decode_all(control(1, bytes([0, 0, 0, 1]) + bytes(6) + b"not zlib at all"))


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (bytes(8), "data frame on stream 0"),
        (control(3, bytes(8)), "status 0"),
        (control(3, bytes(4) + (5).to_bytes(4, "big")), "RST_STREAM frame on stream 0"),
        (control(3, bytes(12)), "12 bytes, not 8"),
        (control(6, bytes(4)), "PING frame with id 0"),
        (control(6, bytes(8)), "8 bytes, not 4"),
        (control(7, bytes(4)), "4 bytes, not 8"),  # SPDY/2's GOAWAY
        (control(9, bytes(7)), "7 bytes, not 8"),
        (control(4, (2).to_bytes(4, "big") + bytes(8)), "SETTINGS"),
        (control(4, bytes(3)), "SETTINGS"),
        (control(1, bytes(9)), "SYN_STREAM frame of 9 bytes"),
        (control(2, bytes(3)), "SYN_REPLY frame of 3 bytes"),
        (control(6, (1).to_bytes(4, "big"), version=2), "version 2"),
        (syn_stream(b"\x00\x00\x00\x00", stream_id=0), "SYN_STREAM frame on stream 0"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, error: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=error):
        decode_all(wire)


def test_unknown_control_frames_are_handed_on_to_be_ignored() -> None:
    assert decode_all(control(0x99, b"abc", flags=1)) == [spdy.UnknownControl(0x99, 1, b"abc")]


def test_the_encoder_refuses_what_go_refuses() -> None:
    encoder = spdy.Encoder()
    for frame in (spdy.Data(0), spdy.RstStream(1, 0), spdy.Ping(0), spdy.SynReply(spdy.MAX_STREAM_ID + 1)):
        with pytest.raises(ValueError, match=r"invalid|stream id"):
            encoder.encode(frame)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_frame_payload"):
        spdy.Limits(max_frame_payload=1 << 24)
    with pytest.raises(ValueError, match="max_header_block"):
        spdy.Limits(max_header_block=0)
