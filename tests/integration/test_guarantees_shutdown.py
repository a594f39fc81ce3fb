"""Engine.stop() is bounded whatever the API clients do: a /ws/v1 queue
consumer that stopped reading cannot hold the shutdown (issue 14)."""
from __future__ import annotations

import asyncio

import orjson

from tests.raw_websocket import RawWebSocket

ITEM = "x" * 64 * 1024
# A hang guard only: a bounded stop takes about the API's close grace.
STOP_GUARD = 15


async def test_stop_returns_when_a_queue_consumer_stopped_reading(start_engine):
    running = await start_engine("function on_message(msg) end",
                                 luavm={"queue": {"topicSize": 1000}})
    engine = running.engine
    consumer = await RawWebSocket.connect(engine.api_port, "/ws/v1", rcvbuf=4096)
    await consumer.send_text(orjson.dumps({"m": "queue.pop", "p": {"t": ["jobs"]}, "i": 1}).decode())
    _, reply = await consumer.read_frame()
    assert orjson.loads(reply)["r"] == {"s": True}
    for _ in range(300):  # ~19 MB: far more than the kernel buffers take, never read
        engine.queues.push("jobs", ITEM)
    assert engine.queues.size("jobs") > 0  # the consumer's backlog made it stop taking items

    try:
        await asyncio.wait_for(engine.stop(), STOP_GUARD)
    finally:
        consumer.drop()  # after a failure too: the fixture's own stop() must not hang
