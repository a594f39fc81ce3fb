"""SPUBLISH through ShardedPubSub to a three-master Valkey cluster vs PUBLISH to
one Valkey server, from one Python process (issue 10, "Outgrowing one broker").

    .venv/bin/python bench/sharded_pubsub.py [--messages 100000] [--topics 1000] [--window 1000]

Both sides pipeline the same way (publishes written in call order on one
connection per server, replies read in order, `--window` in flight), and a
subscriber in another process receives every message, so the broker fans out
as it would in a grid. `single*` is the same single server through the grid's
own transport (connmix_py/grid/pubsub.py, its RESP client). Prints publishes/s (replies back), deliveries/s (last
message received) and each broker process's CPU seconds during the run.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redis.asyncio.connection import Connection  # noqa: E402

from connmix_py.grid.broker_url import parse_broker_url  # noqa: E402
from connmix_py.grid.pubsub import RedisPubSub  # noqa: E402
from connmix_py.grid.sharded import ShardedPubSub  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

WARM_UP = 2000  # publishes before the measured ones (connections and caches warm)
Publish = Callable[[str, bytes], Awaitable[int]]


class OneServerPublisher:
    """PUBLISH pipelined on one connection: the single-server counterpart of ShardedPubSub.publish."""

    def __init__(self, port: int) -> None:
        self.connection = Connection(host="127.0.0.1", port=port, protocol=2)
        self.replies: deque[asyncio.Future[int]] = deque()

    async def start(self) -> None:
        await self.connection.connect()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            reply = await self.connection.read_response(timeout=math.inf)
            self.replies.popleft().set_result(int(reply))

    async def publish(self, topic: str, data: bytes) -> int:
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.replies.append(waiter)
        await self.connection.send_packed_command(self.connection.pack_command("PUBLISH", topic, data),
                                                  check_health=False)
        return await waiter


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def subscriber(target: str, address: str, topics: list[str], expected: int, ready, done) -> None:
    """Another process: subscribe every topic, count messages until `expected` arrived."""
    async def run() -> None:
        got = 0
        finished = asyncio.Event()

        def count(topic: bytes, data: bytes) -> None:
            nonlocal got
            got += 1
            if got == expected:
                finished.set()
        if target.startswith("cluster"):
            transport = ShardedPubSub(parse_broker_url(address), on_message=count)
            await transport.start()
            transport.subscribe(topics)
            await asyncio.sleep(1.0)  # SSUBSCRIBEs confirmed (checked by the publisher's counts)
            ready.set()
            await finished.wait()
            await transport.close()
        else:
            import redis.asyncio as aioredis
            client = aioredis.Redis(host="127.0.0.1", port=int(address), protocol=2)
            pubsub = client.pubsub()
            await pubsub.subscribe(*topics)
            ready.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    count(message["channel"], message["data"])
                    if finished.is_set():
                        break
        done.set()
    asyncio.run(run())


async def publish_all(publish: Publish, topics: list[str], messages: int, window: int,
                      data: bytes) -> tuple[float, int]:
    """Seconds to get every reply, with `window` publishes in flight; the receivers counted."""
    limit = asyncio.Semaphore(window)
    receivers = 0

    async def one(n: int) -> None:
        nonlocal receivers
        try:
            got = await publish(topics[n % len(topics)], data)
            receivers += got
        finally:
            limit.release()
    started = time.perf_counter()
    tasks = []
    for n in range(messages):
        await limit.acquire()
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started, receivers


def measure(target: str, publish_factory, address: str, broker_pids: list[int], args) -> None:
    topics = [f"connmix:c:bench:{n}" for n in range(args.topics)]
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    process = context.Process(target=subscriber, args=(target, address, topics, WARM_UP + args.messages, ready, done))
    process.start()
    ready.wait(30)

    async def run() -> None:
        publisher, stop = await publish_factory()
        await publish_all(publisher, topics, WARM_UP, args.window, b"w")  # warm up (not counted)
        cpu_before = [cpu_seconds(pid) for pid in broker_pids]
        started = time.perf_counter()
        elapsed, receivers = await publish_all(publisher, topics, args.messages, args.window, b"x" * args.size)
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 60)
        delivered_in = time.perf_counter() - started
        cpu = [round(cpu_seconds(pid) - before, 2) for pid, before in zip(broker_pids, cpu_before, strict=True)]
        print(f"{target:8} {args.messages / elapsed:10,.0f} publishes/s  {args.messages / delivered_in:10,.0f} "
              f"deliveries/s  receivers {receivers}/{args.messages}  broker CPU s {cpu}", flush=True)
        await stop()
    asyncio.run(run())
    process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--window", type=int, default=1000, help="publishes in flight")
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    args = parser.parse_args()
    server, cluster = RedisServer(), RedisCluster()
    try:
        async def one_server():
            publisher = OneServerPublisher(server.port)
            await publisher.start()

            async def stop() -> None:
                publisher.reader.cancel()
                await publisher.connection.disconnect()
            return publisher.publish, stop

        async def one_server_transport():
            transport = RedisPubSub(parse_broker_url(f"redis://127.0.0.1:{server.port}/0"))
            await transport.start()
            return transport.publish, transport.close

        async def sharded():
            transport = ShardedPubSub(parse_broker_url(cluster.url))
            await transport.start()
            return transport.publish, transport.close
        print(f"{args.messages} publishes of {args.size} bytes over {args.topics} topics, "
              f"{args.window} in flight, one subscriber process", flush=True)
        measure("single", one_server, str(server.port), [server.process.pid], args)
        measure("single*", one_server_transport, str(server.port), [server.process.pid], args)
        measure("cluster", sharded, cluster.url, [n.process.pid for n in cluster.nodes if n.process], args)
    finally:
        server.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
