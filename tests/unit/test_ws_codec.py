"""The websocket server's frame reader (connmix_py/servers/ws_codec.py):
RFC 6455's own examples (5.7), every protocol error with its close code,
and, with hypothesis, any stream cut anywhere reads the same as whole."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connmix_py.servers.ws_codec import (OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
                                         FrameError, FrameReader)
from tests.raw_websocket import client_frame


def frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by the tests' own client code; rsv sets reserved bits."""
    data = client_frame(payload, opcode, fin, masked)
    return bytes((data[0] | rsv << 4,)) + data[1:]


def read_all(data: bytes, max_size: int = 0) -> list[tuple[int, bytes]]:
    return FrameReader(max_size).feed(data)


def failure(data: bytes, max_size: int = 0) -> FrameError:
    with pytest.raises(FrameError) as failed:
        read_all(data, max_size)
    return failed.value


# -- RFC 6455 5.7 -----------------------------------------------------------------------------


def test_the_rfcs_masked_hello():
    assert read_all(bytes.fromhex("818537fa213d7f9f4d5158")) == [(OP_TEXT, b"Hello")]


def test_the_rfcs_masked_pong_and_a_ping():
    pong = bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert read_all(frame(b"Hello", OP_PING) + pong) == [(OP_PING, b"Hello"), (OP_PONG, b"Hello")]


def test_the_rfcs_unmasked_ping_is_refused():
    assert failure(bytes.fromhex("890548656c6c6f")).code == 1002


def test_the_rfcs_fragmented_hello_comes_whole():
    stream = frame(b"Hel", OP_TEXT, fin=False) + frame(b"lo", OP_CONTINUATION)
    assert read_all(stream) == [(OP_TEXT, b"Hello")]


@pytest.mark.parametrize("size", [0, 125, 126, 256, 65535, 65536, 70000])
def test_every_length_encoding(size):
    payload = os.urandom(size)
    assert read_all(frame(payload, OP_BINARY)) == [(OP_BINARY, payload)]


def test_a_control_frame_between_fragments_comes_first():
    stream = frame(b"a", OP_TEXT, fin=False) + frame(b"p", OP_PING) + frame(b"b", OP_CONTINUATION)
    assert read_all(stream) == [(OP_PING, b"p"), (OP_TEXT, b"ab")]


def test_close_frames_are_returned_as_they_are():
    assert read_all(frame(struct.pack("!H", 1000) + b"bye", OP_CLOSE)) == [(OP_CLOSE, b"\x03\xe8bye")]
    assert read_all(frame(b"", OP_CLOSE)) == [(OP_CLOSE, b"")]


# -- protocol errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("stream", "code", "why"), [
    (frame(b"bare", masked=False), 1002, "unmasked"),
    (frame(b"x", rsv=4), 1002, "reserved bits"),
    (frame(b"x", opcode=0x3), 1002, "unknown opcode"),
    (frame(b"x", opcode=0xB), 1002, "unknown opcode"),
    (frame(b"p", OP_PING, fin=False), 1002, "fragmented control"),
    (frame(b"p" * 126, OP_PING), 1002, "control frame of 126 bytes"),
    (frame(b"\x03", OP_CLOSE), 1002, "one-byte"),
    (frame(b"x", OP_CONTINUATION), 1002, "continuation frame without a message"),
    (frame(b"a", OP_TEXT, fin=False) + frame(b"b", OP_TEXT), 1002, "new message inside"),
    (struct.pack("!BBQ", 0x82, 0xFF, 1 << 63) + b"mask", 1002, "top bit"),
])
def test_protocol_errors_name_their_close_code(stream, code, why):
    failed = failure(stream)
    assert failed.code == code and why in str(failed)


def test_frames_before_a_bad_one_are_kept_on_the_error():
    failed = failure(frame(b"first") + frame(b"second", OP_BINARY) + frame(b"bare", masked=False))
    assert failed.frames == [(OP_TEXT, b"first"), (OP_BINARY, b"second")]


def test_a_message_at_the_limit_passes_and_one_byte_more_is_1009():
    assert read_all(frame(b"x" * 1024), 1024) == [(OP_TEXT, b"x" * 1024)]
    assert failure(frame(b"x" * 1025), 1024).code == 1009


def test_fragments_count_together_against_the_limit():
    stream = frame(b"x" * 600, OP_TEXT, fin=False) + frame(b"x" * 600, OP_CONTINUATION)
    assert failure(stream, 1024).code == 1009


def test_a_big_frame_is_refused_from_its_header_alone():
    # Only the header of a 10 MB frame has arrived: refused before its payload.
    assert failure(struct.pack("!BBQ", 0x82, 0xFF, 10_000_000) + b"mask", 1024).code == 1009


def test_a_frame_cut_off_waits_for_the_rest():
    reader = FrameReader(0)
    whole = frame(b"m" * 70000, OP_BINARY)
    assert reader.feed(whole[:1]) == []
    assert reader.feed(whole[1:9]) == []
    assert reader.feed(whole[9:40000]) == []
    assert reader.feed(whole[40000:]) == [(OP_BINARY, b"m" * 70000)]


# -- any cut reads the same -------------------------------------------------------------------

messages = st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_PING]),
                              st.binary(max_size=300), st.integers(1, 3)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(0, 2000), max_size=12))
def test_a_stream_cut_anywhere_reads_the_same_as_whole(sent, cuts):
    stream, expected = b"", []
    for opcode, payload, parts in sent:
        if opcode == OP_PING:
            payload = payload[:125]
            stream += frame(payload, OP_PING)
        else:  # a message in `parts` fragments
            step = max(1, -(-len(payload) // parts))
            pieces = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
            for i, piece in enumerate(pieces):
                stream += frame(piece, opcode if i == 0 else OP_CONTINUATION, fin=i == len(pieces) - 1)
        expected.append((opcode, payload))
    reader, got, start = FrameReader(0), [], 0
    for cut in sorted(c for c in cuts if c < len(stream)) + [len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_frames_or_a_frame_error_and_nothing_else(data):
    try:
        FrameReader(1000).feed(data)
    except FrameError as exc:
        assert exc.code in (1002, 1009)


def test_thousands_of_one_byte_fragments_make_one_message_and_count_against_the_limit():
    stream = frame(b"a", OP_BINARY, fin=False) + b"".join(frame(b"b", OP_CONTINUATION, fin=False)
                                                        for _ in range(4998)) + frame(b"c", OP_CONTINUATION)
    assert read_all(stream, 5000) == [(OP_BINARY, b"a" + b"b" * 4998 + b"c")]
    assert failure(stream, 4999).code == 1009
