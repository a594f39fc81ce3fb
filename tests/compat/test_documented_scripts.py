"""Our own scripts written the way CONNMIX's documentation writes them, each
run through real websocket clients."""
from __future__ import annotations

import os
import shutil

import pytest
from aiohttp import web

from tests.conftest import ROOT
from tests.helpers import assert_silent, receive_json

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def script(name: str) -> str:
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as f:
        return f.read()


@pytest.fixture
def lua_libs(tmp_path):
    """The modules the scripts require, beside the entry as in a CONNMIX install."""
    shutil.copytree(os.path.join(ROOT, "lua", "utils"), tmp_path / "utils")
    shutil.copytree(os.path.join(SCRIPTS, "protocols"), tmp_path / "protocols")


async def test_chat_room_join_send_quit(start_engine):
    running = await start_engine(script("chat_room.lua"))
    ann = await running.connect()
    bob = await running.connect()
    eve = await running.connect()
    await ann.send_json({"op": "join", "room": "r1", "name": "ann"})
    assert await receive_json(ann) == {"event": "join", "name": "ann"}
    assert await receive_json(ann) == {"result": True, "members": 1}
    await bob.send_json({"op": "join", "room": "r1", "name": "bob"})
    assert await receive_json(ann) == {"event": "join", "name": "bob"}
    assert await receive_json(bob) == {"event": "join", "name": "bob"}
    assert await receive_json(bob) == {"result": True, "members": 2}
    await eve.send_json({"op": "join", "room": "r2", "name": "eve"})
    await receive_json(eve), await receive_json(eve)

    await bob.send_json({"op": "send", "text": "hi all"})
    said = {"event": "message", "name": "bob", "text": "hi all"}
    assert await receive_json(ann) == said
    assert await receive_json(bob) == said
    await assert_silent(eve)

    await bob.send_json({"op": "quit"})
    assert await receive_json(ann) == {"event": "quit", "name": "bob"}
    assert await receive_json(bob) == {"result": True}
    await bob.send_json({"op": "send", "text": "still here?"})
    assert await receive_json(bob) == {"code": 1, "msg": "join first"}
    await assert_silent(ann)


async def test_market_data_private_channels(start_engine):
    running = await start_engine(script("market_data.lua"))
    alice = await running.connect()
    await alice.send_json({"op": "sub", "kinds": ["balance"]})
    assert await receive_json(alice) == {"code": 1, "msg": "Not Auth"}
    await alice.send_json({"op": "login", "uid": 1001})
    assert await receive_json(alice) == {"result": True}
    await alice.send_json({"op": "sub", "kinds": ["balance", "order"]})
    assert await receive_json(alice) == {"result": True, "channels": ["1001@balance", "1001@order"]}
    await alice.send_json({"op": "ticker", "symbols": ["BTC", "ETH"]})
    assert await receive_json(alice) == {"result": True}

    for channel, payload in (("1001@balance", '{"usdt":5}'), ("ticker:BTC", '{"p":1}'), ("1002@balance", "x")):
        expected = 0 if channel.startswith("1002") else 1
        assert (await running.api("/v1/mesh/publish", {"c": channel, "d": payload}))["r"]["s"] == expected
    assert (await alice.receive(timeout=5)).data == '{"usdt":5}'
    assert (await alice.receive(timeout=5)).data == '{"p":1}'
    await assert_silent(alice)

    await alice.send_json({"op": "unsub", "kind": "balance"})
    assert await receive_json(alice) == {"result": True}
    assert (await running.api("/v1/mesh/publish", {"c": "1001@balance", "d": "x"}))["r"]["s"] == 0
    stats = (await (await running.session.get(running.api_url + "/v1/stats")).json())["r"]
    assert stats == {"connections": 1, "channels": 3, "subscriptions": 3}


async def test_lua51_idioms_bit_getn_unpack_and_require(start_engine, lua_libs):
    running = await start_engine(script("lua51_idioms.lua"))
    ws = await running.connect()
    await ws.send_json({"op": "bits", "flags": 0xAB})
    assert await receive_json(ws) == {"band": 0x0B, "bor": 0x1AB, "bxor": 0x54, "lshift": 1024,
                                      "rshift": 0x0A, "tohex": "00ab"}
    await ws.send_json({"op": "tables", "list": ["a", "b", "c"]})
    assert await receive_json(ws) == {"n": 4, "first": "a", "second": "b", "third": "c",
                                      "joined": "a,b,c,tail", "pretty": "{ x = 1, y = { 2, 3 } }",
                                      "framed": "<hi>"}
    await ws.send_json({"op": "pcall-error"})
    assert await receive_json(ws) == {"ok": False, "code": 7, "ok2": False, "err2": "plain"}


async def test_pcall_around_waiting_calls(start_engine, lua_libs, session):
    async def hello(request):
        return web.Response(text="hello")
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        running = await start_engine(script("lua51_idioms.lua"))
        ws = await running.connect()
        await ws.send_json({"op": "pcall-http", "url": f"http://127.0.0.1:{port}/"})
        assert await receive_json(ws) == {"ok": True, "status": 200, "err": False}
        await ws.send_json({"op": "pcall-http", "url": "http://127.0.0.1:1/"})
        refused = await receive_json(ws)
        assert refused["ok"] is True and refused["status"] is False and "127.0.0.1:1" in refused["err"]
        await ws.send_json({"op": "wait"})
        assert await receive_json(ws) == {"ok": True, "v": "nil"}
    finally:
        await runner.cleanup()
