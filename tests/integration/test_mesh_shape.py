"""The Mesh as the grid's only door (issue 10, "First, the shape"): the Hub
reports a channel's first and last local subscriber, the Mesh tells its
broker only those edges whichever way a subscription changes (Lua, conn.call,
a connection closing), publish and send are awaited (mix.mesh.publish and
mix.mesh.send are waiting calls in Lua), and the in-process broker's publish
completes without suspending."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from connmix_py.conn import Connection
from connmix_py.hub import Hub
from connmix_py.mesh import Broker, InProcessBroker, Mesh
from tests.luahelp import EVAL_SCRIPT, ask
from tests.tcp_client import TcpClient
from tests.waiting import until


class RecordingBroker:
    """A Broker (the protocol a Redis broker will implement) that records the
    edges it is told of and delivers in-process; ``hold`` makes publish and
    send wait until it is set, as a round trip to a broker would."""

    def __init__(self, hub: Hub) -> None:
        self.local = InProcessBroker(hub)
        self.edges: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None

    def subscribe(self, channel: str) -> None:
        self.edges.append(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self.edges.append(("unsubscribe", channel))

    async def _round_trip(self) -> None:
        if self.hold is not None:
            await self.hold.wait()

    async def publish(self, channel: str, data: bytes, binary: bool) -> tuple[int, int]:
        await self._round_trip()
        return await self.local.publish(channel, data, binary)

    async def send(self, client_id: str, data: bytes, binary: bool) -> bool:
        await self._round_trip()
        return await self.local.send(client_id, data, binary)

    async def call(self, client_id: str, name: str, argument: Any) -> bool:
        return await self.local.call(client_id, name, argument)


def recording(running) -> RecordingBroker:
    """Put a recording broker behind the running engine's Mesh."""
    broker: Broker = RecordingBroker(running.engine.hub)
    running.engine.mesh.broker = broker
    return broker  # type: ignore[return-value]


def bare_connection(client_id: str) -> Connection:
    return Connection(client_id, None, "127.0.0.1:1", 1 << 20, 0, 0)


# -- the Hub's edges ----------------------------------------------------------------


async def test_the_hub_reports_a_channels_first_and_last_local_subscriber():
    hub = Hub()
    a, b = bare_connection("1"), bare_connection("2")
    hub.add(a)
    hub.add(b)
    assert hub.subscribe(a, "room") is True
    assert hub.subscribe(b, "room") is False
    assert hub.subscribe(a, "room") is False  # already in: no edge
    assert hub.unsubscribe(a, "room") is False
    assert hub.unsubscribe(a, "room") is False  # not in any more: no edge
    assert hub.unsubscribe(b, "room") is True
    assert hub.subscribe(a, "room") is True  # empty again, then first again


async def test_removing_a_connection_reports_only_the_channels_it_was_last_in():
    hub = Hub()
    a, b = bare_connection("1"), bare_connection("2")
    hub.add(a)
    hub.add(b)
    for channel in ("shared", "a-only", "a-too"):
        hub.subscribe(a, channel)
    hub.subscribe(b, "shared")
    hub.subscribe(b, "b-only")
    assert sorted(hub.remove(a)) == ["a-only", "a-too"]
    assert sorted(hub.remove(b)) == ["b-only", "shared"]
    assert hub.stats() == {"connections": 0, "channels": 0, "subscriptions": 0}


# -- the Mesh tells the broker only edges, whichever door ------------------------------


async def test_the_broker_hears_only_edges_from_lua_conn_call_and_closing(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    broker = recording(running)
    first, second = await running.connect(), await running.connect()
    second_id = (await ask(second, "return conn:client_id()"))[0]
    assert await ask(first, 'return conn:subscribe("room", "solo")') == ["<nil>"]
    assert await ask(second, 'return conn:subscribe("room")') == ["<nil>"]  # not the first
    reply = await running.api("/v1/conn/call", {"c": second_id, "f": "subscribe", "a": ["api", "room"]})
    assert reply == {"E": None, "r": {"s": True}}
    assert broker.edges == [("subscribe", "room"), ("subscribe", "solo"), ("subscribe", "api")]
    broker.edges.clear()
    assert await ask(first, 'return conn:unsubscribe("room")') == ["<nil>"]  # second is still in
    assert broker.edges == []
    await first.close()  # it was the last in "solo" only
    await until(lambda: running.engine.stats()["connections"] == 1, "the first connection removed")
    assert broker.edges == [("unsubscribe", "solo")]
    reply = await running.api("/v1/conn/call", {"c": second_id, "f": "unsubscribe", "a": ["api"]})
    assert reply == {"E": None, "r": {"s": True}}
    await second.close()
    await until(lambda: running.engine.stats()["connections"] == 0, "both connections removed")
    assert broker.edges == [("unsubscribe", "solo"), ("unsubscribe", "api"), ("unsubscribe", "room")]


# -- publish and send are awaited ---------------------------------------------------------


async def test_the_in_process_publish_completes_without_suspending():
    hub = Hub()
    mesh = Mesh(hub)
    conn = bare_connection("1")
    hub.add(conn)
    mesh.subscribe(conn, "room")
    for pending in (mesh.publish("room", b"hi"), mesh.send("1", b"hi"), mesh.send("2", b"hi")):
        with pytest.raises(StopIteration):  # finished at the first step: no task, no loop round trip
            pending.send(None)


async def test_mix_mesh_publish_waits_and_other_connections_are_served_meanwhile(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    broker = recording(running)
    subscriber, publisher, other = await running.connect(), await running.connect(), await running.connect()
    assert await ask(subscriber, 'return conn:subscribe("room")') == ["<nil>"]
    target = (await ask(subscriber, "return conn:client_id()"))[0]
    broker.hold = asyncio.Event()
    await publisher.send_str('return mix.mesh.publish("room", "hello")')
    assert await ask(other, "return 1 + 1") == [2]  # served while the publish waits
    broker.hold.set()
    assert (await publisher.receive(timeout=5)).json() == [1, 0]
    assert (await subscriber.receive(timeout=5)).data == "hello"
    broker.hold = asyncio.Event()
    await publisher.send_str(f'return mix.mesh.send("{target}", "just you")')
    assert await ask(other, "return 2 + 2") == [4]
    broker.hold.set()
    assert (await publisher.receive(timeout=5)).json() == ["<nil>"]
    assert (await subscriber.receive(timeout=5)).data == "just you"


async def test_a_loop_of_publishes_on_one_node_stays_one_slice_under_the_cpu_budget(start_engine, caplog):
    # The in-process broker finishes at once, so mix.mesh.publish does not
    # yield: a yield per publish would start a fresh budget each time and a
    # runaway loop would hold the event loop for ever.
    running = await start_engine(EVAL_SCRIPT, luavm={"cpuBudget": 0.3})
    runaway, other = await running.connect(), await running.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await runaway.send_str('while true do mix.mesh.publish("room", "x") end')
        closed = await runaway.receive(timeout=10)
    assert closed.type.name == "CLOSE"
    assert "callback exceeded its Lua CPU budget of 0.3s" in caplog.text
    assert await ask(other, "return 1 + 1") == [2]


async def test_mix_mesh_send_to_an_unknown_client_still_returns_one_error(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    ws = await running.connect()
    assert await ask(ws, 'return mix.mesh.send("999", "x")') == \
        ["send failed: client 999 not found or closed"]
    assert await ask(ws, 'return mix.mesh.send("", "x")') == \
        ["bad argument #1 to 'send' (non-empty client id string expected, got string)"]


async def test_engine_publish_and_send_are_coroutines_through_the_broker(start_engine):
    running = await start_engine(EVAL_SCRIPT)
    broker = recording(running)
    ws = await running.connect()
    assert await ask(ws, 'return conn:subscribe("room")') == ["<nil>"]
    client_id = (await ask(ws, "return conn:client_id()"))[0]
    broker.hold = asyncio.Event()
    publishing = asyncio.ensure_future(running.engine.publish("room", "from python"))
    await asyncio.sleep(0.05)
    assert not publishing.done()  # waits on the broker's round trip
    broker.hold.set()
    assert await publishing == (1, 0)
    assert (await ws.receive(timeout=5)).data == "from python"
    assert await running.engine.send(client_id, "direct") is True
    assert (await ws.receive(timeout=5)).data == "direct"


CLOSE_PUBLISHER = EVAL_SCRIPT + """
function on_close(client_id, err)
    local s, f = mix.mesh.publish("events", "closed " .. client_id)
    mix.mesh.publish("events", "counted " .. tostring(s) .. " " .. tostring(f))
end
"""


async def test_on_close_may_publish_and_gets_the_counts(start_engine):
    running = await start_engine(CLOSE_PUBLISHER)
    watcher, leaving = await running.connect(), await running.connect()
    assert await ask(watcher, 'return conn:subscribe("events")') == ["<nil>"]
    leaving_id = (await ask(leaving, "return conn:client_id()"))[0]
    await leaving.close()
    assert (await watcher.receive(timeout=5)).data == f"closed {leaving_id}"
    assert (await watcher.receive(timeout=5)).data == "counted 1 0"


# -- protocol_* callbacks cannot wait, so they cannot publish --------------------------

PROTOCOL_PUBLISHER = r"""
function protocol_input(buf, c)
    local data = buf:tostring()
    local length = data:find("\n", 1, true) or 0  -- 0: wait for the rest of the line
    if data:sub(1, length) == "pub-in-input\n" then
        mix.mesh.publish("room", "from protocol_input")
    end
    return length
end

function protocol_encode(str, c)
    if str == "pub-in-encode" then
        mix.mesh.send(c:client_id(), "again")
    end
    return str .. "\n"
end

function on_message(line, c)
    line = line:sub(1, -2)
    if line == "sub" then
        c:subscribe("room")
        c:send("subscribed\n")
    elseif line:sub(1, 4) == "pub " then
        local s, f = mix.mesh.publish("room", line:sub(5))
        c:send("published " .. s .. " " .. f .. "\n")
    elseif line == "send-encode" then
        c:send(tostring(mix.mesh.send(c:client_id(), "pub-in-encode")) .. "\n")
    end
end
"""


async def test_protocol_encode_may_not_publish_but_protocol_input_may_on_one_node(start_engine, caplog):
    """protocol_encode runs inside a send or publish: publishing there is a
    clear error that fails that send only. protocol_input may publish when
    the broker needs no round trip (one node), as CONNMIX scripts do."""
    running = await start_engine(PROTOCOL_PUBLISHER, protocol="socket")
    port = running.engine.server_port()
    subscriber, publisher = await TcpClient.connect(port), await TcpClient.connect(port)
    await subscriber.send_line("sub")
    assert await subscriber.recv_line() == "subscribed"
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await subscriber.send_line("send-encode")  # protocol_encode's send fails that send only
        assert (await subscriber.recv_line()).startswith("send failed: client ")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "protocol_encode cannot wait (mix.http.request, mix.mesh.publish, mix.mesh.send" in logged
    await publisher.send_line("pub-in-input")
    assert await subscriber.recv_line() == "from protocol_input"
    await subscriber.send_line("pub still served")
    assert await subscriber.recv_line() == "still served"
    assert await subscriber.recv_line() == "published 1 0"


async def test_protocol_input_publishing_through_a_broker_that_waits_is_refused(start_engine, caplog):
    running = await start_engine(PROTOCOL_PUBLISHER, protocol="socket")
    broker = recording(running)
    broker.hold = asyncio.Event()  # as a broker's round trip: the publish cannot finish at once
    publisher = await TcpClient.connect(running.engine.server_port())
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await publisher.send_line("pub-in-input")
        await publisher.assert_closed()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "protocol_input cannot wait (mix.http.request, mix.mesh.publish, mix.mesh.send" in logged
    broker.hold.set()
