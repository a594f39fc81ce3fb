"""What RFC 6455 asks of a server that aiohttp (3.14) does not check itself,
for the apiServer's /ws/v1 (on aiohttp), and the close codes and version
both websocket servers accept (websocket.py reads its own frames).

aiohttp's reader is shared by clients and servers, so it takes unmasked
frames (5.1: a server must fail the connection); it takes close codes 1006
and 5000+, which no endpoint may send (7.4); and it upgrades versions 7 and
8 (4.2.2: only 13, anything else gets 426).
"""
from __future__ import annotations

from aiohttp import web
from aiohttp.http_websocket import WebSocketError

from ..conn import CLOSE_PROTOCOL_ERROR

VERSION = "13"
# Codes a close frame may carry (7.4.1 and IANA's registry, 1012-1014);
# 1004 is reserved, 1005, 1006 and 1015 are never sent; 3000-4999 are
# for libraries and applications.
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                   1012, 1013, 1014))


def close_code_error(code: int) -> str | None:
    """Why a close frame's status code is a protocol error, or None when it
    is fine (0: the frame had no status code, which is allowed)."""
    if code == 0 or code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999:
        return None
    return f"invalid close code {code}"


def unsupported_version(request: web.Request) -> web.Response | None:
    """426 naming the version we speak when the client asks for another; a
    missing version is a broken handshake, left to aiohttp's 400."""
    version = request.headers.get("Sec-WebSocket-Version")
    if version is None or version.strip() == VERSION:
        return None
    return web.Response(status=426, headers={"Sec-WebSocket-Version": VERSION},
                        text=f"unsupported websocket version {version!r} (only {VERSION})\n")


class MaskedFramesOnly:
    """Sits in front of aiohttp's frame parser and fails the connection with
    1002 at the first frame without the mask bit. It reads only frame headers
    (skipping payloads), so the cost is a few operations per frame."""

    __slots__ = ("parser", "queue", "head", "skip", "failed")

    def __init__(self, parser, queue) -> None:
        self.parser = parser
        self.queue = queue
        self.head = b""  # the start of a frame header cut off by the end of a read
        self.skip = 0  # payload bytes of the current frame still to come
        self.failed = False

    def feed_eof(self) -> None:
        self.parser.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.failed:
            return True, b""
        bad = self._unmasked_at(data)
        if bad < 0:
            return self.parser.feed_data(data)
        self.failed = True
        if bad:  # the frames before it are handled as usual
            self.parser.feed_data(data[:bad])
        # What aiohttp's parser does with a protocol error: receive() raises
        # it, the response closes with its code; True stops further reads.
        self.queue.set_exception(WebSocketError(CLOSE_PROTOCOL_ERROR, "unmasked frame from the client"))
        return True, b""

    def _unmasked_at(self, data: bytes) -> int:
        """Where in data the first unmasked frame starts (0 when its header
        began in an earlier read), or -1 when every frame so far is masked."""
        carried = len(self.head)
        if carried:
            data, self.head = self.head + data, b""
        size = len(data)
        pos = self.skip
        while pos < size:
            if size - pos < 2:
                break
            second = data[pos + 1]
            if not second & 0x80:
                return max(pos - carried, 0)
            length = second & 0x7F
            header = 6 if length < 126 else 8 if length == 126 else 14  # with the 4-byte mask
            if size - pos < header:
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            pos += header + length
        if pos < size:
            self.head, self.skip = data[pos:], 0
        else:
            self.skip = pos - size
        return -1


class ServerWebSocketResponse(web.WebSocketResponse):
    """aiohttp's response with MaskedFramesOnly in front of its parser.

    aiohttp has no hook for this: its _post_start builds the parser and hands
    it to the connection's RequestHandler, feeding it at once whatever
    arrived after the upgrade. That early input is held back here and fed
    through the check instead (private attributes of aiohttp 3.14)."""

    def _post_start(self, request, protocol, writer) -> None:
        handler = request.protocol
        early, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        check = MaskedFramesOnly(handler._payload_parser, self._reader)
        handler._payload_parser = check
        if early and check.feed_data(early)[0]:
            handler.close()
