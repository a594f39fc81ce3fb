"""The article's test flow against examples/message-center, automated.

Ports are the article's own: the engine on 6790 (websocket) and 6789 (API),
the auth API on 8000.
"""
from __future__ import annotations

import asyncio
import os

import pytest

from connmix_py import Engine
from tests.conftest import EXAMPLE_DIR
from tests.helpers import assert_silent, receive_json

WS_URL = "http://127.0.0.1:6790/message-center"
PUBLISH_URL = "http://127.0.0.1:6789/v1/mesh/publish"
# The body of the article's curl, byte for byte.
ARTICLE_CURL_BODY = '''{
    "c": "user:1001",
    "d": "{\\"event\\":\\"@user\\",\\"data\\":{\\"uid\\":1001,\\"msg\\":\\"Hello,World!\\"}}"
}'''
EVENT = {"event": "@user", "data": {"uid": 1001, "msg": "Hello,World!"}}


@pytest.fixture
async def message_center(auth_app):
    engine = Engine(os.path.join(EXAMPLE_DIR, "connmix.yaml"))
    await engine.start()
    yield engine
    await engine.stop()


async def login(session, token="***"):
    ws = await session.ws_connect(WS_URL)
    await ws.send_str('{"op":"auth","token":"%s"}' % token)
    assert await receive_json(ws) == {"result": True}
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    return ws


async def publish_like_the_article(session) -> dict:
    async with session.post(PUBLISH_URL, data=ARTICLE_CURL_BODY,
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_article_flow(message_center, session):
    ws = await session.ws_connect(WS_URL)
    await ws.send_str('{"op":"auth","token":"***"}')
    assert await receive_json(ws) == {"result": True}
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    reply = await publish_like_the_article(session)
    assert reply == {"E": None, "r": {"s": 1, "f": 0}}
    msg = await ws.receive(timeout=5)
    assert msg.data == '{"event":"@user","data":{"uid":1001,"msg":"Hello,World!"}}'
    await ws.close()


async def test_every_device_of_the_user_gets_it_and_no_one_else(message_center, session):
    phone = await login(session)
    laptop = await login(session, "token-1001")
    other = await login(session, "token-1002")
    reply = await publish_like_the_article(session)
    assert reply["r"] == {"s": 2, "f": 0}
    assert await receive_json(phone) == EVENT
    assert await receive_json(laptop) == EVENT
    await assert_silent(other)


async def test_unsubscribe_stops_delivery(message_center, session):
    ws = await login(session)
    await ws.send_str('{"op":"unsubscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    reply = await publish_like_the_article(session)
    assert reply["r"] == {"s": 0, "f": 0}
    await assert_silent(ws)


async def test_subscribe_before_auth_is_refused(message_center, session):
    ws = await session.ws_connect(WS_URL)
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"code": 1, "msg": "Not Auth"}
    assert (await publish_like_the_article(session))["r"]["s"] == 0


async def test_unknown_token_closes_the_connection(message_center, session):
    ws = await session.ws_connect(WS_URL)
    await ws.send_str('{"op":"auth","token":"nobody"}')
    msg = await ws.receive(timeout=5)
    assert msg.type.name in ("CLOSE", "CLOSED")


async def test_send_message_endpoint_of_the_auth_app(message_center, session):
    ws = await login(session)
    async with session.post("http://127.0.0.1:8000/send_message",
                            json={"uid": 1001, "msg": "Hello,World!"}) as resp:
        assert (await resp.json())["r"] == {"s": 1, "f": 0}
    assert await receive_json(ws) == EVENT


async def test_auth_then_subscribe_without_waiting_keeps_order(message_center, auth_app, session):
    """auth and subscribe back to back while the auth API takes 300 ms:
    subscribe sees the uid; another connection is answered meanwhile."""
    auth_app.config["auth_delay"] = 0.3
    slow = await session.ws_connect(WS_URL)
    other = await session.ws_connect(WS_URL)
    await slow.send_str('{"op":"auth","token":"***"}')
    await slow.send_str('{"op":"subscribe","channel":"@user"}')
    await asyncio.sleep(0.05)  # the auth request is now in flight
    await other.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(other, timeout=0.25) == {"code": 1, "msg": "Not Auth"}
    assert await receive_json(slow) == {"result": True}   # auth
    assert await receive_json(slow) == {"result": True}   # subscribe, with the uid
    assert (await publish_like_the_article(session))["r"]["s"] == 1
    assert await receive_json(slow) == EVENT


async def test_auth_api_down_is_an_error_value(auth_app, session):
    """With the auth API unreachable, http.request returns nil, err: the
    script closes that connection; the engine keeps serving."""
    engine = Engine(os.path.join(EXAMPLE_DIR, "connmix.yaml"))
    await engine.start()
    try:
        ws = await login(session)
        await auth_app.stop()
        broken = await session.ws_connect(WS_URL)
        await broken.send_str('{"op":"auth","token":"***"}')
        msg = await broken.receive(timeout=5)
        assert msg.type.name in ("CLOSE", "CLOSED")
        assert (await publish_like_the_article(session))["r"]["s"] == 1
        assert await receive_json(ws) == EVENT
    finally:
        await engine.stop()
