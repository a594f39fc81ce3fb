"""A raw TCP client for socket servers: asyncio streams and the two framings
of lua/protocols (newline and 4-byte big-endian length prefix)."""
from __future__ import annotations

import asyncio
import struct

import pytest

from tests.waiting import within

TIMEOUT = 5


class TcpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> "TcpClient":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_line(self, text: str) -> None:
        await self.send(text.encode() + b"\n")

    async def send_packet(self, body: bytes) -> None:
        await self.send(packet(body))

    async def recv_exactly(self, n: int) -> bytes:
        async with within(TIMEOUT, f"{n} bytes from the server"):
            return await self.reader.readexactly(n)

    async def recv_line(self) -> str:
        async with within(TIMEOUT, "a line from the server"):
            line = await self.reader.readuntil(b"\n")
        return line[:-1].decode()

    async def recv_packet(self) -> bytes:
        (size,) = struct.unpack("!I", await self.recv_exactly(4))
        return await self.recv_exactly(size)

    async def assert_closed(self) -> None:
        """The server closes the connection (after anything still unread)."""
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        assert self.reader.at_eof(), rest

    async def assert_silent(self, wait: float = 0.3) -> None:
        with pytest.raises(asyncio.TimeoutError):
            data = await asyncio.wait_for(self.reader.read(1), wait)
            pytest.fail(f"unexpected bytes {data!r}")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def packet(body: bytes) -> bytes:
    """A length-prefixed packet: PHP's pack("N", len) . body."""
    return struct.pack("!I", len(body)) + body
