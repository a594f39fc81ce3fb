"""Big publishes (issue 8, finding 10): one frame bigger than maxSendQueue is
not slowness (readers that keep reading get it whole), a client that does
not read is still closed, and a payload over engine.maxOutboundMessageSize
is refused up front with a clear error while every client stays."""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from connmix_py import Engine, parse_settings
from connmix_py.config import ConfigError
from tests.conftest import Running, engine_config, stop_engine
from tests.helpers import assert_silent
from tests.integration.test_rfc6455 import SCRIPT, close_reason, watcher
from tests.integration.test_websocket_server import non_reading_subscriber
from tests.luahelp import EVAL_SCRIPT, ask

MB = 1024 * 1024
QUEUE = 4 * MB
BIG = b"x" * (10 * MB)


async def news_reader(running) -> aiohttp.ClientWebSocketResponse:
    ws = await running.connect(max_msg_size=0)
    await ws.send_str("news")
    await ws.receive(timeout=5)
    return ws


# -- a frame bigger than the send queue ------------------------------------------------


async def test_a_publish_bigger_than_the_send_queue_reaches_every_reader(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=QUEUE)
    events = await watcher(running)
    readers = [await news_reader(running) for _ in range(3)]
    received = [asyncio.create_task(reader.receive(timeout=30)) for reader in readers]
    assert await running.api("/v1/mesh/publish", {"c": "news", "d": BIG.decode()}) == \
        {"E": None, "r": {"s": 3, "f": 0}}
    for task in received:
        msg = await task
        assert msg.type is aiohttp.WSMsgType.TEXT and len(msg.data) == len(BIG) and msg.data == BIG.decode()
    await assert_silent(events)  # nobody was closed
    assert running.engine.stats()["connections"] == 4


async def test_a_client_that_never_reads_a_big_frame_is_closed_by_the_write_timeout(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=QUEUE, writeTimeout=1)
    events = await watcher(running)
    slow, slow_id = await non_reading_subscriber(running)
    assert await running.engine.publish("news", BIG) == (1, 0)  # queued: one frame is not slowness
    reason = await close_reason(events, slow_id)  # no progress: within about writeTimeout + 1 s
    assert reason == "slow client: a send stayed blocked over 1s"
    slow.drop()


async def test_only_one_big_frame_is_left_out_of_the_send_queue_bound(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=QUEUE, writeTimeout=30)
    events = await watcher(running)
    slow, slow_id = await non_reading_subscriber(running)
    assert await running.engine.publish("news", BIG) == (1, 0)
    results = [await running.engine.publish("news", b"y" * MB) for _ in range(5)]
    assert results[:3] == [(1, 0)] * 3 and results[-1] == (0, 1)  # 4 MB beyond the big frame: over
    assert (await close_reason(events, slow_id)).startswith(f"slow client: send queue over {QUEUE} bytes")
    slow.drop()


# -- the outbound limit -------------------------------------------------------------------


@pytest.fixture
async def limited(tmp_path, session):
    """An engine running EVAL_SCRIPT with engine.maxOutboundMessageSize 1000."""
    entry = tmp_path / "entry.lua"
    entry.write_text(EVAL_SCRIPT)
    conf = engine_config(str(entry))
    conf["engine"]["maxOutboundMessageSize"] = 1000
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    yield Running(engine, session, "/ws")
    await stop_engine(engine, session)


async def subscribed(running) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await running.connect()
    cid, = await ask(ws, 'conn:subscribe("news"); return conn:client_id()')
    return ws, cid


async def test_api_refuses_a_payload_over_the_outbound_limit_with_101(limited):
    reader, cid = await subscribed(limited)
    for path, target in (("/v1/mesh/publish", "news"), ("/v1/mesh/send", cid)):
        for params in ({"c": target, "d": "z" * 1001},
                       {"c": target, "d": base64.b64encode(b"z" * 1001).decode(), "t": "binary"}):
            reply = await limited.api(path, params)
            assert reply["E"]["c"] == 101
            assert "1001 bytes" in reply["E"]["m"] and "limit of 1000 bytes" in reply["E"]["m"]
            assert "engine.maxOutboundMessageSize" in reply["E"]["m"]
    await assert_silent(reader)
    assert await limited.api("/v1/mesh/publish", {"c": "news", "d": "z" * 1000}) == \
        {"E": None, "r": {"s": 1, "f": 0}}  # the limit itself is fine, and the reader is still there
    assert (await reader.receive(timeout=5)).data == "z" * 1000


async def test_lua_gets_nil_err_for_a_payload_over_the_outbound_limit(limited):
    reader, cid = await subscribed(limited)
    ws = await limited.connect()
    s, err = await ask(ws, 'return mix.mesh.publish("news", string.rep("z", 1001))')
    assert s == "<nil>" and "limit of 1000 bytes" in err
    err, = await ask(ws, 'return mix.mesh.send("%s", string.rep("z", 1001), "binary")' % cid)
    assert "limit of 1000 bytes" in err
    err, = await ask(ws, 'return conn:send(string.rep("z", 1001))')
    assert "limit of 1000 bytes" in err
    await assert_silent(reader)
    assert await ask(ws, 'return mix.mesh.publish("news", string.rep("z", 1000))') == [1, 0]


async def test_python_gets_value_error_for_a_payload_over_the_outbound_limit(limited):
    reader, cid = await subscribed(limited)
    with pytest.raises(ValueError, match="limit of 1000 bytes"):
        await limited.engine.publish("news", "z" * 1001)
    with pytest.raises(ValueError, match="limit of 1000 bytes"):
        await limited.engine.send(cid, b"z" * 1001, "binary")
    await assert_silent(reader)
    assert limited.engine.stats()["connections"] == 1


def test_the_outbound_limit_is_checked_when_loading():
    with pytest.raises(ConfigError, match="engine.maxOutboundMessageSize: expected a positive integer"):
        parse_settings({"engine": {"maxOutboundMessageSize": 0}})
    assert parse_settings({"engine": {}}).max_outbound_message_size == 16 * MB
