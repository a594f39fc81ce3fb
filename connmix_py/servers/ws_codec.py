"""Reading a client's websocket frames (RFC 6455 section 5), sans I/O.

``FrameReader.feed(data)`` takes whatever a socket read returned and gives
back the complete messages and control frames in it, in order; a partial
frame waits in the reader for the next read. Anything RFC 6455 makes a
protocol error raises ``FrameError`` with the close code to fail the
connection with: an unmasked frame (5.1), reserved bits without a
negotiated extension (5.2: none is offered), an unknown opcode, a control
frame that is fragmented or over 125 bytes (5.5), a continuation without a
message or a new message inside a fragmented one (5.4), a close payload of
one byte (5.5.1); a message over the size limit raises it with 1009.

Text stays bytes (Lua strings): whether it is UTF-8 is the server's check,
on the whole message. Frames the server sends are built by connmix_py.frames.
"""
from __future__ import annotations

from aiohttp._websocket.helpers import websocket_mask  # C when aiohttp's extensions are built

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009

_CONTROL_MAX = 125
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)


class FrameError(Exception):
    """The client broke RFC 6455 (or the size limit): fail with ``code``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        # What feed() read before the bad frame: handled before failing.
        self.frames: list[tuple[int, bytes]] = []


def unmask(mask: bytes, payload: bytes) -> bytes:
    if not payload:
        return payload
    data = bytearray(payload)
    websocket_mask(mask, data)
    return bytes(data)


class FrameReader:
    """One connection's frame parser. ``max_size`` bounds a whole message
    (its fragments together); 0 is no bound."""

    __slots__ = ("max_size", "_tail", "_need", "_message_opcode", "_fragments")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # The start of a frame cut off by the end of a read, and how long it
        # must grow before parsing is worth trying again (a big frame arrives
        # in many reads: appended, not re-joined each time).
        self._tail: bytearray | None = None
        self._need = 0
        self._message_opcode = 0  # of the fragmented message under way (0: none)
        self._fragments: bytearray | None = None  # of the fragmented message under way

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """(opcode, payload) for each complete message (OP_TEXT, OP_BINARY,
        fragments joined) and control frame in ``data`` and what came before it."""
        tail = self._tail
        if tail is not None:
            tail += data
            if len(tail) < self._need:
                return []
            data, self._tail = bytes(tail), None
        out: list[tuple[int, bytes]] = []
        try:
            self._parse(data, out)
        except FrameError as exc:
            exc.frames = out
            raise
        return out

    def _parse(self, data: bytes, out: list[tuple[int, bytes]]) -> None:
        size = len(data)
        pos = 0
        need = 2
        while size - pos >= 2:
            first, second = data[pos], data[pos + 1]
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "unmasked frame from the client")
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
            opcode = first & 0x0F
            length = second & 0x7F
            start = pos + 6  # the header with its mask
            if length >= 126:  # a 16- or 64-bit length follows the second byte
                wide = 2 if length == 126 else 8
                start += wide
                if size < start:
                    need = start - pos
                    break
                length = int.from_bytes(data[pos + 2:pos + 2 + wide], "big")
                if length >> 63:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "frame length with the top bit set")
            # The usual frame, a whole text or binary message, is checked and
            # kept here; the others go through _check and _frame (a call each
            # costs as much as the rest of this loop).
            whole = first & 0x80 and (opcode == OP_TEXT or opcode == OP_BINARY) and not self._message_opcode
            if not whole:
                self._check(opcode, first & 0x80, length)
            elif self.max_size and length > self.max_size:
                raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
            end = start + length
            if size < end:
                need = end - pos
                break
            payload = unmask(data[start - 4:start], data[start:end])
            pos = end
            if whole:
                out.append((opcode, payload))
                continue
            message = self._frame(opcode, bool(first & 0x80), payload)
            if message is not None:
                out.append(message)
        if pos < size:
            self._tail = bytearray(data[pos:])
            self._need = need

    def _check(self, opcode: int, fin: int, length: int) -> None:
        """What the header alone tells: refused before the payload is waited for."""
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > _CONTROL_MAX:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"control frame of {length} bytes (limit 125)")
            if opcode == OP_CLOSE and length == 1:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
            return
        if opcode in _DATA_OPCODES:
            if self._message_opcode:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        elif opcode == OP_CONTINUATION:
            if not self._message_opcode:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        held = len(self._fragments) if self._fragments is not None else 0
        if self.max_size and held + length > self.max_size:
            raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= OP_CLOSE or (fin and opcode):  # control, or an unfragmented message
            return opcode, payload
        if opcode:  # the first fragment
            self._message_opcode = opcode
            self._fragments = bytearray(payload)
        else:
            assert self._fragments is not None  # _check saw the message started
            self._fragments += payload  # one buffer: a flood of tiny fragments is not a flood of objects
        if not fin:
            return None
        message = self._message_opcode, bytes(self._fragments)
        self._message_opcode, self._fragments = 0, None
        return message
