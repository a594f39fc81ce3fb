"""The websocket server writes the replies to the frames of one read in one
write (Connection.hold): the order of replies, pongs and the close stays the
order of the frames, and a callback sending much in one go is still held to
maxSendQueue (the held-back bytes count in the send queue as they are queued). A
close whose last frames cannot flush is cut after writeTimeout."""
from __future__ import annotations

import struct

from tests.helpers import receive_json
from tests.raw_websocket import RawWebSocket, client_frame

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA

SCRIPT = """
function on_message(msg)
    local conn, data = mix.websocket(), msg.data
    if data == "flood" then
        local chunk, sent = string.rep("f", 10000), 0
        for i = 1, 2000 do  -- 20 MB in one callback, to a client that does not read
            if conn:send(chunk) then  -- an error: the connection is closed
                break
            end
            sent = i
        end
        mix.mesh.publish("events", mix.json_encode({sent = sent}))
    elseif data == "reply, then publish" then
        conn:send("reply")
        mix.mesh.publish("news", "published")  -- this client is a subscriber
    elseif data == "bye" then
        conn:send("closing")
        conn:close()
    elseif data == "events" or data == "news" or data == "whoami" then
        if data ~= "whoami" then conn:subscribe(data) end
        conn:send(conn:client_id())
    else
        conn:send("echo " .. data)
    end
end

function on_close(client_id, err)
    mix.mesh.publish("events", mix.json_encode({closed = client_id, err = tostring(err)}))
end
"""


async def test_replies_pongs_and_the_close_keep_the_order_of_one_read(start_engine):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_bytes(client_frame(b"a") + client_frame(b"p", OP_PING) + client_frame(b"b")
                         + client_frame(b"bye") + client_frame(b"never handled"))
    assert await raw.read_frame() == (OP_TEXT, b"echo a")
    assert await raw.read_frame() == (OP_PONG, b"p")
    assert await raw.read_frame() == (OP_TEXT, b"echo b")
    assert await raw.read_frame() == (OP_TEXT, b"closing")
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1000))
    raw.drop()


async def test_the_replies_to_one_read_leave_in_one_segment(start_engine):
    """Five frames in one read: their replies and the pong come in one TCP
    segment (one write), not one each."""
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_frame(b"0")
    assert await raw.read_frame() == (OP_TEXT, b"echo 0")
    before = raw.data_segments_in()
    await raw.send_bytes(b"".join(client_frame(b"%d" % i) for i in range(1, 5)) + client_frame(b"p", OP_PING))
    assert [await raw.read_frame() for _ in range(5)] == [(OP_TEXT, b"echo %d" % i) for i in range(1, 5)] + [
        (OP_PONG, b"p")]
    assert raw.data_segments_in() - before == 1
    raw.drop()


async def test_a_client_close_in_the_same_read_comes_after_the_replies(start_engine):
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_bytes(client_frame(b"1") + client_frame(b"2") + client_frame(struct.pack("!H", 1000), OP_CLOSE))
    assert await raw.read_frame() == (OP_TEXT, b"echo 1")
    assert await raw.read_frame() == (OP_TEXT, b"echo 2")
    assert await raw.read_frame() == (OP_CLOSE, struct.pack("!H", 1000))
    raw.drop()


async def watched_slow_client(running, word: bytes) -> tuple:
    """(events, slow, slow_id): on_close events, and a raw client that never
    reads (a small receive buffer) and sent ``word``."""
    events = await running.connect()
    await events.send_str("events")
    await events.receive(timeout=5)
    slow = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=4096)
    await slow.send_frame(word)
    _, slow_id = await slow.read_frame()
    return events, slow, slow_id.decode()


async def test_one_callback_sending_more_than_max_send_queue_closes_a_client_that_never_reads(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=256 * 1024, writeTimeout=30)
    events, slow, slow_id = await watched_slow_client(running, b"whoami")
    await slow.send_frame(b"flood")
    # The bound stopped the callback's sends on the way, not after all 20 MB were held.
    assert (await receive_json(events))["sent"] < 2000
    event = await receive_json(events)  # long before writeTimeout: the size bound
    assert event["closed"] == slow_id
    assert event["err"].startswith("slow client: send queue over")
    slow.drop()
    ws = await running.connect()
    await ws.send_str("still")
    assert (await ws.receive(timeout=5)).data == "echo still"


async def test_a_client_that_never_reads_and_breaks_the_protocol_is_dropped_after_write_timeout(start_engine):
    running = await start_engine(SCRIPT, maxSendQueue=64 * 1024 * 1024, writeTimeout=1)
    events, slow, slow_id = await watched_slow_client(running, b"news")
    for i in range(800):  # 8 MB the client never reads: more than the kernel buffers hold
        await running.engine.publish("news", b"%06d" % i + b"x" * 9994)
    await slow.send_frame(b"bare", masked=False)  # the server closes; its last frames cannot flush
    event = await receive_json(events, timeout=15)
    assert event["closed"] == slow_id
    assert "unmasked" in event["err"]
    slow.drop()
    assert running.engine.hub.get(slow_id) is None


async def test_a_publish_from_a_callback_comes_after_its_earlier_replies(start_engine):
    """The replies are held back while the read is handled; a publish reaching
    the same client from that callback waits behind them, not beside them."""
    running = await start_engine(SCRIPT)
    raw = await RawWebSocket.connect(running.engine.server_port(), running.path)
    await raw.send_text("news")
    assert (await raw.read_frame())[0] == OP_TEXT  # subscribed: its client id
    await raw.send_text("reply, then publish")
    assert await raw.read_frame() == (OP_TEXT, b"reply")
    assert await raw.read_frame() == (OP_TEXT, b"published")
    raw.drop()
