"""The publishes of one turn of the event loop leave in one write per
subscriber (Hub.publish holds a connection's frames from its second publish
of the turn, Connection.hold): the order, the counts, the send-queue bound and
the close stay what they are when each frame is written on its own, and a lone
publish still goes out at once. Real sockets: hand-written clients whose
segments (one per server write on loopback) and reading the test controls."""
from __future__ import annotations

import asyncio
import socket
import struct

import orjson

from tests.raw_websocket import RawWebSocket, client_frame

OP_TEXT, OP_CLOSE = 0x1, 0x8

SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "events" or msg.data == "news" or msg.data == "sport" then
        conn:subscribe(msg.data)
    end
    conn:send(conn:client_id())
end

function on_close(client_id, err)
    mix.mesh.publish("events", mix.json_encode({closed = client_id, err = tostring(err)}))
end
"""


async def subscriber(running, *channels: str, rcvbuf: int | None = None) -> tuple[RawWebSocket, str]:
    """A raw client subscribed to channels, and its client id."""
    client = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=rcvbuf)
    client_id = b""
    for channel in channels:
        await client.send_text(channel)
        opcode, client_id = await client.read_frame()
        assert opcode == OP_TEXT
    return client, client_id.decode()


async def test_the_publishes_of_one_turn_reach_a_subscriber_in_order_in_two_writes(start_engine):
    running = await start_engine(SCRIPT)
    client, _ = await subscriber(running, "news")
    before = client.data_segments_in()
    # engine.publish does not yield to the loop on one node: all 50 are one turn.
    for i in range(50):
        assert await running.engine.publish("news", b"news %d" % i) == (1, 0)
    assert [await client.read_frame() for _ in range(50)] == [(OP_TEXT, b"news %d" % i) for i in range(50)]
    # The first at once, the other 49 held and written together when the turn ended.
    assert client.data_segments_in() - before == 2
    client.drop()


def read_without_turning_the_loop(sock: socket.socket) -> bytes:
    """A blocking read: the event loop is stopped while it waits, so what
    arrives was written before the turn ended (a held frame never comes)."""
    sock.settimeout(5)
    try:
        return sock.recv(64)
    except TimeoutError:
        return b"nothing within 5 s"
    finally:
        sock.setblocking(False)


async def test_a_lone_publish_is_written_before_the_turn_ends(start_engine):
    """Nothing is held for a connection's first publish of a turn: its bytes
    are in the client's socket before the publishing code yields to the loop."""
    running = await start_engine(SCRIPT)
    client, _ = await subscriber(running, "news")
    for word in (b"at once", b"and again"):  # the second in a later turn: first of its turn
        assert await running.engine.publish("news", word) == (1, 0)
        assert read_without_turning_the_loop(client.sock) == bytes((0x81, len(word))) + word
        await asyncio.sleep(0)  # a turn of the loop
        await asyncio.sleep(0)
    client.drop()


async def test_a_pipelined_backend_gets_its_counts_and_each_subscriber_its_frames_in_order(start_engine):
    """40 mesh.publish requests in one write over /ws/v1, to two channels in
    turn: every reply counts what it delivered, and each subscriber gets its
    channel's frames in order, in two writes."""
    running = await start_engine(SCRIPT)
    both, _ = await subscriber(running, "news", "sport")
    news, _ = await subscriber(running, "news")
    api = await RawWebSocket.connect(running.engine.api_port, "/ws/v1")
    segments = both.data_segments_in(), news.data_segments_in()
    await api.send_bytes(b"".join(
        client_frame(orjson.dumps({"m": "mesh.publish", "p": {"c": ("news", "sport")[i % 2], "d": "m%d" % i}, "i": i}))
        for i in range(40)))
    replies = [orjson.loads((await api.read_frame())[1]) for _ in range(40)]
    assert replies == [{"E": None, "r": {"s": 2 if i % 2 == 0 else 1, "f": 0}, "i": i} for i in range(40)]
    assert [await both.read_frame() for _ in range(40)] == [(OP_TEXT, b"m%d" % i) for i in range(40)]
    assert [await news.read_frame() for _ in range(20)] == [(OP_TEXT, b"m%d" % i) for i in range(0, 40, 2)]
    assert (both.data_segments_in() - segments[0], news.data_segments_in() - segments[1]) == (2, 2)
    for client in (both, news, api):
        client.drop()


async def test_a_send_and_a_close_in_the_turn_come_after_the_held_frames(start_engine):
    running = await start_engine(SCRIPT)
    client, client_id = await subscriber(running, "news")
    engine = running.engine
    assert await engine.publish("news", b"p0") == (1, 0)  # written at once
    assert await engine.publish("news", b"p1") == (1, 0)  # held
    assert await engine.send(client_id, b"s2") is True  # queues behind p1
    assert await engine.publish("news", b"p3") == (1, 0)
    engine.hub.get(client_id).close()  # as a script's conn:close: after what is queued
    assert await engine.publish("news", b"p4") == (0, 1)  # closing: refused and counted
    assert [await client.read_frame() for _ in range(5)] == [
        (OP_TEXT, b"p0"), (OP_TEXT, b"p1"), (OP_TEXT, b"s2"), (OP_TEXT, b"p3"), (OP_CLOSE, struct.pack("!H", 1000))]
    client.drop()


async def test_a_publish_crossing_max_send_queue_while_frames_are_held_drops_only_that_client(start_engine):
    """A client that never reads: once the kernel holds all it will of its
    frames, the frames held in one turn count in its send queue, and the
    publish that takes it over maxSendQueue reports it failed and drops it,
    as a plain write would. A reader subscribed beside it gets every frame."""
    queue = 256 * 1024
    running = await start_engine(SCRIPT, maxSendQueue=queue, writeTimeout=30)
    events, _ = await subscriber(running, "events")
    slow, slow_id = await subscriber(running, "news", rcvbuf=4096)
    reader, _ = await subscriber(running, "news")
    frame = b"x" * 10000
    read: list[tuple[int, bytes]] = []

    async def read_all() -> None:
        while True:
            read.append(await reader.read_frame(timeout=30))

    reading = asyncio.create_task(read_all())
    transport = running.engine.hub.get(slow_id).transport
    published = 0
    while not transport.get_write_buffer_size():  # one publish a turn, until the kernel is full
        assert await running.engine.publish("news", frame) == (2, 0)
        published += 1
        assert published < 2000, "the kernel took 20 MB for a client that does not read"
        await asyncio.sleep(0)
    results = []
    while not results or results[-1] == (2, 0):  # one turn: from the second publish on, held
        results.append(await running.engine.publish("news", frame))
        assert len(results) <= queue // len(frame) + 1, "held frames escaped maxSendQueue"
    assert results[-1] == (1, 1)
    assert await running.engine.publish("news", frame) == (1, 1)  # dropped: refused from now on
    event = orjson.loads((await events.read_frame())[1])
    assert event == {"closed": slow_id, "err": f"slow client: send queue over {queue} bytes"}
    total = published + len(results) + 1
    for _ in range(100):  # up to 10 s for the reader to catch up
        if len(read) >= total:
            break
        await asyncio.sleep(0.1)
    reading.cancel()
    assert read == [(OP_TEXT, frame)] * total
    for client in (events, slow, reader):
        client.drop()


async def test_a_subscriber_gone_before_its_held_frames_are_written_is_closed_the_others_served(start_engine):
    running = await start_engine(SCRIPT)
    events, _ = await subscriber(running, "events")
    gone, gone_id = await subscriber(running, "news")
    stays, _ = await subscriber(running, "news")
    assert await running.engine.publish("news", b"first") == (2, 0)
    assert await running.engine.publish("news", b"held") == (2, 0)
    gone.drop()  # before the turn ends: the held frame meets a closed socket
    assert [await stays.read_frame() for _ in range(2)] == [(OP_TEXT, b"first"), (OP_TEXT, b"held")]
    event = orjson.loads((await events.read_frame())[1])
    assert event["closed"] == gone_id and event["err"].startswith("connection lost")
    assert await running.engine.publish("news", b"after") == (1, 0)
    assert await stays.read_frame() == (OP_TEXT, b"after")
    for client in (events, stays):
        client.drop()
