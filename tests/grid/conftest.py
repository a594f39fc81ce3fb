"""Fixtures of the grid tests: engine processes (tests/grid_nodes.py) on a
Valkey of their own, and websocket clients driving tests/grid/grid.entry.lua."""
from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson
import pytest

from tests.grid_nodes import Grid, Node
from tests.helpers import receive_json

ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grid.entry.lua")


@pytest.fixture
async def make_grid(tmp_path):
    """make_grid(entry, ws_path) -> Grid: a Valkey of its own and no nodes yet."""
    made: list[Grid] = []

    def make(entry: str = ENTRY, ws_path: str = "/ws") -> Grid:
        made.append(Grid(tmp_path / f"grid{len(made)}", entry, ws_path))
        return made[-1]
    yield make
    for grid in made:
        await grid.close()


@pytest.fixture
async def grid(make_grid):
    """A grid of grid.entry.lua nodes: ``await grid.start_node()``."""
    return make_grid()


class Client:
    """A websocket client of one node, driving grid.entry.lua."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = ""

    async def ask(self, op: str, timeout: float = 10, **fields: Any) -> Any:
        await self.ws.send_str(orjson.dumps({"op": op, **fields}).decode())
        return await receive_json(self.ws, timeout)

    async def subscribe(self, *channels: str) -> None:
        assert await self.ask("subscribe", channels=list(channels)) == {"subscribed": True}

    async def text(self, timeout: float = 10) -> str:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
        return msg.data


@pytest.fixture
async def session():
    """No cap on open connections (aiohttp's default of 100 would hold a burst's
    101st websocket back for ever)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


@pytest.fixture
async def connect(session):
    """connect(node) -> Client, its id known."""

    async def open_client(node: Node) -> Client:
        client = Client(await session.ws_connect(node.ws_url))
        client.id = (await client.ask("id"))["id"]
        return client
    return open_client


async def api(session: aiohttp.ClientSession, node: Node, path: str, body: Any) -> dict:
    async with session.post(node.api_url + path, json=body) as resp:
        return await resp.json()
