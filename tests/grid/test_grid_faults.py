"""Faults of a grid of engine processes: a node SIGKILLed mid-traffic, the
broker stopped and started again mid-traffic, garbage on the broker."""
from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp
import orjson

from connmix_py.grid.keys import channel_topic, node_inbox, node_key
from tests.grid.conftest import api
from tests.waiting import until


class Publisher:
    """POSTs a publish of "1", "2", ... to a node until stopped; keeps each reply."""

    def __init__(self, session: aiohttp.ClientSession, node, channel: str) -> None:
        self.session, self.node, self.channel = session, node, channel
        self.replies: list[dict] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            body = {"c": self.channel, "d": str(len(self.replies) + 1)}
            self.replies.append(await api(self.session, self.node, "/v1/mesh/publish", body))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def received(client, at_least: int) -> list[int]:
    """The publisher's numbers a client got, until at_least of them."""
    numbers: list[int] = []
    while len(numbers) < at_least:
        numbers.append(int(await client.text()))
    return numbers


async def health(session, node) -> dict:
    async with session.get(node.api_url + "/healthz") as resp:
        return await resp.json()


async def test_sigkill_of_a_node_takes_only_its_connections(grid, connect, session):
    a, b, c = await grid.start_node(), await grid.start_node(), await grid.start_node()
    on_a, on_b, on_c = await connect(a), await connect(b), await connect(c)
    for client in (on_a, on_b, on_c):
        await client.subscribe("feed")
    await grid.wait_subscribed("feed", 3)
    publisher = Publisher(session, a, "feed")
    try:
        await until(lambda: len(publisher.replies) >= 5, "publishes before the kill")
        assert publisher.replies[-1]["r"] == {"s": 3, "f": 0}
        await c.kill()
        killed_at = len(publisher.replies)
        await until(lambda: len(publisher.replies) > killed_at + 10, "publishes after the kill")
    finally:
        await publisher.stop()
    assert all(reply["E"] is None for reply in publisher.replies)
    assert publisher.replies[-1]["r"] == {"s": 2, "f": 0}  # c's client is no longer counted
    last = len(publisher.replies)
    for client in (on_a, on_b):  # every number, in order, no reconnect
        numbers = await received(client, last)
        assert numbers == list(range(1, last + 1))
        assert not client.ws.closed
    # c's registration expires by its TTL; a and b stay registered
    await until_async(lambda: grid.records(), lambda records: {r["id"] for r in records} == {a.node_id, b.node_id},
                      "c's registration expired")


async def until_async(read, condition, what: str, timeout: float = 15) -> None:
    """Poll an async read until condition(value) holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition(value := await read()):
        assert loop.time() < deadline, f"not within {timeout} s: {what} (last: {value!r})"
        await asyncio.sleep(0.1)


async def broker_gauge(session, node) -> str:
    async with session.get(node.api_url + "/metrics") as resp:
        return next(line for line in (await resp.text()).splitlines() if line.startswith("connmix_broker_connected"))


async def test_broker_down_local_delivery_goes_on_and_the_grid_comes_back(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    on_a, on_b = await connect(a), await connect(b)
    for client in (on_a, on_b):
        await client.subscribe("feed")
    await grid.wait_subscribed("feed", 2)
    assert await health(session, a) == {"status": "ok", "broker": "connected"}
    assert await broker_gauge(session, a) == "connmix_broker_connected 1.0"

    grid.broker.kill()
    await until_async(lambda: health(session, a), lambda h: h["broker"].startswith("down"), "a saw the outage")
    assert await broker_gauge(session, a) == "connmix_broker_connected 0.0"
    for i in range(5):  # local publishes go on, counted locally (at most once: b misses them)
        assert await api(session, a, "/v1/mesh/publish", {"c": "feed", "d": f"local {i}"}) == {
            "E": None, "r": {"s": 1, "f": 0}}
        assert await on_a.text() == f"local {i}"
    assert (await api(session, a, "/v1/mesh/send", {"c": on_b.id, "d": "x"}))["E"]["c"] == 401
    async with session.get(a.api_url + "/readyz") as resp:  # still ready: it serves its clients
        assert resp.status == 200
        assert (await resp.json())["broker"].startswith("down")
    assert await on_a.ask("id") == {"id": on_a.id}  # its script runs as ever

    await grid.broker.start_again()
    for node in (a, b):
        await until_async(lambda node=node: health(session, node), lambda h: h["broker"] == "connected",
                          f"{node.name} reconnected")
    await grid.wait_subscribed("feed", 2)  # every subscription restored
    await until_async(lambda: grid.records(), lambda records: len(records) == 2, "both registered again")
    assert await api(session, a, "/v1/mesh/publish", {"c": "feed", "d": "grid"}) == {"E": None,
                                                                                  "r": {"s": 2, "f": 0}}
    assert await on_a.text() == "grid"
    assert await on_b.text() == "grid"  # the same websocket: no client reconnected
    for node in (a, b):
        log = node.log_text()
        assert log.count("is down") == 1, log
        assert log.count("is back") == 1, log
        assert "Traceback" not in log


async def test_garbage_on_a_nodes_inbox_is_one_log_line(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    on_a, on_b = await connect(a), await connect(b)
    await on_a.subscribe("room")
    await grid.wait_subscribed("room", 1)
    redis = grid.broker.client()
    try:
        for garbage in (b"", b"\x01", b"not an envelope at all", b"\x01\x04" + b"\x00" * 10 + b"\xff\x01ab"):
            assert await redis.publish(node_inbox(a.node_id), garbage) == 1
        assert await redis.publish(channel_topic("room"), b"\x09junk") == 1
    finally:
        await redis.aclose()
    await until(lambda: a.log_text().count("dropped a message") == 5, "one line per bad message")
    assert "Traceback" not in a.log_text()
    assert await api(session, b, "/v1/mesh/publish", {"c": "room", "d": "fine"}) == {"E": None,
                                                                                 "r": {"s": 1, "f": 0}}
    assert await on_a.text() == "fine"
    assert await on_b.ask("send", to=on_a.id, data="still") == {"sent": True}
    assert await on_a.text() == "still"


async def test_a_stopped_node_unregisters_at_once(grid):
    a, b = await grid.start_node(), await grid.start_node()
    assert await b.stop() == 0
    assert {record["id"] for record in await grid.records()} == {a.node_id}
    assert await grid.topic_subscribers(node_inbox(b.node_id)) == 0


async def test_a_node_never_overwrites_a_claim_on_its_id_and_takes_it_back_when_free(grid):
    a = await grid.start_node()
    redis = grid.broker.client()
    try:
        await redis.set(node_key(a.node_id), '{"id": 1, "token": "someone else"}', px=60000)
        await until(lambda: "was claimed by another node" in a.log_text(), "a logged the lost claim")
        await asyncio.sleep(1.5)  # a heartbeat or more later, the newcomer's record stands
        assert orjson.loads(await redis.get(node_key(a.node_id)))["token"] == "someone else"
        assert a.log_text().count("was claimed by another node") == 1
        await redis.delete(node_key(a.node_id))  # the newcomer left: a registers again under its id
        await until(lambda: f"registered again as node {a.node_id}" in a.log_text(), "a registered again")
        assert orjson.loads(await redis.get(node_key(a.node_id)))["pid"] == a.process.pid
    finally:
        await redis.aclose()


async def test_a_broker_that_stops_answering_is_noticed_and_rejoined(grid, connect, session):
    """SIGSTOP: the broker's sockets stay open but nothing comes back; the
    subscriber connection's PING finds it out."""
    a, b = await grid.start_node(), await grid.start_node()
    on_a, on_b = await connect(a), await connect(b)
    for client in (on_a, on_b):
        await client.subscribe("feed")
    await grid.wait_subscribed("feed", 2)
    grid.broker.process.send_signal(signal.SIGSTOP)
    try:
        await until_async(lambda: health(session, a), lambda h: h["broker"].startswith("down"),
                          "a noticed the silent broker", timeout=20)
        assert await api(session, a, "/v1/mesh/publish", {"c": "feed", "d": "local"}) == {
            "E": None, "r": {"s": 1, "f": 0}}
        assert await on_a.text() == "local"
    finally:
        grid.broker.process.send_signal(signal.SIGCONT)
    for node in (a, b):
        await until_async(lambda node=node: health(session, node), lambda h: h["broker"] == "connected",
                          f"{node.name} reconnected", timeout=20)
    await grid.wait_subscribed("feed", 2)
    assert await api(session, b, "/v1/mesh/publish", {"c": "feed", "d": "grid"}) == {"E": None,
                                                                                  "r": {"s": 2, "f": 0}}
    assert await on_a.text() == "grid"
    assert await on_b.text() == "grid"
