"""The requests CONNMIX's PHP client (connmix/connmix-php) makes, byte for
byte: discovery GETs, queue.pop with the topics as the params array, client
ids as JSON integers (19-digit snowflakes below 2^63) in every ``c``."""
from __future__ import annotations

import base64
import textwrap

import orjson
import pytest

from connmix_py import Engine, parse_settings
from tests.api_helpers import SCRIPT, api_ws, call, client_id, error_code, push
from tests.conftest import engine_config
from tests.helpers import receive_json


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT)


async def get_json(running, path: str, headers: dict | None = None) -> tuple[int, object]:
    async with running.session.get(running.api_url + path, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_version_and_nodes_as_the_php_client_reads_them(running):
    assert await get_json(running, "/version") == (200, {"apis": ["v1"]})
    status, body = await get_json(running, "/v1/nodes")
    address = f"127.0.0.1:{running.engine.api_port}"
    assert status == 200 and body == {"nodes": [{"api_server": address, "host": address}]}


async def start_on(tmp_path, session, bind: str, users: list | None = None) -> Engine:
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT))
    conf = engine_config(str(entry))
    conf["engine"]["apiServer"]["bind"] = bind
    if users:
        conf["access"] = {"users": users}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    return engine


async def test_a_node_bound_to_every_address_lists_the_address_it_was_asked_on(tmp_path, session):
    engine = await start_on(tmp_path, session, "0.0.0.0")
    try:
        async with session.get(f"http://127.0.0.1:{engine.api_port}/v1/nodes") as resp:
            node = (await resp.json())["nodes"][0]
        assert node["api_server"] == node["host"] == f"127.0.0.1:{engine.api_port}"
    finally:
        await engine.stop()


async def test_discovery_needs_the_read_role_when_users_are_configured(tmp_path, session):
    users = [{"username": "reader", "password": "pw-reader", "roles": ["read"]}]
    engine = await start_on(tmp_path, session, "127.0.0.1", users)
    reader = {"Authorization": "Basic " + base64.b64encode(b"reader:pw-reader").decode()}
    try:
        for path in ("/version", "/v1/nodes"):
            async with session.get(f"http://127.0.0.1:{engine.api_port}{path}") as resp:
                assert resp.status == 401
            async with session.get(f"http://127.0.0.1:{engine.api_port}{path}", headers=reader) as resp:
                assert resp.status == 200
    finally:
        await engine.stop()


async def test_queue_pop_with_the_topics_as_params(running):
    api = await api_ws(running)
    await api.send_str('{"m":"queue.pop","p":["chat","conn"],"i":0}')  # AsyncNode::pop('chat', 'conn')
    assert await receive_json(api) == {"E": None, "r": {"s": True}, "i": 0}
    ws = await running.connect()
    await push(ws, "conn", {"event": "close"})
    event = await receive_json(api)
    assert event["e"] == "queue.pop" and event["p"]["t"] == "conn" and event["p"]["d"] == {"event": "close"}
    await api.send_str('{"m":"queue.pop","p":["chat"],"i":1}')
    assert error_code(await receive_json(api)) == 202  # already consumed, as with {"t": [...]}


async def test_client_ids_as_json_integers_in_every_c(running):
    ws = await running.connect()
    cid = await client_id(ws)
    assert int(cid) > 2 ** 53  # beyond what a float holds exactly
    api = await api_ws(running)
    # SyncNode::setContextValue, SyncNode::subscribe, AsyncNode::meshSend, as PHP's json_encode writes them.
    await api.send_str('{"m":"conn.call","p":{"c":%s,"f":"set_context_value","a":["uid",1001]},"i":3}' % cid)
    assert await receive_json(api) == {"E": None, "r": {"s": True}, "i": 3}
    await api.send_str('{"m":"conn.call","p":{"c":%s,"f":"subscribe","a":["room:1"]},"i":4}' % cid)
    assert (await receive_json(api))["r"] == {"s": True}
    await api.send_str('{"m":"mesh.send","p":{"c":%s,"d":"over ws"},"i":5}' % cid)
    assert (await receive_json(api))["r"] == {"s": True}
    assert await ws.receive_str(timeout=5) == "over ws"
    assert (await running.api("/v1/mesh/send", '{"c":%s,"d":"over http"}' % cid))["r"] == {"s": True}
    assert await ws.receive_str(timeout=5) == "over http"
    body = '{"c":%s,"f":"set_context_value","a":["role","admin"]}' % cid
    assert (await running.api("/v1/conn/call", body))["r"] == {"s": True}
    await ws.send_str(orjson.dumps({"op": "context"}).decode())
    assert (await receive_json(ws))["context"] == {"uid": 1001, "role": "admin"}


@pytest.mark.parametrize("c", ["%s.0", "%se0", "true", "-1", str(2 ** 63), "1e19"])
async def test_client_ids_that_are_no_exact_integer_are_refused(running, c):
    ws = await running.connect()
    cid = await client_id(ws)
    c = c % cid if "%s" in c else c
    reply = await running.api("/v1/mesh/send", '{"c":%s,"d":"x"}' % c)
    assert error_code(reply) == 101 and "c must be" in reply["E"]["m"]
    reply = await call(await api_ws(running), "conn.call", orjson.loads('{"c":%s,"f":"subscribe","a":["x"]}' % c))
    assert error_code(reply) == 101


async def test_an_unknown_integer_client_id_is_401_and_301(running):
    assert error_code(await running.api("/v1/mesh/send", '{"c":123,"d":"x"}')) == 401
    api = await api_ws(running)
    assert error_code(await call(api, "conn.call", {"c": 123, "f": "subscribe", "a": ["x"]})) == 301
