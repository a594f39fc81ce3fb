"""Publish, send and conn.call across engine processes joined by a real
Valkey: every path in (HTTP API, /ws/v1, Lua, Python), exact counts, order."""
from __future__ import annotations

import asyncio
import base64

import aiohttp
import orjson

from connmix_py import Engine, parse_settings
from connmix_py.grid.keys import node_inbox
from connmix_py.ids import node_of
from tests.grid.conftest import ENTRY, api
from tests.helpers import assert_silent, receive_json


async def test_publish_from_any_node_reaches_every_node_with_exact_counts(grid, connect, session):
    a, b, c = await grid.start_node(), await grid.start_node(), await grid.start_node()
    assert len({a.node_id, b.node_id, c.node_id}) == 3
    on_a, on_b, on_b2 = await connect(a), await connect(b), await connect(b)
    for client in (on_a, on_b, on_b2):
        await client.subscribe("room")
        assert node_of(client.id) in (a.node_id, b.node_id)
    bystander = await connect(c)
    await grid.wait_subscribed("room", 2)  # c has no subscriber: the broker does not send it room
    assert await api(session, c, "/v1/mesh/publish", {"c": "room", "d": "http"}) == {"E": None,
                                                                                    "r": {"s": 3, "f": 0}}
    assert await bystander.ask("publish", channel="room", data="lua") == {"s": 3, "f": 0}
    api_ws = await session.ws_connect(b.api_url + "/ws/v1")
    await api_ws.send_str(orjson.dumps({"m": "mesh.publish", "i": 7, "p": {"c": "room", "d": "ws"}}).decode())
    assert await receive_json(api_ws) == {"E": None, "r": {"s": 3, "f": 0}, "i": 7}
    for client in (on_a, on_b, on_b2):
        assert [await client.text() for _ in range(3)] == ["http", "lua", "ws"]
    await assert_silent(bystander.ws)


async def test_python_engine_publish_counts_the_grid(grid, connect, tmp_path):
    """An embedded Engine with engine.broker is a node like the processes."""
    process = await grid.start_node()
    remote = await connect(process)
    await remote.subscribe("news")
    await grid.wait_subscribed("news", 1)
    conf = {"engine": {"broker": grid.broker.url, "apiServer": {"port": 0, "bind": "127.0.0.1"},
                       "servers": [{"port": 0, "bind": "127.0.0.1", "entry": ENTRY}]}}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    try:
        assert engine.ids.node_id not in (0, process.node_id)
        assert await engine.publish("news", "from python") == (1, 0)
        assert await remote.text() == "from python"
        assert await engine.send(remote.id, "to you") is True
        assert await remote.text() == "to you"
    finally:
        await engine.stop()
    assert engine.ids.node_id not in {record["id"] for record in await grid.records()}


async def test_send_and_conn_call_reach_a_client_on_another_node(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    target, sender = await connect(b), await connect(a)
    assert await api(session, a, "/v1/mesh/send", {"c": target.id, "d": "over http"}) == {"E": None,
                                                                                        "r": {"s": True}}
    assert await target.text() == "over http"
    assert await sender.ask("send", to=target.id, data="over lua") == {"sent": True}
    assert await target.text() == "over lua"
    # conn.call subscribe on another node: the next publish from a reaches it
    reply = await api(session, a, "/v1/conn/call", {"c": target.id, "f": "subscribe", "a": ["called"]})
    assert reply == {"E": None, "r": {"s": True}}
    await grid.wait_subscribed("called", 1)
    assert await api(session, a, "/v1/mesh/publish", {"c": "called", "d": "hello"}) == {"E": None,
                                                                                     "r": {"s": 1, "f": 0}}
    assert await target.text() == "hello"
    # set_context_value from node a wakes wait_context_value on node b
    await target.ws.send_str('{"op":"wait","key":"uid"}')
    await asyncio.sleep(0.2)  # let the wait begin (a value set before it would answer at once too)
    reply = await api(session, a, "/v1/conn/call", {"c": target.id, "f": "set_context_value", "a": ["uid", "1001"]})
    assert reply == {"E": None, "r": {"s": True}}
    assert await receive_json(target.ws) == {"waited": "1001"}
    reply = await api(session, a, "/v1/conn/call", {"c": target.id, "f": "unsubscribe", "a": ["called"]})
    assert reply == {"E": None, "r": {"s": True}}
    await grid.wait_subscribed("called", 0)


async def test_unknown_and_gone_clients_get_the_one_node_codes(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    on_b = await connect(b)
    gone_id = on_b.id
    await on_b.ws.close()
    # b is up but the client is gone: b answers "no"
    assert (await api(session, a, "/v1/mesh/send", {"c": gone_id, "d": "x"}))["E"]["c"] == 401
    assert (await api(session, a, "/v1/conn/call", {"c": gone_id, "f": "subscribe", "a": ["x"]}))["E"]["c"] == 301
    # b is gone altogether: PUBLISH to its inbox reaches no one, the answer comes at once
    on_b = await connect(b)
    await b.kill()
    await grid.wait_topic(node_inbox(b.node_id), 0)  # the broker saw b's connections close
    assert (await api(session, a, "/v1/mesh/send", {"c": on_b.id, "d": "x"}))["E"]["c"] == 401
    assert (await api(session, a, "/v1/conn/call", {"c": on_b.id, "f": "set_context", "a": [{}]}))["E"]["c"] == 301
    assert "did not answer" not in a.log_text()  # a did not wait for a reply timeout


async def test_publishes_of_one_publisher_arrive_in_order_on_every_node(grid, connect):
    a, b, c = await grid.start_node(), await grid.start_node(), await grid.start_node()
    receivers = [await connect(node) for node in (a, b, c)]
    for client in receivers:
        await client.subscribe("seq")
    await grid.wait_subscribed("seq", 3)
    publisher = await connect(b)
    assert await publisher.ask("publish", timeout=60, channel="seq", n=1000) == {"s": 3000, "f": 0}
    for client in receivers:
        assert [await client.text() for _ in range(1000)] == [str(i) for i in range(1, 1001)]


async def test_clients_subscribing_at_once_share_subscribe_commands(grid, connect):
    """Each client's subscribe is its own callback; those arriving together go
    to the broker in shared SUBSCRIBE commands."""
    node = await grid.start_node()
    clients = await asyncio.gather(*(connect(node) for _ in range(200)))
    redis = grid.broker.client()
    try:
        await redis.config_resetstat()
        await asyncio.gather(*(client.ws.send_str(orjson.dumps({"op": "subscribe", "channels": [f"c{i}"]}).decode())
                               for i, client in enumerate(clients)))
        for client in clients:
            assert await receive_json(client.ws) == {"subscribed": True}
        await grid.wait_subscribed("c199", 1)
        await grid.wait_subscribed("c0", 1)
        calls = (await redis.info("commandstats"))["cmdstat_subscribe"]["calls"]
        print(f"200 clients subscribing at once: {calls} SUBSCRIBE commands")
        assert calls < 100
    finally:
        await redis.aclose()


async def test_a_burst_of_subscriptions_is_a_few_subscribe_commands(grid, connect):
    node = await grid.start_node()
    client = await connect(node)
    redis = grid.broker.client()
    try:
        await redis.config_resetstat()
        channels = [f"user:{i}" for i in range(10000)]
        await client.subscribe(*channels)
        await grid.wait_subscribed("user:9999", 1)
        stats = await redis.info("commandstats")
        assert stats["cmdstat_subscribe"]["calls"] <= 3, stats["cmdstat_subscribe"]
        assert (await redis.pubsub_numsub(*[f"connmix:c:{c}" for c in channels[::997]])) == [
            (f"connmix:c:{c}".encode(), 1) for c in channels[::997]]
    finally:
        await redis.aclose()
    await client.ws.close()
    await grid.wait_subscribed("user:0", 0)  # the last subscriber left: the node unsubscribed


async def test_binary_payloads_cross_the_grid_byte_for_byte(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    on_b = await connect(b)
    await on_b.subscribe("bin")
    await grid.wait_subscribed("bin", 1)
    payload = bytes(range(256)) * 4
    encoded = base64.b64encode(payload).decode()
    assert await api(session, a, "/v1/mesh/publish", {"c": "bin", "d": encoded, "t": "binary"}) == {
        "E": None, "r": {"s": 1, "f": 0}}
    assert await api(session, a, "/v1/mesh/send", {"c": on_b.id, "d": encoded, "t": "binary"}) == {
        "E": None, "r": {"s": True}}
    for _ in range(2):
        msg = await on_b.ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, payload)
