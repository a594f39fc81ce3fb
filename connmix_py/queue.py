"""mix.queue topics and their consumers.

Scripts push items; backends consume them over the WebSocket API
(``queue.pop``). The contract (SPEC section 6):

- every item goes to exactly one consumer of its topic, round robin;
- with no consumer able to take it, an item waits in its topic: at most
  ``topic_size`` items per topic and ``max_topics`` topics hold items; a push
  beyond either bound is refused with QueueFull, never dropped silently;
- an item leaves its topic only at the moment it is written to a consumer,
  so a consumer that goes away loses nothing that was not yet written to it.

Delivery is synchronous: a push hands the item to a consumer whose
``ready()`` is true, and ``deliver`` writes it right then. A consumer that
stops being ready (closing, or its send buffer is full) is skipped; when it
can take more it calls ``resume`` and the items waiting for it go out.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, NamedTuple, Protocol

from .metrics import Metrics


class QueueFull(Exception):
    pass


class QueueItem(NamedTuple):
    client_id: str | None  # the connection whose script pushed it
    data: Any


class Consumer(Protocol):
    topics: set[str]

    def ready(self) -> bool:
        """True when an item written now would reach the consumer."""

    def deliver(self, topic: str, item: QueueItem) -> None:
        """Write the item now (only called when ready() is true)."""


class Queues:
    def __init__(self, topic_size: int, max_topics: int, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.topic_size = topic_size
        self.max_topics = max_topics
        self.topics: dict[str, deque[QueueItem]] = {}  # only topics holding items
        # topic -> its consumers; the head is the next in the round robin.
        self.consumers: dict[str, deque[Consumer]] = {}

    # -- producing ---------------------------------------------------------------

    def push(self, topic: str, data: Any, client_id: str | None = None) -> int:
        """Queue one item and hand it out if a consumer can take it.
        Returns how many items the topic still holds."""
        self.metrics.queue_pushes += 1
        items = self.topics.get(topic)
        if items is None and topic in self.consumers and self._hand_over(topic, QueueItem(client_id, data)):
            return 0  # straight through: the bounds are for items that wait
        if items is None:
            if len(self.topics) >= self.max_topics:
                self.metrics.queue_refused += 1
                raise QueueFull(f"queue full: already {self.max_topics} topics (luavm.queue.maxTopics)")
            items = self.topics[topic] = deque()
        if len(items) >= self.topic_size:
            self.metrics.queue_refused += 1
            raise QueueFull(f"queue full: topic {topic!r} holds {self.topic_size} items (luavm.queue.topicSize)")
        items.append(QueueItem(client_id, data))
        if topic in self.consumers:
            self._dispatch(topic)
        return self.size(topic)

    def pop(self, topic: str) -> Any:
        """The data of the oldest item of topic; IndexError when it is empty."""
        items = self.topics.get(topic)
        if not items:
            raise IndexError(f"topic {topic!r} is empty")
        item = items.popleft()
        if not items:
            del self.topics[topic]
        return item.data

    def size(self, topic: str) -> int:
        items = self.topics.get(topic)
        return len(items) if items else 0

    # -- consuming ---------------------------------------------------------------

    def attach(self, consumer: Consumer, topics: Iterable[str]) -> None:
        """The consumer takes items of these topics from now on; what waits
        in them goes out at once, as far as the consumer can take it."""
        added = [t for t in topics if t not in consumer.topics]
        for topic in added:
            consumer.topics.add(topic)
            self.consumers.setdefault(topic, deque()).append(consumer)
        self._dispatch_all(added)

    def detach(self, consumer: Consumer) -> None:
        """Stop all consumption of this consumer; its topics keep their items
        (other consumers get them, or they wait)."""
        topics, consumer.topics = consumer.topics, set()
        for topic in topics:
            members = self.consumers.get(topic)
            if members is None:
                continue
            try:
                members.remove(consumer)
            except ValueError:
                pass
            if not members:
                del self.consumers[topic]
        # Items this consumer could not take may suit another one now.
        self._dispatch_all(topics)

    def resume(self, consumer: Consumer) -> None:
        """The consumer can take items again (its send buffer drained)."""
        self._dispatch_all(consumer.topics)

    def _dispatch_all(self, topics: Iterable[str]) -> None:
        for topic in list(topics):
            if topic in self.topics and topic in self.consumers:
                self._dispatch(topic)

    def _hand_over(self, topic: str, item: QueueItem) -> bool:
        """Deliver to the next ready consumer of topic; False if none is."""
        members = self.consumers[topic]
        for _ in range(len(members)):
            consumer = members[0]
            members.rotate(-1)
            if consumer.ready():
                consumer.deliver(topic, item)
                return True
        return False

    def _dispatch(self, topic: str) -> None:
        """Hand out waiting items, oldest first, while a consumer is ready."""
        items = self.topics[topic]
        while items and self._hand_over(topic, items[0]):
            items.popleft()
        if not items:
            del self.topics[topic]
