"""ShardedPubSub against a real three-master Valkey cluster started by the tests."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.crc import key_slot

from connmix_py.grid.broker_url import parse_broker_url
from connmix_py.grid.sharded import ShardedPubSub
from connmix_py.grid.transport import BrokerDown
from tests.ports import reserved_port
from tests.redis_cluster import SLOT_RANGES, RedisCluster
from tests.waiting import until, within


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisCluster]:
    """For tests that leave the cluster as they found it."""
    cluster = RedisCluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """For tests that kill a master or move a slot."""
    cluster = RedisCluster()
    yield cluster
    cluster.stop()


class Receiver:
    """A started transport that records what it receives and its state changes."""

    def __init__(self, url: str) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.states: list[tuple[bool, str]] = []
        self.transport = ShardedPubSub(parse_broker_url(url))
        self.transport.on_message = lambda topic, data: self.messages.append((topic, data))
        self.transport.on_state = lambda up, why: self.states.append((up, why))

    def back(self) -> bool:
        """The last state change said up again."""
        return self.states[-1:] == [(True, "")]

    def got(self, topic: str) -> list[bytes]:
        return [data for t, data in self.messages if t == topic.encode()]


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        await receiver.transport.close()


async def started(url: str, receivers: list[Receiver]) -> Receiver:
    receiver = Receiver(url)
    await receiver.transport.start()
    receivers.append(receiver)
    return receiver


async def sender_and_receiver(url: str, receivers: list[Receiver], topics: list[str]) -> tuple[Receiver, Receiver]:
    """Two started transports, the second subscribed to the topics (confirmed by the first's publishes)."""
    sender = await started(url, receivers)
    receiver = await started(url, receivers)
    receiver.transport.subscribe(topics)
    await wait_subscribed(sender, topics)
    return sender, receiver


def topic_in_range(first: int, last: int, prefix: str = "connmix:c:t") -> str:
    """A topic whose slot is within [first, last]."""
    n = 0
    while not first <= key_slot(f"{prefix}{n}".encode()) <= last:
        n += 1
    return f"{prefix}{n}"


def topic_per_shard(prefix: str = "connmix:c:t") -> list[str]:
    return [topic_in_range(first, last, prefix) for first, last in SLOT_RANGES]


async def wait_subscribed(sender: Receiver, topics: list[str], count: int = 1) -> None:
    """Until a publish on each topic reaches `count` broker subscribers (SSUBSCRIBE is
    sent in the background; after an outage the sender may still be reconnecting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    for topic in topics:
        while await probe(sender, topic) != count:
            if loop.time() > deadline:
                pytest.fail(f"{topic}: not {count} subscribers within 20 s")
            await asyncio.sleep(0.02)


async def probe(sender: Receiver, topic: str) -> int | None:
    try:
        return await sender.transport.publish(topic, b"probe")
    except BrokerDown:
        return None


async def test_topics_spread_over_all_three_shards(shared_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    receiver = await started(shared_cluster.url, receivers)
    topics = [f"connmix:c:user:{n}" for n in range(3000)]
    receiver.transport.subscribe(topics)  # one burst: one write per shard
    shards = {receiver.transport.shard_of(topic) for topic in topics}
    assert shards == {node.addr for node in shared_cluster.nodes}
    await wait_subscribed(receiver, topics[:50])
    # Every master carries only its own slots' topics, and every topic is carried.
    carried = 0
    for node in shared_cluster.nodes:
        with node.client() as client:
            own = [t for t in topics if receiver.transport.shard_of(t) == node.addr]
            counts = client.execute_command("PUBSUB", "SHARDNUMSUB", *own)
            assert all(int(n) == 1 for n in counts[1::2]), node.addr
            carried += len(own)
    assert carried == len(topics)
    # redis-py's own cluster client sees the same: SPUBLISH of any of them reaches one subscriber
    cluster_client = redis.RedisCluster(host="127.0.0.1", port=shared_cluster.nodes[1].port, protocol=2)
    try:
        assert [cluster_client.spublish(t, b"x") for t in topics[-30:]] == [1] * 30
    finally:
        cluster_client.close()
    async with within(10, "the 30 messages published from outside"):
        while sum(len(receiver.got(t)) for t in topics[-30:]) < 30:
            await asyncio.sleep(0.02)


async def test_publish_counts_broker_subscribers(shared_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    first = await started(shared_cluster.url, receivers)
    second = await started(shared_cluster.url, receivers)
    both, one = topic_per_shard("connmix:c:count")[:2]
    first.transport.subscribe([both, one])
    first.transport.subscribe([both])  # subscribed twice is subscribed once
    second.transport.subscribe([both])
    await wait_subscribed(first, [both], count=2)
    await wait_subscribed(first, [one], count=1)
    assert await second.transport.publish("connmix:c:nobody", b"x") == 0
    assert await second.transport.publish(both, b"hello") == 2
    async with within(10, "both receivers got the publish"):
        while b"hello" not in first.got(both) or b"hello" not in second.got(both):
            await asyncio.sleep(0.02)
    second.transport.unsubscribe([both])
    await wait_subscribed(first, [both], count=1)
    first.transport.unsubscribe([both, one])
    await wait_subscribed(first, [both, one], count=0)


async def test_publishes_arrive_in_call_order(shared_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    topics = topic_per_shard("connmix:c:order")
    sender, receiver = await sender_and_receiver(shared_cluster.url, receivers, topics)
    # Not awaited one by one: the calls overlap, their order is the call order.
    calls = [sender.transport.publish(topics[n % 3], str(n).encode()) for n in range(1500)]
    assert await asyncio.gather(*calls) == [1] * 1500
    async with within(10, "1500 messages"):
        while sum(len(receiver.got(t)) for t in topics) < 1500 + len(topics):
            await asyncio.sleep(0.02)
    for k, topic in enumerate(topics):
        numbers = [int(d) for d in receiver.got(topic) if d != b"probe"]
        assert numbers == list(range(k, 1500, 3))


async def test_a_moved_slot_takes_its_topics_to_the_new_master(
        own_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    topic, neighbour = topic_per_shard("connmix:c:move")[:2]
    sender, receiver = await sender_and_receiver(own_cluster.url, receivers, [topic, neighbour])
    slot = key_slot(topic.encode())
    new_owner = own_cluster.nodes[2]
    own_cluster.move_slot(slot, new_owner)
    # The old master dropped the channel (SUNSUBSCRIBE); the receiver follows the
    # slot, and the sender's next publish meets MOVED, reads the map and resends.
    await until(lambda: receiver.transport.shard_of(topic) == new_owner.addr, "the receiver read the new map")
    await wait_subscribed(sender, [topic, neighbour])
    assert sender.transport.shard_of(topic) == new_owner.addr
    assert await sender.transport.publish(topic, b"after the move") == 1
    async with within(10, "the publish after the move"):
        while b"after the move" not in receiver.got(topic):
            await asyncio.sleep(0.02)
    with new_owner.client() as client:
        assert client.execute_command("PUBSUB", "SHARDNUMSUB", topic)[1] == 1


async def test_a_killed_master_comes_back_with_every_subscription(
        own_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    topics = topic_per_shard("connmix:c:kill")
    sender, receiver = await sender_and_receiver(own_cluster.url, receivers, topics)
    victim = own_cluster.nodes[1]
    victim.kill()
    await until(lambda: receiver.states[:1] and not receiver.states[0][0], "the receiver reported the outage")
    assert victim.addr in receiver.states[0][1]
    # The other shards keep carrying their topics meanwhile.
    assert await sender.transport.publish(topics[0], b"during") == 1
    with pytest.raises(BrokerDown):
        await sender.transport.publish(topics[1], b"lost")
    receiver.transport.subscribe(["connmix:c:later:" + topics[1]])  # wanted while down: kept
    victim.start()
    await until(receiver.back, "the receiver reported the broker back", timeout=20)
    assert [up for up, _ in receiver.states] == [False, True]  # once down, once back
    await wait_subscribed(sender, topics + ["connmix:c:later:" + topics[1]])
    assert await sender.transport.publish(topics[1], b"after") == 1
    async with within(10, "the publish after the restart"):
        while b"after" not in receiver.got(topics[1]) or b"during" not in receiver.got(topics[0]):
            await asyncio.sleep(0.02)


async def test_start_without_a_cluster_is_broker_down() -> None:
    with reserved_port() as port:
        transport = ShardedPubSub(parse_broker_url(f"redis+cluster://127.0.0.1:{port}"))
        with pytest.raises(BrokerDown, match=f"127.0.0.1:{port}"):
            await transport.start()


async def test_a_hung_master_is_noticed_by_ping_and_rejoined(
        own_cluster: RedisCluster, receivers: list[Receiver]) -> None:
    topics = topic_per_shard("connmix:c:hang")
    sender, receiver = await sender_and_receiver(own_cluster.url, receivers, topics)
    hung = own_cluster.nodes[2]
    hung.pause()  # its sockets stay open: only the keepalive PING can tell
    try:
        await until(lambda: receiver.states[:1] and not receiver.states[0][0], "the receiver noticed the hang")
        assert "PING" in receiver.states[0][1]
        assert await sender.transport.publish(topics[0], b"meanwhile") == 1
    finally:
        hung.resume()
    await until(receiver.back, "the receiver rejoined the master", timeout=20)
    await wait_subscribed(sender, topics)
    assert b"meanwhile" in receiver.got(topics[0])


async def test_a_password_reaches_every_master(receivers: list[Receiver]) -> None:
    cluster = RedisCluster(password="s3cret")
    try:
        topics = topic_per_shard("connmix:c:auth")
        await sender_and_receiver(cluster.url, receivers, topics)  # every master took AUTH
        wrong = ShardedPubSub(parse_broker_url(cluster.url.replace("s3cret", "wrong")))
        with pytest.raises(BrokerDown) as refused:
            await wrong.start()
        assert "wrong" not in str(refused.value) and "\n" not in str(refused.value)
    finally:
        cluster.stop()
