"""Consuming what scripts push (mix.queue.push -> queue.pop events): each
item to exactly one consumer, round robin, items waiting while nobody can
take them, bounds, and nothing lost that was not written to a consumer."""
from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.api_helpers import SCRIPT, api_ws, burst, call, client_id, push
from tests.helpers import assert_silent, receive_json
from tests.raw_websocket import RawWebSocket
from tests.waiting import until, within


@pytest.fixture
async def running(start_engine):
    return await start_engine(SCRIPT)


async def consumer(running, *topics: str):
    api = await api_ws(running)
    assert (await call(api, "queue.pop", {"t": list(topics)}, "pop"))["r"] == {"s": True}
    return api


async def events(api, n: int) -> list[dict]:
    """The next n events; each must be a queue.pop event."""
    got = []
    for _ in range(n):
        event = await receive_json(api)
        assert event["e"] == "queue.pop" and event["id"] is None and set(event["p"]) == {"n", "c", "t", "d"}, event
        got.append(event["p"])
    return got


async def test_event_shape_names_node_pusher_topic_and_data(running):
    api = await consumer(running, "chat")
    ws = await running.connect()
    cid = await client_id(ws)
    assert (await push(ws, "chat", "hello"))["err"] is False
    event = await receive_json(api)
    assert event == {"e": "queue.pop", "p": {"n": 1, "c": cid, "t": "chat", "d": "hello"}, "id": None}
    await push(ws, "chat", {"uid": 1001, "msg": "hi", "tags": ["a"]})
    assert (await events(api, 1))[0]["d"] == {"uid": 1001, "msg": "hi", "tags": ["a"]}


async def test_items_wait_for_a_consumer_then_follow_the_pop_reply_in_order(running):
    ws = await running.connect()
    for i in range(5):
        assert (await push(ws, "jobs", f"job{i}"))["n"] == i + 1
    api = await api_ws(running)
    await api.send_str(orjson.dumps({"m": "queue.pop", "p": {"t": ["jobs"]}, "i": 1}).decode())
    assert await receive_json(api) == {"E": None, "r": {"s": True}, "i": 1}  # the reply comes first
    assert [e["d"] for e in await events(api, 5)] == [f"job{i}" for i in range(5)]
    assert running.engine.queues.size("jobs") == 0
    assert (await push(ws, "jobs", "next"))["n"] == 0  # taken at once
    assert (await events(api, 1))[0]["d"] == "next"


async def test_round_robin_each_item_to_exactly_one_consumer(running):
    consumers = [await consumer(running, "jobs") for _ in range(3)]
    ws = await running.connect()
    assert await burst(ws, "jobs", 30) == {"pushed": 30, "err": False}
    got = [[e["d"]["i"] for e in await events(api, 10)] for api in consumers]
    assert got == [list(range(k, 31, 3)) for k in (1, 2, 3)]
    for api in consumers:
        await assert_silent(api, 0.05)


async def test_a_consumer_gets_only_its_topics(running):
    a = await consumer(running, "a", "b")
    c = await consumer(running, "c")
    ws = await running.connect()
    for topic in ("a", "c", "b", "nobody"):
        await push(ws, topic, topic)
    assert [(e["t"], e["d"]) for e in await events(a, 2)] == [("a", "a"), ("b", "b")]
    assert [(e["t"], e["d"]) for e in await events(c, 1)] == [("c", "c")]
    assert running.engine.queues.size("nobody") == 1
    await assert_silent(a, 0.05)


async def test_unpop_stops_delivery_and_items_wait_for_the_next_pop(running):
    api = await consumer(running, "jobs")
    ws = await running.connect()
    await push(ws, "jobs", "one")
    assert (await events(api, 1))[0]["d"] == "one"
    assert (await call(api, "queue.unpop", {}))["r"] == {"s": True}
    assert (await push(ws, "jobs", "two"))["n"] == 1
    await assert_silent(api, 0.1)
    assert (await call(api, "queue.pop", {"t": ["jobs"]}))["r"] == {"s": True}
    assert (await events(api, 1))[0]["d"] == "two"


async def test_a_consumer_that_leaves_gets_nothing_more_the_other_gets_it_all(running):
    leaving = await consumer(running, "jobs")
    staying = await consumer(running, "jobs")
    ws = await running.connect()
    await burst(ws, "jobs", 4)
    assert [e["d"]["i"] for e in await events(leaving, 2)] == [1, 3]
    assert [e["d"]["i"] for e in await events(staying, 2)] == [2, 4]
    await leaving.close()
    assert await burst(ws, "jobs", 10, start=5) == {"pushed": 10, "err": False}
    assert [e["d"]["i"] for e in await events(staying, 10)] == list(range(5, 15))


async def test_the_last_consumer_leaving_leaves_its_items_queued(running):
    leaving = await consumer(running, "jobs")
    await leaving.close()
    queues = running.engine.queues
    await until(lambda: "jobs" not in queues.consumers, "the engine noticed the close")
    ws = await running.connect()
    assert await burst(ws, "jobs", 20) == {"pushed": 20, "err": False}
    assert queues.size("jobs") == 20
    later = await consumer(running, "jobs")
    assert [e["d"]["i"] for e in await events(later, 20)] == list(range(1, 21))


async def raw_consumer(running, topic: str) -> RawWebSocket:
    """A consumer that reads only when the test says so (tiny receive buffer)."""
    raw = await RawWebSocket.connect(running.engine.api_port, "/ws/v1", rcvbuf=4096)
    await raw.send_text(orjson.dumps({"m": "queue.pop", "p": {"t": [topic]}, "i": 1}).decode())
    opcode, reply = await raw.read_frame()
    assert orjson.loads(reply) == {"E": None, "r": {"s": True}, "i": 1}
    return raw


async def test_a_consumer_that_stops_reading_is_skipped_and_nothing_is_lost(start_engine):
    running = await start_engine(SCRIPT, luavm={"queue": {"topicSize": 2000}})
    stuck = await raw_consumer(running, "jobs")
    reader = await consumer(running, "jobs")
    ws = await running.connect()
    total, size = 600, 16 * 1024  # ~10 MB: far more than socket buffers hold
    received: list[int] = []

    async def read_all():
        while True:
            received.extend(e["d"]["i"] for e in await events(reader, 1))

    reading = asyncio.create_task(read_all())
    stuck_items: list[int] = []
    try:
        for start in range(1, total + 1, 50):
            assert await burst(ws, "jobs", 50, size, start) == {"pushed": 50, "err": False}
        # Every push succeeded: the stuck consumer was skipped once its
        # socket was full, and the reader took the rest.
        await until(lambda: running.engine.queues.size("jobs") == 0, "every item handed out")
        assert len(received) > total // 2
        # Now the stuck consumer reads what was written to it.
        async with within(30, "the stuck consumer read the rest"):
            while len(stuck_items) + len(received) < total:
                opcode, payload = await stuck.read_frame()
                stuck_items.append(orjson.loads(payload)["p"]["d"]["i"])
    finally:
        reading.cancel()
    assert stuck_items and sorted(stuck_items + received) == list(range(1, total + 1))  # each exactly once
    assert stuck_items == sorted(stuck_items) and received == sorted(received)


async def test_a_consumer_that_drops_loses_only_what_was_written_to_it(start_engine):
    running = await start_engine(SCRIPT, luavm={"queue": {"topicSize": 2000}})
    stuck = await raw_consumer(running, "jobs")
    ws = await running.connect()
    total = 400
    for start in range(1, total + 1, 50):
        assert (await burst(ws, "jobs", 50, 16 * 1024, start))["pushed"] == 50
    queues = running.engine.queues
    waiting = queues.size("jobs")
    assert 0 < waiting < total  # some went to the socket, the rest waits
    stuck.drop()
    await until(lambda: "jobs" not in queues.consumers, "the engine noticed the drop")
    assert queues.size("jobs") == waiting
    later = await consumer(running, "jobs")
    got = [e["d"]["i"] for e in await events(later, waiting)]
    assert got == list(range(total - waiting + 1, total + 1))


async def test_queue_bounds_refuse_pushes_until_a_consumer_takes_items(start_engine):
    running = await start_engine(SCRIPT, luavm={"queue": {"topicSize": 5, "maxTopics": 2}})
    ws = await running.connect()
    assert await burst(ws, "a", 5) == {"pushed": 5, "err": False}
    full = await push(ws, "a", "sixth")
    assert full["n"] is False and "topicSize" in full["err"]
    assert (await push(ws, "b", "x"))["n"] == 1
    too_many = await push(ws, "c", "x")
    assert too_many["n"] is False and "maxTopics" in too_many["err"]
    api = await consumer(running, "a")
    assert [e["d"]["i"] for e in await events(api, 5)] == [1, 2, 3, 4, 5]
    # "a" is empty again: it holds no slot, and takes pushes straight through.
    assert (await push(ws, "c", "now fits"))["n"] == 1
    assert await burst(ws, "a", 50, start=6) == {"pushed": 50, "err": False}
    assert [e["d"]["i"] for e in await events(api, 50)] == list(range(6, 56))


async def test_a_consumer_connection_still_answers_requests(running):
    api = await consumer(running, "jobs")
    ws = await running.connect()
    await burst(ws, "jobs", 20)
    for i in range(20):
        await api.send_str(orjson.dumps({"m": "mesh.publish", "p": {"c": "x", "d": "y"}, "i": i}).decode())
    replies, items = [], []
    async with within(10, "20 replies and 20 items"):
        while len(replies) < 20 or len(items) < 20:
            frame = await receive_json(api)
            if frame.get("e") == "queue.pop":
                items.append(frame["p"]["d"]["i"])
            else:
                replies.append(frame["i"])
    assert replies == list(range(20)) and items == list(range(1, 21))


async def test_engine_stop_closes_api_connections_at_once(start_engine):
    running = await start_engine(SCRIPT)
    api = await consumer(running, "jobs")
    # Without closing them the API's shutdown waited 60 s for each to end.
    await asyncio.wait_for(running.engine.stop(), 10)
    msg = await api.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
