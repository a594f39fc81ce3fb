"""A websocket client written by hand on a plain socket, for what real
client libraries will not do: never read, drop the TCP connection without a
close frame, send a frame of any size.

Nothing is read from the socket unless the test asks, so a client that
stops calling ``read_frame`` really stops reading (with a small receive
buffer the server's writes back up at once).
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from tests.waiting import within

# Offset of tcpi_data_segs_in in Linux's struct tcp_info (since Linux 4.6).
_TCPI_DATA_SEGS_IN = 152


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame's bytes; masked=False breaks RFC 6455 5.1 on purpose."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int, path: str, rcvbuf: int | None = None,
                      headers: dict[str, str] | None = None) -> "RawWebSocket":
        """Connect and upgrade; raises AssertionError unless the answer is 101."""
        client = await cls.open(port, rcvbuf)
        status, _ = await client.handshake(path, headers)
        assert status == 101, f"upgrade refused: {status}"
        return client

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> "RawWebSocket":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def handshake(self, path: str, headers: dict[str, str] | None = None,
                        version: str = "13", then: bytes = b"") -> tuple[int, bytes]:
        """Send the upgrade request, and ``then`` in the same write (frames
        that arrive before the upgrade is answered); (status, response head)."""
        await self.send_upgrade_request(path, headers, version, then)
        return await self.read_head()

    async def send_upgrade_request(self, path: str, headers: dict[str, str] | None = None,
                                   version: str = "13", then: bytes = b"",
                                   key: str | None = None) -> None:
        """The upgrade request (with a random Sec-WebSocket-Key unless given), and ``then``."""
        key = key or base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.loop.sock_sendall(self.sock, ("\r\n".join(lines) + "\r\n\r\n").encode() + then)

    async def read_head(self) -> tuple[int, bytes]:
        """(status, response head) of the answer to the upgrade request."""
        async with within(10, "the answer to the upgrade request"):
            while b"\r\n\r\n" not in self.buffer:
                chunk = await self.loop.sock_recv(self.sock, 4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return int(head.split(b" ", 2)[1]), head

    async def send_frame(self, payload: bytes, opcode: int = 0x1, fin: bool = True,
                         masked: bool = True) -> None:
        """One frame, final and masked unless asked otherwise (clients must mask)."""
        await self.send_bytes(client_frame(payload, opcode, fin, masked))

    async def send_bytes(self, data: bytes) -> None:
        """Bytes as they are (several frames in one write, say)."""
        await self.loop.sock_sendall(self.sock, data)

    async def send_text(self, text: str) -> None:
        await self.send_frame(text.encode(), 0x1)

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def read_frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (unmasked)."""
        async def read() -> tuple[int, bytes]:
            first, second = await self._read_exactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self._read_exactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self._read_exactly(8))[0]
            return first & 0x0F, await self._read_exactly(size)
        async with within(timeout, "the server's next frame"):
            return await read()

    async def send_until_stalled(self, data: bytes, quiet: float = 1.0) -> int:
        """Send what the server takes of ``data``; stop when all is sent or the
        socket took nothing for ``quiet`` seconds (the server stopped reading
        and the kernel buffers are full). The number of bytes sent."""
        sent, view = 0, memoryview(data)
        last_progress = self.loop.time()
        while sent < len(data):
            try:
                sent += self.sock.send(view[sent:sent + 65536])
                last_progress = self.loop.time()
            except BlockingIOError:
                if self.loop.time() - last_progress > quiet:
                    break
                await asyncio.sleep(0.01)
        return sent

    async def assert_silent(self, wait: float = 0.5) -> None:
        """Nothing arrives within ``wait`` seconds."""
        assert not self.buffer, f"expected silence, got {self.buffer[:80]!r}"
        try:
            frame = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected silence, got {frame[:80]!r}")

    def data_segments_in(self) -> int:
        """Segments with data this socket received so far (Linux TCP_INFO's
        tcpi_data_segs_in): how many writes the server's bytes came in."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("I", info, _TCPI_DATA_SEGS_IN)[0]

    def drop(self) -> None:
        """Close the TCP connection without a close frame."""
        self.sock.close()
