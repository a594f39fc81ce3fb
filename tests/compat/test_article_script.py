"""The article's on_message, byte for byte, as a compatibility fixture.

What the unchanged code does with each message of the article's flow. The
article's code reads `channel` before it handles `auth`, so the article's
own auth frame (no channel) makes `mix.str_split(nil, "@")` return nil, err
and `table.getn(nil)` raise: the engine logs the error with file:line and
closes that connection with 1011, and serves everyone else. Sent with a
channel, auth works (silently: the article's auth branch sends no reply).
The script runs with its auth URL pointed at the test's auth API (free port).
"""
from __future__ import annotations

import hashlib
import logging
import os

import aiohttp
import pytest

from tests.conftest import under_ci
from tests.helpers import assert_silent, receive_json

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "article_on_message.lua")
SEED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "seed",
                    "message-center-article.txt")
# The fixture's sha256, recorded when it was checked against the article: a
# clean clone (no ../shared beside it) still proves the fixture unchanged.
FIXTURE_SHA256 = "f6fa8e4d214494f5b04bd062b6804bf0711717a00825710c9aa478fb0953c4d7"
EVENT = '{"event":"@user","data":{"uid":1001,"msg":"Hello,World!"}}'


def article_script() -> str:
    with open(FIXTURE, encoding="utf-8") as f:
        return f.read()


def test_fixture_is_the_recorded_text():
    with open(FIXTURE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == FIXTURE_SHA256
    assert article_script().startswith("function on_message(msg)")


def test_fixture_is_the_articles_code_byte_for_byte():
    if not os.path.exists(SEED):
        if under_ci():  # CI lays shared/ beside the clone
            pytest.fail(f"the article is missing: {os.path.normpath(SEED)}")
        pytest.skip("shared/seed is not beside this checkout (the recorded sha256 is still checked)")
    with open(SEED, encoding="utf-8") as f:
        assert article_script() in f.read()


@pytest.fixture
async def article(start_engine, auth_app):
    running = await start_engine(auth_app.serve(article_script()),
                                 options=[{"name": "path", "value": "/message-center"}])
    return running


async def auth_with_channel(running):
    ws = await running.connect()
    await ws.send_str('{"op":"auth","token":"***","channel":"@user"}')
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    # The article's auth branch replies nothing: the first reply is subscribe's.
    assert await receive_json(ws) == {"result": True}
    return ws


async def test_auth_without_channel_is_a_logged_lua_error_and_others_go_on(article, caplog):
    healthy = await auth_with_channel(article)
    ws = await article.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await ws.send_str('{"op":"auth","token":"***"}')
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    logged = caplog.text
    assert "getn" in logged and "table expected, got nil" in logged
    assert ".lua:" in logged and "stack traceback" in logged
    reply = await article.api("/v1/mesh/publish", {"c": "user:1001", "d": EVENT})
    assert reply["r"] == {"s": 1, "f": 0}
    assert (await healthy.receive(timeout=5)).data == EVENT


async def test_flow_succeeds_when_auth_carries_a_channel(article):
    ws = await auth_with_channel(article)
    reply = await article.api("/v1/mesh/publish", {"c": "user:1001", "d": EVENT})
    assert reply == {"E": None, "r": {"s": 1, "f": 0}}
    assert (await ws.receive(timeout=5)).data == EVENT
    await ws.send_str('{"op":"unsubscribe","channel":"@user"}')
    assert await receive_json(ws) == {"result": True}
    assert (await article.api("/v1/mesh/publish", {"c": "user:1001", "d": EVENT}))["r"]["s"] == 0
    await assert_silent(ws)


async def test_subscribe_before_auth(article):
    ws = await article.connect()
    await ws.send_str('{"op":"subscribe","channel":"@user"}')
    assert await receive_json(ws) == {"code": 1, "msg": "Not Auth"}


@pytest.mark.parametrize("frame", [
    b"\x00\x01binary",                        # not text: the global `conn` closes it
    "not json",                               # json_decode err -> logged, closed
    '{"op":"subscribe","channel":"user"}',    # no "@": invalid channel -> closed
])
async def test_rejected_frames_close_only_that_connection(article, frame):
    healthy = await auth_with_channel(article)
    ws = await article.connect()
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1000
    assert (await article.api("/v1/mesh/publish", {"c": "user:1001", "d": EVENT}))["r"]["s"] == 1
    assert (await healthy.receive(timeout=5)).data == EVENT
