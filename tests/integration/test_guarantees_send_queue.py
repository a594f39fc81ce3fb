"""The slow-client judgement closes only the clients it should (issue 14):
a backlog under maxSendQueue is not slowness, and a reader that keeps up
slowly, with a backlog that never empties, outlives writeTimeout because it
makes progress. The clients are hand-written websocket clients whose reading
the test controls; the kernel buffers a few MB, so the publishes go well past
that to build a real backlog in the server."""
from __future__ import annotations

import asyncio

from tests.raw_websocket import RawWebSocket

SCRIPT = """
function on_message(msg)
    local c = mix.websocket()
    c:subscribe("news")
    c:send(msg.data)
end
"""
FRAME_SIZE = 64 * 1024


def numbered(i: int) -> bytes:
    return b"%08d" % i + b"n" * (FRAME_SIZE - 8)


async def subscriber(running) -> RawWebSocket:
    """A subscriber to "news" with a small receive buffer, reading nothing yet."""
    client = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=4096)
    await client.send_text("subscribed")
    assert await client.read_frame() == (0x1, b"subscribed")
    return client


async def test_a_backlog_under_max_send_queue_keeps_the_client(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=32 * 1024 * 1024, writeTimeout=30)
    client = await subscriber(running)
    count = 160  # 10 MB: several MB beyond what the kernel holds, a third of the queue
    for i in range(count):
        assert await running.engine.publish("news", numbered(i)) == (1, 0)
    for i in range(count):
        assert await client.read_frame() == (0x1, numbered(i))
    await client.send_text("still open")
    assert await client.read_frame() == (0x1, b"still open")
    client.drop()


async def test_a_slow_steady_reader_outlives_write_timeout(start_engine):
    """The backlog never empties for longer than writeTimeout, but it keeps
    moving: progress resets the write timeout, so the client stays, even
    through a stall shorter than writeTimeout that comes after it."""
    running = await start_engine(SCRIPT, maxSendQueue=64 * 1024 * 1024, writeTimeout=3)
    client = await subscriber(running)
    engine, loop = running.engine, asyncio.get_running_loop()
    lead = 6 * 1024 * 1024 // FRAME_SIZE  # always ~6 MB ahead of the reader: a backlog
    published = read = 0

    async def read_steadily(seconds: float) -> None:
        nonlocal published, read
        until = loop.time() + seconds  # the workload's length, not a timing check
        while loop.time() < until:
            while published - read < lead:
                assert await engine.publish("news", numbered(published)) == (1, 0), "the client was closed"
                published += 1
            for _ in range(16):  # 1 MB, then a pause: a slow reader, but steady
                assert await client.read_frame() == (0x1, numbered(read))
                read += 1
            await asyncio.sleep(0.05)

    await read_steadily(3.5)  # longer than writeTimeout, the backlog never empty
    await asyncio.sleep(1.8)  # a stall: no progress for less than writeTimeout
    await read_steadily(1.5)
    while read < published:
        assert await client.read_frame() == (0x1, numbered(read))
        read += 1
    await client.send_text("still open")
    assert await client.read_frame() == (0x1, b"still open")
    client.drop()


async def test_the_send_queue_bound_holds_again_after_a_backlog_drained(start_engine):
    """A subscriber's backlog builds and drains (frames go straight to the
    socket again), then it stops reading: the next backlog is bounded by
    maxSendQueue all the same, and the publish that crosses it drops it."""
    running = await start_engine(SCRIPT, maxSendQueue=8 * 1024 * 1024, writeTimeout=30)
    client = await subscriber(running)
    engine = running.engine
    conn = next(iter(engine.hub))
    backlog = 128  # 8 MB: beyond what the kernel holds, a backlog under the bound
    for i in range(backlog):
        assert await engine.publish("news", numbered(i)) == (1, 0)
    assert conn.transport.get_write_buffer_size() > 0, "no backlog was built"
    for i in range(backlog):
        assert await client.read_frame() == (0x1, numbered(i))
    await client.send_text("drained")  # answered through an emptied queue
    assert await client.read_frame() == (0x1, b"drained")
    published = backlog
    while (await engine.publish("news", numbered(published))) == (1, 0):
        published += 1
        assert published < backlog + 600, "a client over maxSendQueue was never dropped"
    assert conn.close_err.startswith("slow client: send queue over")
    client.drop()
