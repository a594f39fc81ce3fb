"""connmix_py.client against real engines: AsyncClient and Client over HTTP
and the WebSocket API, typed errors, pipelining, and a Consumer that
survives an engine restart."""
from __future__ import annotations

import asyncio
import textwrap

import aiohttp
import orjson
import pytest
from aiohttp import web

from connmix_py import Engine, parse_settings
from connmix_py.client import (CALL_FAILED, CONSUME_FAILED, INVALID_ARGUMENT, SEND_FAILED, ApiError,
                               AsyncClient, Client, Consumer, Published, QueueEvent, TransportError)
from tests.api_helpers import SCRIPT, burst, client_id, push, send_op
from tests.conftest import Running, engine_config
from tests.helpers import receive_json
from tests.ports import reserved_port
from tests.waiting import until, within


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT)


async def listener(running, client: AsyncClient, *channels: str):
    """A websocket client subscribed (through conn_call) to channels."""
    ws = await running.connect()
    cid = await client_id(ws)
    if channels:
        await client.conn_call(cid, "subscribe", *channels)
    return ws, cid


# -- AsyncClient -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_publish_send_and_conn_call(running, transport):
    async with AsyncClient(running.api_url, transport=transport) as client:
        ws, cid = await listener(running, client, "news")
        assert await client.publish("news", "text") == Published(1, 0)
        assert (await ws.receive(timeout=5)).data == "text"
        assert await client.publish("news", b"\x00\xff") == Published(1, 0)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\xff")
        assert await client.publish("news", {"msg": "hi", "n": [1]}) == Published(1, 0)
        assert orjson.loads((await ws.receive(timeout=5)).data) == {"msg": "hi", "n": [1]}
        assert await client.publish("empty", "x") == Published(0, 0)
        assert await client.send(cid, "just you") is None
        assert (await ws.receive(timeout=5)).data == "just you"
        await send_op(ws, "wait", key="uid")
        await client.conn_call(cid, "set_context_value", "uid", "1001")
        assert await receive_json(ws) == {"waited": "1001"}
        await client.conn_call(cid, "set_context", {"room": "7"})
        await send_op(ws, "context")
        assert await receive_json(ws) == {"context": {"room": "7"}}
        await client.conn_call(cid, "unsubscribe", "news")
        assert await client.publish("news", "gone") == Published(0, 0)


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_errors_are_typed_with_the_api_code(running, transport):
    async with AsyncClient(running.api_url, transport=transport) as client:
        with pytest.raises(ApiError) as sent:
            await client.send("123456", "x")
        assert sent.value.code == SEND_FAILED == 401 and "123456" in sent.value.message
        with pytest.raises(ApiError) as called:
            await client.conn_call("123456", "subscribe", "x")
        assert called.value.code == CALL_FAILED == 301
        with pytest.raises(ApiError) as bad:
            await client.conn_call("1", "explode")
        assert bad.value.code == INVALID_ARGUMENT == 101
        with pytest.raises(ApiError) as empty:
            await client.publish("", "x")
        assert empty.value.code == 101
        # The engine and the client keep serving after every error.
        ws, cid = await listener(running, client, "after")
        assert await client.publish("after", "ok") == Published(1, 0)
        assert (await ws.receive(timeout=5)).data == "ok"


async def test_a_thousand_calls_pipelined_on_one_websocket(running):
    async with AsyncClient(running.api_url, transport="ws") as client:
        ws, cid = await listener(running, client, "news")
        results = await asyncio.gather(*(client.publish("news", str(i)) for i in range(1000)))
        assert results == [Published(1, 0)] * 1000
        received = [(await ws.receive(timeout=5)).data for _ in range(1000)]
        assert sorted(received, key=int) == [str(i) for i in range(1000)]


async def reverse_order_server():
    """An API peer that holds 200 requests and answers them last first."""
    async def handle(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        held = []
        async for msg in ws:
            held.append(orjson.loads(msg.data))
            if len(held) == 200:
                for req in reversed(held):
                    delivered = int(req["p"]["c"])
                    await ws.send_str(orjson.dumps({"E": None, "r": {"s": delivered, "f": 0}, "i": req["i"]}).decode())
                held.clear()
        return ws

    app = web.Application()
    app.router.add_get("/ws/v1", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_replies_are_matched_by_id_in_any_order():
    runner, port = await reverse_order_server()
    try:
        async with AsyncClient(f"ws://127.0.0.1:{port}", transport="ws") as client:
            results = await asyncio.gather(*(client.publish(str(k), "x") for k in range(200)))
        assert [r.delivered for r in results] == list(range(200))
    finally:
        await runner.cleanup()


async def test_requests_in_flight_on_a_lost_connection_fail_and_the_next_call_reconnects():
    connections = []

    async def handle(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connections.append(ws)
        held = 0
        async for msg in ws:
            req = orjson.loads(msg.data)
            if len(connections) == 1:  # the first connection drops with 5 requests unanswered
                held += 1
                if held == 5:
                    await ws.close()
                continue
            await ws.send_str(orjson.dumps({"E": None, "r": {"s": 1, "f": 0}, "i": req["i"]}).decode())
        return ws

    app = web.Application()
    app.router.add_get("/ws/v1", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", transport="ws") as client:
            lost = await asyncio.gather(*(client.publish("c", "x") for _ in range(5)), return_exceptions=True)
            assert all(isinstance(e, TransportError) for e in lost), lost
            assert await client.publish("c", "again") == Published(1, 0)
        assert len(connections) == 2
    finally:
        await runner.cleanup()


@pytest.fixture
def api_port():
    """A port held for the whole test, so an engine can start again on it."""
    with reserved_port() as port:
        yield port


async def test_ws_client_reconnects_to_a_restarted_engine(tmp_path, api_port):
    engine = await engine_on_port(tmp_path, api_port)
    try:
        async with AsyncClient(f"http://127.0.0.1:{api_port}", transport="ws", timeout=3) as client:
            assert await client.publish("x", "1") == Published(0, 0)
            await engine.stop()
            with pytest.raises(TransportError):
                await client.publish("x", "2")
            engine = await engine_on_port(tmp_path, api_port)
            assert await client.publish("x", "3") == Published(0, 0)
    finally:
        await engine.stop()


async def test_an_unreachable_engine_is_a_transport_error():
    with reserved_port() as nobody_listens:
        for transport in ("http", "ws"):
            async with AsyncClient(f"http://127.0.0.1:{nobody_listens}", transport=transport, timeout=2) as client:
                with pytest.raises(TransportError):
                    await client.publish("x", "y")


async def test_an_http_status_instead_of_a_reply_is_a_transport_error_with_the_status():
    async def refuse(request):
        assert request.headers["Authorization"] == "Basic dTpw"  # u:p
        return web.Response(status=401, text="wrong credentials")
    app = web.Application()
    app.router.add_post("/v1/mesh/publish", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", auth=("u", "p")) as client:
            with pytest.raises(TransportError) as refused:
                await client.publish("x", "y")
        assert refused.value.status == 401 and "wrong credentials" in str(refused.value)
    finally:
        await runner.cleanup()


def test_bad_client_options_are_value_errors():
    with pytest.raises(ValueError):
        AsyncClient(transport="carrier-pigeon")
    with pytest.raises(ValueError):
        Consumer("http://127.0.0.1:1", [])
    with pytest.raises(ValueError):
        Consumer("http://127.0.0.1:1", ["ok", ""])


# -- Client (sync) --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_sync_client_from_threads(running, transport):
    probe = AsyncClient(running.api_url)
    ws, cid = await listener(running, probe, "news")
    await probe.close()

    def backend_code():
        with Client(running.api_url, transport=transport) as client:
            published = client.publish("news", "from a thread")
            client.send(cid, {"direct": True})
            client.conn_call(cid, "set_context_value", "uid", 7)
            with pytest.raises(ApiError) as refused:
                client.send("999", "x")
            return published, refused.value.code

    # The blocking client runs where backends run it: outside this event loop.
    published, code = await asyncio.to_thread(backend_code)
    assert (published, code) == (Published(1, 0), 401)
    assert (await ws.receive(timeout=5)).data == "from a thread"
    assert orjson.loads((await ws.receive(timeout=5)).data) == {"direct": True}
    await send_op(ws, "context")
    assert await receive_json(ws) == {"context": {"uid": 7}}


# -- Consumer -----------------------------------------------------------------------------------------


async def test_consumer_yields_events_and_stops_gracefully(running):
    ws = await running.connect()
    cid = await client_id(ws)
    consumer = Consumer(running.api_url, ["chat"])
    await asyncio.wait_for(consumer.wait_attached(), 10)
    await push(ws, "chat", "hello")
    await push(ws, "chat", {"text": "table"})
    got = []
    async with within(10, "two events, then the end of the iteration"):
        async for event in consumer:
            got.append(event)
            if len(got) == 2:
                await consumer.stop()  # the loop ends after what already arrived
    assert got == [QueueEvent(1, cid, "chat", "hello"), QueueEvent(1, cid, "chat", {"text": "table"})]
    await consumer.close()
    assert (await push(ws, "chat", "after stop"))["n"] == 1  # waits in the engine for the next consumer


async def test_consumer_refused_topics_raise_the_api_error(start_engine):
    running = await start_engine(SCRIPT, luavm={"queue": {"maxTopics": 2}})
    async with Consumer(running.api_url, ["a", "b", "c"]) as consumer:
        with pytest.raises(ApiError) as refused:
            async with within(10, "the refusal"):
                async for _ in consumer:
                    pass
    assert refused.value.code == CONSUME_FAILED


async def test_consumer_backs_off_from_a_peer_that_drops_it_at_once():
    connections = []

    async def drop(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connections.append(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws/v1", drop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    consumer = Consumer(f"http://127.0.0.1:{port}", ["jobs"], min_backoff=0.05, max_backoff=0.2)
    try:
        consumer.start()
        await asyncio.sleep(1)
        assert 2 <= len(connections) <= 15  # retried, with pauses: not a busy loop
        assert not consumer.attached
    finally:
        await consumer.close()
        await runner.cleanup()


async def engine_on_port(tmp_path, api_port: int) -> Engine:
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT))
    conf = engine_config(str(entry))
    conf["engine"]["apiServer"]["port"] = api_port
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    return engine


async def next_event(consumer: Consumer) -> QueueEvent:
    return await asyncio.wait_for(consumer.__anext__(), 10)


async def test_consumer_survives_an_engine_restart(tmp_path, session, api_port):
    first = await engine_on_port(tmp_path, api_port)
    second = None
    consumer = Consumer(f"http://127.0.0.1:{api_port}", ["chat", "jobs"], min_backoff=0.05, max_backoff=0.2)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        ws = await Running(first, session, "/ws").connect()
        await push(ws, "chat", "before")
        assert (await next_event(consumer)).data == "before"

        await first.stop()  # the engine goes away; the consumer retries with backoff
        await until(lambda: not consumer.attached, "the consumer noticed the engine left")
        await asyncio.sleep(0.5)  # a few failed attempts

        second = await engine_on_port(tmp_path, api_port)
        ws = await Running(second, session, "/ws").connect()
        await push(ws, "jobs", "queued while away")  # may land before the consumer is back
        await asyncio.wait_for(consumer.wait_attached(), 10)
        await push(ws, "chat", "after")
        got = [(await next_event(consumer)) for _ in range(2)]
        assert [(e.topic, e.data) for e in got] == [("jobs", "queued while away"), ("chat", "after")]
        assert consumer.reconnects == 1
    finally:
        await consumer.close()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_consumers_share_a_topic_round_robin(running):
    first = Consumer(running.api_url, ["jobs"])
    second = Consumer(running.api_url, ["jobs"])
    try:
        await asyncio.wait_for(first.wait_attached(), 10)
        await asyncio.wait_for(second.wait_attached(), 10)
        ws = await running.connect()
        assert (await burst(ws, "jobs", 10))["pushed"] == 10
        a = [(await next_event(first)).data["i"] for _ in range(5)]
        b = [(await next_event(second)).data["i"] for _ in range(5)]
        assert sorted(a + b) == list(range(1, 11)) and {tuple(a), tuple(b)} == {(1, 3, 5, 7, 9), (2, 4, 6, 8, 10)}
    finally:
        await first.close()
        await second.close()
