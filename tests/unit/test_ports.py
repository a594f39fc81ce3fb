"""A reserved port refuses connections, is given to no one else, and still
lets the test's own server listen on it (restarts on the same port)."""
from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from tests.ports import reserved_port


def test_a_reserved_port_refuses_connections_and_other_binds():
    with reserved_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE


async def test_our_server_listens_on_a_reserved_port_twice():
    with reserved_port() as port:
        for _ in range(2):  # a stop and a start again on the same port
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            assert server.sockets[0].getsockname()[1] == port
            server.close()
            await server.wait_closed()
