"""A held backend: a local HTTP server whose answers the test releases.

``GET /hold/<name>`` answers ``<name>`` only once the test calls
``release(name)``; ``arrived(name)`` waits until that request is in. Tests
use it to put a callback in a wait it cannot leave by itself, then prove by
the order of events (not by elapsed time) what the engine does meanwhile.
"""
from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict

import pytest
from aiohttp import web

from tests.waiting import within

# A hang guard: how long a test waits for an event that must happen.
GUARD = 10


class HeldBackend:
    def __init__(self) -> None:
        self._arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._released: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hold/{name}"

    async def arrived(self, name: str) -> None:
        async with within(GUARD, f"the held backend to get request {name!r}"):
            await self._arrived[name].wait()

    def release(self, name: str) -> None:
        self._released[name].set()

    async def _hold(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._arrived[name].set()
        await self._released[name].wait()
        return web.Response(text=name)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/hold/{name}", self._hold)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for event in self._released.values():
            event.set()
        await self.runner.cleanup()


@pytest.fixture(name="held")
async def held_fixture():
    """A started HeldBackend as ``held`` (import held_fixture into a test module)."""
    backend = HeldBackend()
    await backend.start()
    yield backend
    await backend.stop()


async def eventually(check, what: str, guard: float = GUARD) -> None:
    """Poll ``check()`` (plain or async) until true; fail naming ``what``
    after the hang guard."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)
