"""One connection speaking the Redis protocol (RESP2), just what pub/sub needs:
write commands without waiting (pipelining), read replies in order.

redis-py's clients retry, reconnect and re-subscribe behind the caller's
back; the broker must see an outage itself (to fall back to local delivery
and say so once), so its two pub/sub connections are these.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from .broker_url import BrokerUrl

CONNECT_TIMEOUT = 3.0  # seconds for TCP (and TLS) plus AUTH


class RespError(Exception):
    """An error reply (-ERR ...) from the server."""


def _command(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        value = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """rediss://: the system's CAs, or the URL's ``ssl_ca_certs`` file (a
    private CA); ``ssl_cert_reqs=none`` turns verification off. The same
    query keys redis-py reads for the registry's connection."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class RespConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self.last_read = 0.0  # loop time of the last reply its reader took (for keep_alive)

    @classmethod
    async def open(cls, url: BrokerUrl) -> RespConnection:
        """Connect and authenticate; raises OSError, RespError or TimeoutError."""
        options = parse_url(url.redis_py_url)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if options.get("connection_class") is UnixDomainSocketConnection:
                reader, writer = await asyncio.open_unix_connection(options["path"])
            else:
                tls = tls_context(options) if options.get("connection_class") is SSLConnection else None
                reader, writer = await asyncio.open_connection(options["host"], options.get("port", 6379),
                                                               ssl=tls)
                sock = writer.get_extra_info("socket")
                if sock is not None:  # replies are small and wanted now
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = cls(reader, writer)
            try:
                if options.get("password"):
                    user = options.get("username")
                    conn.write(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
                    await conn.read()
            except BaseException:
                conn.close()
                raise
        return conn

    @property
    def local_host(self) -> str | None:
        """This end's address (None over a unix socket)."""
        name = self.writer.get_extra_info("sockname")
        return name[0] if isinstance(name, tuple) else None

    def write(self, *commands: tuple[bytes | str | int, ...]) -> None:
        """Queue commands; everything written during one event-loop turn
        leaves in one socket write (a burst of publishes is one syscall, not
        one each), in the order written."""
        self._pending.extend(_command(args) for args in commands)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and not self.writer.is_closing():
            self.writer.write(b"".join(self._pending))
        self._pending.clear()

    async def read(self) -> Any:
        """The next reply: bytes, int, list, None; an error reply raises RespError;
        a closed connection raises ConnectionError."""
        line = await self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the broker closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = await self.reader.readexactly(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self.read() for _ in range(count)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        raise ConnectionError(f"unexpected reply {line[:40]!r}")

    def close(self) -> None:
        self.writer.close()


async def keep_alive(conn: RespConnection, period: float) -> None:
    """PING a connection every ``period``; its reader sets ``last_read`` at each
    reply. Raises ConnectionError after two silent periods: a broker that hangs
    without closing the socket."""
    loop = asyncio.get_running_loop()
    conn.last_read = loop.time()
    while True:
        await asyncio.sleep(period)
        if loop.time() - conn.last_read > 2 * period:
            raise ConnectionError("the broker stopped answering PING")
        conn.write(("PING",))
