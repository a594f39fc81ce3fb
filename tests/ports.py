"""Ports for tests without a pick-a-free-port-then-bind race.

A reserved port is bound on 127.0.0.1 (SO_REUSEADDR) and never listens.
While it is held the kernel gives that port to no one else (neither bind to
port 0 nor an outgoing connection picks it) and a connection to it is
refused; a server the test starts can still listen on it, because valkey,
aiohttp and asyncio servers set SO_REUSEADDR too. So an engine can stop and
start again on the same port, and a server can be told its port up front.
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def reserve_port() -> socket.socket:
    """The reserving socket; its port is held until it is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A port on 127.0.0.1 held for the block (see the module's docstring)."""
    with reserve_port() as sock:
        yield sock.getsockname()[1]
