"""Engine processes on a three-master Valkey cluster (engine.broker:
redis+cluster://): the grid's publish and send flow through sharded pub/sub."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from connmix_py.grid.keys import channel_topic, node_inbox
from tests.grid.conftest import ENTRY, api
from tests.grid_nodes import Grid
from tests.redis_cluster import SLOT_RANGES, RedisCluster
from tests.waiting import within


class ClusterBroker:
    """The Grid's broker as a cluster: the URL nodes get, a client for the registry's keys."""

    def __init__(self) -> None:
        self.cluster = RedisCluster()

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self) -> aioredis.RedisCluster:
        return aioredis.RedisCluster(host="127.0.0.1", port=self.cluster.nodes[0].port, protocol=2)


class ClusterGrid(Grid):
    """tests/grid_nodes.Grid with engine nodes whose broker is a cluster."""

    def __init__(self, tmp_path: Path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp_path, self.entry, self.ws_path, self.engine_extra = tmp_path, ENTRY, "/ws", {}
        self.broker = ClusterBroker()  # type: ignore[assignment]
        self.nodes = []

    async def topic_subscribers(self, topic: str) -> int:
        """PUBSUB SHARDNUMSUB on the master that serves the topic's slot."""
        slot = key_slot(topic.encode())
        for node, (first, last) in zip(self.broker.cluster.nodes, SLOT_RANGES, strict=True):  # type: ignore[attr-defined]
            if first <= slot <= last:
                client = aioredis.Redis(host="127.0.0.1", port=node.port, protocol=2)
                try:
                    return int((await client.execute_command("PUBSUB", "SHARDNUMSUB", topic))[1])
                finally:
                    await client.aclose()
        raise AssertionError(slot)

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
            node.release_ports()
        self.broker.cluster.stop()  # type: ignore[attr-defined]


@pytest.fixture
async def grid(tmp_path: Path) -> AsyncIterator[ClusterGrid]:
    made = ClusterGrid(tmp_path / "cluster-grid")
    yield made
    await made.close()


async def test_publish_counts_are_exact_across_nodes_on_a_cluster(grid, connect, session):
    a, b, c = await grid.start_node(), await grid.start_node(), await grid.start_node()
    assert len({record["id"] for record in await grid.records()}) == 3  # the registry on the cluster
    on_a, on_b, on_b2 = await connect(a), await connect(b), await connect(b)
    rooms = [f"room{n}" for n in range(30)]  # their topics spread over the three masters
    for client in (on_a, on_b, on_b2):
        await client.subscribe(*rooms)
    bystander = await connect(c)
    for room in rooms:
        await grid.wait_subscribed(room, 2)  # c has no subscriber: its node is not subscribed
    for room in rooms[:3]:
        assert await api(session, c, "/v1/mesh/publish", {"c": room, "d": f"http {room}"}) == {
            "E": None, "r": {"s": 3, "f": 0}}
        assert await bystander.ask("publish", channel=room, data=f"lua {room}") == {"s": 3, "f": 0}
    for client in (on_a, on_b, on_b2):
        assert [await client.text() for _ in range(6)] == [
            text for room in rooms[:3] for text in (f"http {room}", f"lua {room}")]
    # one publisher's messages on one channel arrive in order on every node
    assert await bystander.ask("publish", timeout=60, channel="room0", n=300) == {"s": 900, "f": 0}
    for client in (on_a, on_b, on_b2):
        assert [await client.text() for _ in range(300)] == [str(n) for n in range(1, 301)]


async def test_send_and_conn_call_reach_another_node_on_a_cluster(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    target, sender = await connect(b), await connect(a)
    assert await sender.ask("send", to=target.id, data="over lua") == {"sent": True}
    assert await target.text() == "over lua"
    reply = await api(session, a, "/v1/conn/call", {"c": target.id, "f": "subscribe", "a": ["called"]})
    assert reply == {"E": None, "r": {"s": True}}
    await grid.wait_subscribed("called", 1)
    assert await api(session, a, "/v1/mesh/publish", {"c": "called", "d": "hello"}) == {
        "E": None, "r": {"s": 1, "f": 0}}
    assert await target.text() == "hello"
    # b killed: its inbox has no subscriber, a answers the one-node code at once
    await b.kill()
    await grid.wait_topic(node_inbox(b.node_id), 0)
    assert (await api(session, a, "/v1/mesh/send", {"c": target.id, "d": "x"}))["E"]["c"] == 401
    async with within(15, "b's registration expired on the cluster"):
        while b.node_id in {record["id"] for record in await grid.records()}:
            await asyncio.sleep(0.1)


async def subscribed(grid, connect, channel: str, *nodes) -> list:
    """A client on each node subscribed to the channel, every node's broker subscription confirmed."""
    clients = [await connect(node) for node in nodes]
    for client in clients:
        await client.subscribe(channel)
    await grid.wait_subscribed(channel, len(nodes))
    return clients


async def broker_states(session, nodes) -> list[str]:
    """Each node's /healthz "broker" field."""
    states = []
    for node in nodes:
        async with session.get(node.api_url + "/healthz") as resp:
            states.append((await resp.json())["broker"])
    return states


async def test_a_killed_master_leaves_local_delivery_and_the_grid_comes_back(grid, connect, session):
    a, b = await grid.start_node(), await grid.start_node()
    on_a, on_b = await subscribed(grid, connect, "room", a, b)
    slot = key_slot(channel_topic("room").encode())
    master = next(node for node, (first, last) in zip(grid.broker.cluster.nodes, SLOT_RANGES, strict=True)
                  if first <= slot <= last)
    master.kill()
    async with within(15, "both nodes reported the broker down"):
        while not all(state.startswith("down") for state in await broker_states(session, (a, b))):
            await asyncio.sleep(0.05)
    # each node keeps serving its own connections
    assert await api(session, a, "/v1/mesh/publish", {"c": "room", "d": "local"}) == {"E": None,
                                                                                      "r": {"s": 1, "f": 0}}
    assert await on_a.text() == "local"
    master.start()
    async with within(20, "both nodes reported the broker back"):
        while await broker_states(session, (a, b)) != ["connected", "connected"]:
            await asyncio.sleep(0.05)
    await grid.wait_subscribed("room", 2)
    # the same websocket connections: nothing reconnected, grid delivery resumed
    assert await api(session, b, "/v1/mesh/publish", {"c": "room", "d": "grid"}) == {"E": None,
                                                                                     "r": {"s": 2, "f": 0}}
    assert await on_a.text() == "grid"
    assert await on_b.text() == "grid"  # b never got "local": at most once across the outage
