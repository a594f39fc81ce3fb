"""This engine as a grid node: the broker's pub/sub transport, the Mesh's
RedisBroker and the registration, started and stopped together."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..hub import Hub
from .broker_url import BrokerUrl
from .pubsub import RedisPubSub
from .redis_broker import RedisBroker
from .registry import Registry
from .sharded import ShardedPubSub
from .transport import PubSubTransport

log = logging.getLogger("connmix.grid")


def make_transport(url: BrokerUrl) -> PubSubTransport:
    """The pub/sub transport a broker URL calls for."""
    return ShardedPubSub(url) if url.cluster else RedisPubSub(url)


class GridNode:
    def __init__(self, url: BrokerUrl, hub: Hub, describe: Callable[[], dict[str, Any]]) -> None:
        self.url = url
        self.transport = make_transport(url)
        self.broker = RedisBroker(hub, self.transport, url.display)
        self.registry = Registry(url, describe)
        self._heartbeat: asyncio.Task | None = None
        self.joined = False

    async def join(self) -> int:
        """Claim a node id, then connect with this node's inbox subscribed
        (confirmed before this returns: no answer to it can be missed).
        Raises transport.BrokerDown (one line)."""
        node_id = await self.registry.claim()
        self.broker.listen(node_id)
        try:
            await self.transport.start()
        except BaseException:
            await self.registry.unregister()
            await self.registry.close()
            raise
        self.joined = True
        log.info("grid node %d on broker %s", node_id, self.url.display)
        return node_id

    async def announce(self) -> None:
        """The node listens now: publish its full record, keep it alive."""
        try:
            await self.registry.heartbeat()
        except Exception as exc:  # the heartbeat task tries again
            log.debug("first heartbeat failed: %s", exc)
        self._heartbeat = asyncio.create_task(self.registry.run())

    async def leave(self) -> None:
        """Unregister (other nodes and the center stop listing this node)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.joined:
            await self.registry.unregister()

    async def close(self) -> None:
        self.joined = False
        await self.broker.close()
        await self.registry.close()

    # -- health --------------------------------------------------------------------------

    def state(self) -> float:
        return 1.0 if self.broker.up else 0.0

    def health(self) -> dict[str, str]:
        if self.broker.up:
            return {"broker": "connected"}
        return {"broker": f"down: {self.broker.down_reason}"}
