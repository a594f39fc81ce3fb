"""Shared fixtures: real engines on real ports, real websocket/HTTP clients."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import textwrap
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connmix_py import Engine, parse_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(ROOT, "examples", "message-center")


def load_example_module(name: str, folder: str = EXAMPLE_DIR):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def under_ci() -> bool:
    """CI runs with CI=true (any value but empty, 0 or false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def reference_command(command: str, package: str) -> str:
    """The path of a reference implementation the conformance tests compare
    with. Without it the calling test module is skipped on a developer's
    machine, and fails under CI, which must run every comparison."""
    found = shutil.which(command)
    if found is None:
        why = f"{command} is not installed (apt-get install {package})"
        if under_ci():
            pytest.fail(f"{why}: under CI this is a failure, not a skip", pytrace=False)
        pytest.skip(why, allow_module_level=True)
    return found


def engine_config(entry: str, luavm: dict | None = None, **server: Any) -> dict:
    """A one-server configuration on free ports (port 0)."""
    conf = {"port": 0, "bind": "127.0.0.1", "protocol": "websocket",
            "options": [{"name": "path", "value": "/ws"}], "entry": entry}
    conf.update(server)
    engine = {"apiServer": {"port": 0, "bind": "127.0.0.1"}, "servers": [conf]}
    if luavm is not None:
        engine["luavm"] = luavm
    return {"engine": engine}


class Running:
    """An engine started from a script; helpers to talk to it."""

    def __init__(self, engine: Engine, session: aiohttp.ClientSession, path: str) -> None:
        self.engine = engine
        self.session = session
        self.path = path

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.engine.server_port()}{self.path}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.engine.api_port}"

    async def connect(self, **kwargs) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.ws_url, **kwargs)

    async def api(self, path: str, body: Any) -> dict:
        data = body if isinstance(body, (str, bytes)) else None
        async with self.session.post(self.api_url + path, data=data,
                                     json=None if data is not None else body) as resp:
            return await resp.json()


@pytest.fixture(scope="session")
def redis_server():
    """A real Redis-protocol server on a free port, for the whole run."""
    from tests.redis_server import RedisServer
    server = RedisServer()
    yield server
    server.stop()


class TrackedClientWebSocket(aiohttp.ClientWebSocketResponse):
    """A client websocket the ``session`` fixture can close before the engine stops."""

    opened: list[aiohttp.ClientWebSocketResponse] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened.append(self)


async def close_clients(clients: list[aiohttp.ClientWebSocketResponse]) -> None:
    """Close the test's websocket clients still open, as a real client answers
    a close: a client the test stopped reading would otherwise hold the
    engine's stop for engine.shutdownGrace, waiting for its answer to 1001."""
    for ws in clients:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
    clients.clear()


async def stop_engine(engine: Engine, session: aiohttp.ClientSession) -> None:
    """A fixture's teardown: the session's clients close first, then the engine stops."""
    await close_clients(session.test_clients)  # type: ignore[attr-defined]
    await engine.stop()


@pytest.fixture
async def session():
    clients: list[aiohttp.ClientWebSocketResponse] = []
    tracked = type("Tracked", (TrackedClientWebSocket,), {"opened": clients})
    async with aiohttp.ClientSession(ws_response_class=tracked) as s:
        s.test_clients = clients  # type: ignore[attr-defined]
        yield s


@pytest.fixture
async def start_engine(tmp_path, session):
    """start_engine(lua_source, luavm=None, **server_settings) -> Running."""
    engines: list[Engine] = []

    async def start(script: str, luavm: dict | None = None, **server: Any) -> Running:
        entry = tmp_path / f"entry{len(engines)}.lua"
        entry.write_text(textwrap.dedent(script))
        conf = engine_config(str(entry), luavm, **server)
        engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
        await engine.start()
        engines.append(engine)
        return Running(engine, session, conf["engine"]["servers"][0]["options"][0]["value"])

    yield start
    for engine in engines:
        await stop_engine(engine, session)


# Where the article's Lua (and the example's) calls the auth API.
ARTICLE_AUTH_API = "http://127.0.0.1:8000"


class AuthApi:
    """The example's auth API, running on a free port; ``config`` changes its
    behaviour live (``config["engine_api"]``: where /send_message publishes)."""

    def __init__(self, module) -> None:
        self.app = module.make_app()
        self.config = self.app[module.CONFIG]
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    def serve(self, script: str) -> str:
        """The article's script calling this app instead of 127.0.0.1:8000."""
        assert script.count(ARTICLE_AUTH_API) == 1, "the script no longer names the article's auth API"
        return script.replace(ARTICLE_AUTH_API, self.url)


@pytest.fixture
async def auth_app():
    """The example's auth API; scripts reach it through ``auth_app.serve(script)``."""
    api = AuthApi(load_example_module("auth_app"))
    await api.start()
    yield api
    await api.stop()
