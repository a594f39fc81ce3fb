"""mix.queue topics: bounded in-memory queues the scripts push to.

At most ``max_topics`` topics of at most ``topic_size`` items each; a push
beyond either bound is refused with QueueFull, never dropped silently.
"""
from __future__ import annotations

from collections import deque
from typing import Any


class QueueFull(Exception):
    pass


class Queues:
    def __init__(self, topic_size: int, max_topics: int) -> None:
        self.topic_size = topic_size
        self.max_topics = max_topics
        self.topics: dict[str, deque] = {}

    def push(self, topic: str, item: Any) -> int:
        """Append item; returns how many items the topic now holds."""
        items = self.topics.get(topic)
        if items is None:
            if len(self.topics) >= self.max_topics:
                raise QueueFull(f"queue full: already {self.max_topics} topics (luavm.queue.maxTopics)")
            items = self.topics[topic] = deque()
        if len(items) >= self.topic_size:
            raise QueueFull(f"queue full: topic {topic!r} holds {self.topic_size} items (luavm.queue.topicSize)")
        items.append(item)
        return len(items)

    def pop(self, topic: str) -> Any:
        """The oldest item of topic; IndexError when it is empty."""
        items = self.topics[topic] if topic in self.topics else deque()
        item = items.popleft()
        if not items:
            del self.topics[topic]
        return item

    def size(self, topic: str) -> int:
        items = self.topics.get(topic)
        return len(items) if items else 0
