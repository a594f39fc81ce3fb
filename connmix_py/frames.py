"""WebSocket frames a server sends (RFC 6455, unmasked). Pure functions, no I/O.

A publish encodes its frame once with these and writes the same bytes to
every websocket subscriber.
"""
from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked frame carrying payload."""
    first = _FIN | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _LEN16.pack(first, 126, size) + payload
    return _LEN64.pack(first, 127, size) + payload


def text_frame(payload: bytes) -> bytes:
    return encode_frame(payload, OP_TEXT)


def binary_frame(payload: bytes) -> bytes:
    return encode_frame(payload, OP_BINARY)


def is_utf8(payload: bytes) -> bool:
    """RFC 6455 text must be UTF-8 (RFC 3629: no surrogates, no overlongs)."""
    if payload.isascii():  # the common case, several times faster than decoding
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# The header of each unfragmented text frame shorter than 126 bytes, by length.
_SHORT_TEXT_HEADS = [bytes((_FIN | OP_TEXT, size)) for size in range(126)]


def websocket_wire(payload: bytes, binary: bool = False, conn: object = None) -> bytes:
    """A websocket connection's encoder (see conn.Encoder): one frame.
    Raises conn.PayloadError for text that is not UTF-8: a browser closes
    with 1007 on such a frame, so it is refused before anyone gets it."""
    if binary:
        return encode_frame(payload, OP_BINARY)
    if not payload.isascii() and not is_utf8(payload):  # isascii first: most text, no call
        from .conn import PayloadError  # conn imports this module
        raise PayloadError("text payload is not valid UTF-8 (send it as binary)")
    if len(payload) < 126:  # most replies: no header to build
        return _SHORT_TEXT_HEADS[len(payload)] + payload
    return encode_frame(payload, OP_TEXT)
