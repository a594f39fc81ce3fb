"""The article's test flow against examples/message-center, automated.

The example's connmix.yaml and entry script as shipped, on free ports instead
of the article's (6790 websocket, 6789 API, 8000 auth API): the engine's
ports are set to 0 and the script's auth URL points at the test's auth API.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest

from connmix_py import Engine, load_settings
from tests.conftest import EXAMPLE_DIR
from tests.helpers import assert_silent, receive_json

# The body of the article's curl, byte for byte.
ARTICLE_CURL_BODY = '''{
    "c": "user:1001",
    "d": "{\\"event\\":\\"@user\\",\\"data\\":{\\"uid\\":1001,\\"msg\\":\\"Hello,World!\\"}}"
}'''
EVENT = {"event": "@user", "data": {"uid": 1001, "msg": "Hello,World!"}}


@dataclass
class MessageCenter:
    engine: Engine
    ws_url: str
    publish_url: str


async def start_example(auth_app, tmp_path) -> MessageCenter:
    """The example's engine on free ports, its script calling auth_app."""
    settings = load_settings(os.path.join(EXAMPLE_DIR, "connmix.yaml"))
    settings.api_server.port = 0
    server = settings.servers[0]
    server.port = 0
    with open(server.entry, encoding="utf-8") as f:
        entry = tmp_path / os.path.basename(server.entry)
        entry.write_text(auth_app.serve(f.read()), encoding="utf-8")
    server.entry = str(entry)
    engine = Engine(settings)
    await engine.start()
    auth_app.config["engine_api"] = f"http://127.0.0.1:{engine.api_port}"
    return MessageCenter(engine, f"http://127.0.0.1:{engine.server_port()}{server.path}",
                         f"http://127.0.0.1:{engine.api_port}/v1/mesh/publish")


@pytest.fixture
async def message_center(auth_app, tmp_path):
    center = await start_example(auth_app, tmp_path)
    yield center
    await center.engine.stop()


async def login(session, center: MessageCenter, token="***"):
    ws = await session.ws_connect(center.ws_url)
    await ws.send_str('{"op":"auth","token":"%s"}' % token)
    assert await receive_json(ws) == {"result": True}
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    return ws


async def publish_like_the_article(session, center: MessageCenter) -> dict:
    async with session.post(center.publish_url, data=ARTICLE_CURL_BODY,
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_article_flow(message_center, session):
    ws = await session.ws_connect(message_center.ws_url)
    await ws.send_str('{"op":"auth","token":"***"}')
    assert await receive_json(ws) == {"result": True}
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    reply = await publish_like_the_article(session, message_center)
    assert reply == {"E": None, "r": {"s": 1, "f": 0}}
    msg = await ws.receive(timeout=5)
    assert msg.data == '{"event":"@user","data":{"uid":1001,"msg":"Hello,World!"}}'
    await ws.close()


async def test_every_device_of_the_user_gets_it_and_no_one_else(message_center, session):
    phone = await login(session, message_center)
    laptop = await login(session, message_center, "token-1001")
    other = await login(session, message_center, "token-1002")
    reply = await publish_like_the_article(session, message_center)
    assert reply["r"] == {"s": 2, "f": 0}
    assert await receive_json(phone) == EVENT
    assert await receive_json(laptop) == EVENT
    await assert_silent(other)


async def test_unsubscribe_stops_delivery(message_center, session):
    ws = await login(session, message_center)
    await ws.send_str('{"op":"unsubscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    reply = await publish_like_the_article(session, message_center)
    assert reply["r"] == {"s": 0, "f": 0}
    await assert_silent(ws)


async def test_subscribe_before_auth_is_refused(message_center, session):
    ws = await session.ws_connect(message_center.ws_url)
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"code": 1, "msg": "Not Auth"}
    assert (await publish_like_the_article(session, message_center))["r"]["s"] == 0


async def test_unknown_token_closes_the_connection(message_center, session):
    ws = await session.ws_connect(message_center.ws_url)
    await ws.send_str('{"op":"auth","token":"nobody"}')
    assert await receive_json(ws) == {"code": 2, "msg": "invalid token"}  # said before the close
    msg = await ws.receive(timeout=5)
    assert msg.type.name in ("CLOSE", "CLOSED")


async def test_send_message_endpoint_of_the_auth_app(message_center, auth_app, session):
    ws = await login(session, message_center)
    async with session.post(f"{auth_app.url}/send_message",
                            json={"uid": 1001, "msg": "Hello,World!"}) as resp:
        assert (await resp.json())["r"] == {"s": 1, "f": 0}
    assert await receive_json(ws) == EVENT


async def test_auth_then_subscribe_without_waiting_keeps_order(message_center, auth_app, session):
    """auth and subscribe back to back while the auth API takes 300 ms:
    subscribe sees the uid; another connection is answered meanwhile."""
    auth_app.config["auth_delay"] = 0.3
    slow = await session.ws_connect(message_center.ws_url)
    other = await session.ws_connect(message_center.ws_url)
    await slow.send_str('{"op":"auth","token":"***"}')
    await slow.send_str('{"op":"subscribe","channel":"@user"}')
    await asyncio.sleep(0.05)  # the auth request is now in flight
    await other.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(other, timeout=0.25) == {"code": 1, "msg": "Not Auth"}
    assert await receive_json(slow) == {"result": True}   # auth
    assert await receive_json(slow) == {"result": True}   # subscribe, with the uid
    assert (await publish_like_the_article(session, message_center))["r"]["s"] == 1
    assert await receive_json(slow) == EVENT


async def test_auth_api_down_is_an_error_value(message_center, auth_app, session):
    """With the auth API unreachable, http.request returns nil, err: the
    script says so and closes that connection; the engine keeps serving."""
    ws = await login(session, message_center)
    await auth_app.stop()
    broken = await session.ws_connect(message_center.ws_url)
    await broken.send_str('{"op":"auth","token":"***"}')
    assert await receive_json(broken) == {"code": 6, "msg": "auth service unavailable"}
    msg = await broken.receive(timeout=5)
    assert msg.type.name in ("CLOSE", "CLOSED")
    assert (await publish_like_the_article(session, message_center))["r"]["s"] == 1
    assert await receive_json(ws) == EVENT
