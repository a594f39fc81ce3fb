"""The connection object and mix.mesh / mix.server / mix.websocket, through
real websocket clients (SPEC section 4, "the connection object")."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import assert_silent
from tests.luahelp import EVAL_SCRIPT, NIL, ask
from tests.waiting import until


@pytest.fixture
async def engine(start_engine):
    return await start_engine(EVAL_SCRIPT, options=[{"name": "path", "value": "/ws"},
                                                    {"name": "room", "value": "lobby"},
                                                    {"name": "limit", "value": 5}])


async def client_id(ws) -> str:
    return (await ask(ws, "return conn:client_id()"))[0]


async def receive_frame(ws, kind: aiohttp.WSMsgType, timeout: float = 5):
    msg = await ws.receive(timeout=timeout)
    assert msg.type is kind, f"expected {kind.name}, got {msg!r}"
    return msg.data


# -- identity ------------------------------------------------------------------

async def test_client_id_is_a_string_of_digits_unique_per_connection(engine):
    first, second = await engine.connect(), await engine.connect()
    a, kind = await ask(first, "return conn:client_id(), type(conn:client_id())")
    b = await client_id(second)
    assert kind == "string" and a.isdigit() and b.isdigit() and a != b
    # concatenation keeps every digit (a number above 1e14 would not)
    assert await ask(first, 'return "user:" .. conn:client_id()') == [f"user:{a}"]


async def test_remote_addr_is_the_clients_ip_and_port(engine):
    ws = await engine.connect()
    host, port = ws.get_extra_info("sockname")[:2]
    assert await ask(ws, "return conn:remote_addr()") == [f"{host}:{port}"]


async def test_websocket_returns_the_current_connection(engine):
    ws = await engine.connect()
    assert await ask(ws, "local c = mix.websocket() return rawequal(c, conn), c:client_id() == conn:client_id()") \
        == [True, True]


# -- context ---------------------------------------------------------------------

# Each step runs on the same connection, in order: (snippet, expected results).
CONTEXT_STEPS = [
    ('return conn:context()', [{}]),
    ('return conn:context_value("uid")', [NIL]),
    ('return conn:set_context_value("uid", 1001)', [NIL]),
    ('return conn:context_value("uid"), conn:context()', [1001, {"uid": 1001}]),
    # context() and context_value() hand out copies
    ('local t = conn:context() t.uid = 7 t.other = 1 return conn:context()', [{"uid": 1001}]),
    ('conn:set_context_value("t", {a = {1}}) local v = conn:context_value("t") v.a[1] = 9 '
     'return conn:context_value("t")', [{"a": [1]}]),
    # set_context_value copies what it is given
    ('local t = {a = {1}} conn:set_context_value("t", t) t.a[1] = 2 return conn:context_value("t")',
     [{"a": [1]}]),
    ('return conn:set_context_value("t", nil), conn:context()', [NIL, {"uid": 1001}]),  # nil removes
    ('return conn:set_context_value(5, "five"), conn:context_value(5), conn:context_value("5")',
     [NIL, "five", "five"]),
    ('return conn:set_context_value("name", "h\\195\\169"), conn:context_value("name")', [NIL, "hé"]),
    # set_context replaces the whole context, and copies too
    ('local t = {a = "x", n = {k = true}} conn:set_context(t) t.a = "changed" return conn:context()',
     [{"a": "x", "n": {"k": True}}]),
    ('return conn:set_context({"p", "q"}), conn:context_value("1"), conn:context_value(2)', [NIL, "p", "q"]),
    ('return conn:set_context({}), conn:context()', [NIL, {}]),
    # bad arguments are err values, and change nothing
    ('conn:set_context({keep = 1}) return conn:set_context(nil) ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:set_context("str") ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:set_context({f = print}) ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:set_context_value("", 1) ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:set_context_value(nil, 1) ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:set_context_value("f", print) ~= nil, conn:context()', [True, {"keep": 1}]),
    ('return conn:context_value(nil), conn:context_value({})', [NIL, NIL]),
]


async def test_context_steps(engine):
    ws = await engine.connect()
    for snippet, expected in CONTEXT_STEPS:
        assert await ask(ws, snippet) == expected, snippet


async def test_context_belongs_to_one_connection(engine):
    first, second = await engine.connect(), await engine.connect()
    await ask(first, 'return conn:set_context_value("uid", 1)')
    assert await ask(second, 'return conn:context_value("uid"), conn:context()') == [NIL, {}]


async def test_set_context_err_is_a_string(engine):
    ws = await engine.connect()
    err, = await ask(ws, "return conn:set_context(nil)")
    assert err == "bad argument #1 to 'set_context' (table expected, got nil)"


# -- wait_context_value ------------------------------------------------------------

async def test_wait_context_value_returns_at_once_when_set(engine):
    ws = await engine.connect()
    assert await ask(ws, 'conn:set_context_value("k", "v") return conn:wait_context_value("k")') == ["v", NIL]


async def test_wait_context_value_timeout_returns_nil(engine):
    ws = await engine.connect()
    assert await ask(ws, 'return conn:wait_context_value("k", 0.2)') == [NIL, NIL]
    assert await ask(ws, 'return conn:wait_context_value("k", 0)') == [NIL, NIL]  # looks once, never waits


async def test_wait_context_value_bad_arguments(engine):
    ws = await engine.connect()
    for snippet in ('return conn:wait_context_value(nil)', 'return conn:wait_context_value("")',
                    'return conn:wait_context_value("k", "soon")', 'return conn:wait_context_value("k", -1)'):
        value, err = await ask(ws, snippet)
        assert value == NIL and err.startswith("bad argument"), snippet


async def test_a_closed_connection_does_not_wait(engine):
    ws = await engine.connect()
    cid = await client_id(ws)
    await ws.send_str('conn:close() waited = {conn:wait_context_value("k")}')
    await receive_frame(ws, aiohttp.WSMsgType.CLOSE)
    other = await engine.connect()
    assert await ask(other, "return #waited, waited[1]") == [0, NIL]
    assert await ask(other, f'return closed["{cid}"].count') == [1]


# -- subscribe / unsubscribe ----------------------------------------------------

SUBSCRIBE_STEPS = [
    ('return conn:subscribe("a", "b", "c"), mix.mesh.publish("b", "to b")', [NIL, 1, 0], ["to b"]),
    ('return conn:subscribe("a"), mix.mesh.publish("a", "once")', [NIL, 1, 0], ["once"]),  # twice = once
    ('return conn:unsubscribe("a", "c"), mix.mesh.publish("a", "x"), mix.mesh.publish("c", "x")',
     [NIL, 0, 0, 0], []),  # a call before the last gives one value
    ('return conn:unsubscribe("never-subscribed")', [NIL], []),
    ('return conn:subscribe(1001), mix.mesh.publish("1001", "num")', [NIL, 1, 0], ["num"]),
    ('return conn:subscribe("user:1001", "@user"), mix.mesh.publish("@user", "u")', [NIL, 1, 0], ["u"]),
]


async def test_subscribe_steps(engine):
    ws = await engine.connect()
    for snippet, expected, frames in SUBSCRIBE_STEPS:
        await ws.send_str(snippet)
        for text in frames:  # the published frame goes out before the reply
            assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == text, snippet
        assert json.loads(await receive_frame(ws, aiohttp.WSMsgType.TEXT)) == expected, snippet


@pytest.mark.parametrize("method", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize("channels", ['""', '"with space"', '{}', 'nil', 'true', '"ok", ""', '"ok", nil, "ok2"',
                                      ''])
async def test_bad_channels_are_an_err_and_change_nothing(engine, method, channels):
    ws = await engine.connect()
    await ask(ws, 'conn:subscribe("ok")')
    err, delivered, _ = await ask(ws, f'return conn:{method}({channels}), mix.mesh.publish("ok2", "x")')
    assert isinstance(err, str) and err != NIL
    assert delivered == 0
    # "ok" stays subscribed whichever call failed: every channel is checked first
    await ws.send_str('return mix.mesh.publish("ok", "still")')
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "still"
    assert json.loads(await receive_frame(ws, aiohttp.WSMsgType.TEXT)) == [1, 0]


# -- send and close ----------------------------------------------------------------

async def test_send_text_and_binary(engine):
    ws = await engine.connect()
    await ws.send_str('conn:send("hello") conn:send("\\0\\1\\255", "binary") conn:send("t", "text") '
                      'conn:send(42) return "done"')
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "hello"
    assert await receive_frame(ws, aiohttp.WSMsgType.BINARY) == b"\x00\x01\xff"
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "t"
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "42"
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == '["done"]'


async def test_binary_messages_reach_on_message_as_binary(engine):
    ws = await engine.connect()
    await ws.send_bytes(b"\x00raw\xff")
    assert await receive_frame(ws, aiohttp.WSMsgType.BINARY) == b"\x00raw\xff"


@pytest.mark.parametrize("args, words", [
    ('"x", "json"', "'text' or 'binary'"),
    ('"x", 1', "'text' or 'binary'"),
    ("nil", "string expected, got nil"),
    ("{}", "string expected, got table"),
])
async def test_send_bad_arguments_are_an_err(engine, args, words):
    ws = await engine.connect()
    err, = await ask(ws, f"return conn:send({args})")
    assert words in err
    assert await ask(ws, "return 'still served'") == ["still served"]


async def test_close_flushes_queued_frames_first_and_on_close_runs_once(engine):
    ws = await engine.connect()
    cid = await client_id(ws)
    await ws.send_str('conn:send("one") conn:send("two") conn:close() '
                      'after = {conn:send("three"), conn:close(), conn:subscribe("late")}')
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "one"
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == "two"
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1000
    other = await engine.connect()
    assert await ask(other, f'return closed["{cid}"].count, closed["{cid}"].err, after[1], after[3]') \
        == [1, NIL, "connection closed", "connection closed"]


async def test_client_close_runs_on_close_once_without_err(engine):
    ws = await engine.connect()
    cid = await client_id(ws)
    await ws.close()
    other = await engine.connect()
    for _ in range(50):  # on_close runs right after the socket closes
        result = await ask(other, f'local c = closed["{cid}"] return c and c.count, c and c.err')
        if result[0] != NIL:
            break
        await asyncio.sleep(0.05)
    assert result == [1, NIL]


# -- the global conn -------------------------------------------------------------------

@pytest.fixture
async def held_server():
    """An HTTP server whose /held answers only when the test releases it."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request):
        arrived.set()
        await release.wait()
        return web.Response(text="released")

    app = web.Application()
    app.router.add_get("/held", held)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/held", arrived, release
    release.set()
    await runner.cleanup()


async def test_conn_stays_the_waiting_callbacks_own_connection(engine, held_server):
    url, arrived, release = held_server
    waiting, other = await engine.connect(), await engine.connect()
    waiting_id, other_id = await client_id(waiting), await client_id(other)
    await waiting.send_str(f'local before = conn local resp = mix.http.request("GET", "{url}") '
                           'return resp.body, rawequal(conn, before), rawequal(conn, mix.websocket()), '
                           'conn:client_id(), mix.websocket():client_id()')
    await asyncio.wait_for(arrived.wait(), 5)
    # While the first connection waits, the other one's messages are answered.
    assert await ask(other, "return conn:client_id(), mix.websocket():client_id()") == [other_id, other_id]
    assert await ask(other, 'conn:set_context_value("who", "other") return conn:context_value("who")') \
        == ["other"]
    release.set()
    reply = await receive_frame(waiting, aiohttp.WSMsgType.TEXT)
    assert json.loads(reply) == ["released", True, True, waiting_id, waiting_id]
    assert await ask(waiting, 'return conn:context_value("who")') == [NIL]


async def test_one_connections_messages_stay_in_order_while_it_waits(engine, held_server):
    url, arrived, release = held_server
    ws = await engine.connect()
    await ws.send_str(f'return mix.http.request("GET", "{url}").body')
    await ws.send_str('return "second"')
    await asyncio.wait_for(arrived.wait(), 5)
    await assert_silent(ws, 0.2)  # the second waits for the first
    release.set()
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == '["released"]'
    assert await receive_frame(ws, aiohttp.WSMsgType.TEXT) == '["second"]'


# -- mix.mesh --------------------------------------------------------------------------

async def test_mesh_publish_counts_and_delivers_to_every_subscriber(engine):
    a, b, c = await engine.connect(), await engine.connect(), await engine.connect()
    await ask(a, 'return conn:subscribe("room")')
    await ask(b, 'return conn:subscribe("room", "other")')
    assert await ask(c, 'return mix.mesh.publish("room", "hi")') == [2, 0]
    assert await receive_frame(a, aiohttp.WSMsgType.TEXT) == "hi"
    assert await receive_frame(b, aiohttp.WSMsgType.TEXT) == "hi"
    assert await ask(c, 'return mix.mesh.publish("room", "\\1\\2", "binary")') == [2, 0]
    assert await receive_frame(a, aiohttp.WSMsgType.BINARY) == b"\x01\x02"
    assert await receive_frame(b, aiohttp.WSMsgType.BINARY) == b"\x01\x02"
    assert await ask(c, 'return mix.mesh.publish("nobody", "x")') == [0, 0]
    await assert_silent(c, 0.1)


@pytest.mark.parametrize("args", ['"", "x"', 'nil, "x"', '"room", nil', '"room", {}', '"room", "x", "json"'])
async def test_mesh_publish_bad_arguments_are_nil_err(engine, args):
    ws = await engine.connect()
    value, err = await ask(ws, f"return mix.mesh.publish({args})")
    assert value == NIL and err.startswith("bad argument")


async def test_mesh_send_to_another_client(engine):
    sender, target = await engine.connect(), await engine.connect()
    tid = await client_id(target)
    assert await ask(sender, f'return mix.mesh.send("{tid}", "for you")') == [NIL]
    assert await receive_frame(target, aiohttp.WSMsgType.TEXT) == "for you"
    assert await ask(sender, f'return mix.mesh.send("{tid}", "\\0b", "binary")') == [NIL]
    assert await receive_frame(target, aiohttp.WSMsgType.BINARY) == b"\x00b"


@pytest.mark.parametrize("args, words", [
    ('"999999999", "x"', "not found"),
    ('nil, "x"', "bad argument #1"),
    ('"1", nil', "bad argument #2"),
    ('"1", "x", "json"', "bad argument #3"),
])
async def test_mesh_send_failures_are_an_err(engine, args, words):
    ws = await engine.connect()
    err, = await ask(ws, f"return mix.mesh.send({args})")
    assert words in err


async def test_mesh_send_to_a_closed_client_is_an_err(engine):
    sender, target = await engine.connect(), await engine.connect()
    tid = await client_id(target)
    await target.close()
    for _ in range(50):
        err, = await ask(sender, f'return mix.mesh.send("{tid}", "late")')
        if err != NIL:
            break
        await asyncio.sleep(0.05)
    assert "not found" in err


# -- mix.server.option -------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [('"path"', "/ws"), ('"room"', "lobby"), ('"limit"', 5),
                                            ('"absent"', NIL), ("nil", NIL)])
async def test_server_option(engine, name, expected):
    ws = await engine.connect()
    assert await ask(ws, f"return mix.server.option({name})") == [expected]


WAIT_FOREVER = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "wait" then
        local v = conn:wait_context_value("never")
        mix.queue.push("ended", v == nil and "nil" or v)
        return
    end
    mix.queue.push("seen", msg.data)
end
function on_close(client_id, err)
    mix.queue.push("closed", err or "clean")
end
"""


async def test_client_leaving_ends_a_wait_and_runs_on_close(start_engine):
    """A callback waiting without a timeout ends (nil) when its client leaves;
    frames the client sent behind it are still handled, then on_close runs."""
    running = await start_engine(WAIT_FOREVER)
    ws = await running.connect()
    await ws.send_str("wait")
    await ws.send_str("after")
    await ws.close()
    queues = running.engine.queues
    await until(lambda: queues.size("closed"), "on_close pushed to the queue")
    assert queues.pop("ended") == "nil"
    assert queues.pop("seen") == "after"
    assert queues.pop("closed") == "clean"
