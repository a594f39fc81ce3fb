"""What the Redis broker needs from pub/sub, so one broker runs over a single
server (PUBLISH/SUBSCRIBE) or a cluster (SPUBLISH/SSUBSCRIBE per shard).

Contract for every implementation:
- Messages of one topic are handed to ``on_message`` in the order the
  broker delivered them, from one task; publishes made by one caller on one
  topic reach the broker in call order (one connection, or one per shard).
- ``subscribe``/``unsubscribe`` take batches; a topic subscribed twice
  is subscribed once. They do not wait for the broker when it is down: the
  wanted set is kept and restored on the next connection.
- Losing the connection is reported through ``on_state(False, reason)``
  once; the transport reconnects by itself with backoff and jitter, restores
  every wanted subscription, then reports ``on_state(True, "")``.
- ``publish`` returns how many broker subscribers received the message
  (PUBLISH's / SPUBLISH's reply); raises ``BrokerDown`` when it cannot be
  sent now (the caller falls back to local delivery).
"""
from __future__ import annotations

from typing import Callable, Protocol

MessageHandler = Callable[[bytes, bytes], None]  # (topic, data)
StateHandler = Callable[[bool, str], None]  # (up, why it is down)


class BrokerDown(ConnectionError):
    """The broker cannot be reached now."""


class PubSubTransport(Protocol):
    on_message: MessageHandler
    on_state: StateHandler

    async def start(self) -> None:
        """Connect and start receiving; raises BrokerDown when the first
        connection fails (a node does not start without its broker)."""

    def subscribe(self, topics: list[str]) -> None:
        """Want these topics (sent to the broker in the background, batched)."""

    def unsubscribe(self, topics: list[str]) -> None:
        """No longer want these topics."""

    async def publish(self, topic: str, data: bytes) -> int:
        """Receivers of the message; raises BrokerDown."""
        ...

    async def close(self) -> None:
        """Stop receiving and reconnecting; release every connection."""
