"""A /ws/v1 connection as a consumer of queue topics: ``queue.pop`` and
``queue.unpop``, and how items reach it.

Each item is written to the socket the moment the queue hands it out, as one
text frame ``{"e": "queue.pop", "p": {"n", "c", "t", "d"}, "id": null}``.
The consumer says it is not ready while its connection is closing or while
more than HIGH_WATER bytes wait unsent: the items then stay in their topic
(for another consumer, or until this one drains), rather than piling up in
a buffer that a consumer going away would lose.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
from aiohttp import web

from .. import frames
from ..queue import QueueItem, Queues
from .requests import ALREADY_CONSUMED, CONSUME_FAILED, UNPOP_FAILED, ApiError, invalid, params_object

HIGH_WATER = 256 * 1024  # unsent bytes at which delivery to a consumer pauses
LOW_WATER = HIGH_WATER // 2  # ... and resumes
# The transport tells nobody outside aiohttp when it drains, so a paused
# consumer looks again this often (only while paused: no cost otherwise).
DRAIN_POLL = 0.005


class ApiConsumer:
    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport,
                 queues: Queues, node_id: int) -> None:
        self.topics: set[str] = set()
        self.held = False  # True until the queue.pop reply is on the wire
        self.closed = False
        self.ws = ws
        self._transport = transport
        self._queues = queues
        self._node_id = node_id
        self._draining: asyncio.Task | None = None

    def ready(self) -> bool:
        if self.held or self.closed or self._draining is not None or self.ws.closed:
            return False
        transport = self._transport
        return not transport.is_closing() and transport.get_write_buffer_size() <= HIGH_WATER

    def deliver(self, topic: str, item: QueueItem) -> None:
        event = {"e": "queue.pop", "p": {"n": self._node_id, "c": item.client_id, "t": topic, "d": item.data},
                 "id": None}
        transport = self._transport
        transport.write(frames.text_frame(orjson.dumps(event)))
        if transport.get_write_buffer_size() > HIGH_WATER:
            self._draining = asyncio.ensure_future(self._wait_for_drain())

    @property
    def max_topics(self) -> int:
        return self._queues.max_topics

    def consume(self, topics: list[str]) -> None:
        """Take these topics too; nothing goes out before ``release``."""
        self.held = True
        self._queues.attach(self, topics)

    def release(self) -> None:
        """The queue.pop reply has been written: items may follow it."""
        self.held = False
        if not self.closed:
            self._queues.resume(self)

    def stop(self) -> None:
        """queue.unpop: stop all consumption; waiting items stay queued."""
        self._queues.detach(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queues.detach(self)
        if self._draining is not None:
            self._draining.cancel()

    async def _wait_for_drain(self) -> None:
        transport = self._transport
        try:
            while not self.closed and not transport.is_closing() \
                    and transport.get_write_buffer_size() > LOW_WATER:
                await asyncio.sleep(DRAIN_POLL)
        finally:
            self._draining = None
        if not self.closed:
            self._queues.resume(self)

    def __repr__(self) -> str:
        return f"<ApiConsumer {sorted(self.topics)}>"


def queue_pop(consumer: ApiConsumer, params: Any) -> dict[str, bool]:
    # CONNMIX's PHP client sends the topics as the params themselves.
    topics = params if isinstance(params, list) else params_object(params).get("t")
    if not isinstance(topics, list) or not topics:
        raise invalid("t must be a non-empty array of topics")
    for i, topic in enumerate(topics):
        if not isinstance(topic, str) or not topic:
            raise invalid(f"t[{i}] must be a non-empty string")
    if len(set(topics)) != len(topics):
        raise invalid("t lists a topic twice")
    taken = [topic for topic in topics if topic in consumer.topics]
    if taken:
        raise ApiError(ALREADY_CONSUMED, f"topic {taken[0]!r} is already consumed by this connection")
    if consumer.closed or consumer.ws.closed:
        raise ApiError(CONSUME_FAILED, "consumption failed: the connection is closing")
    max_topics = consumer.max_topics
    if len(consumer.topics) + len(topics) > max_topics:
        raise ApiError(CONSUME_FAILED, f"consumption failed: a connection consumes at most "
                                       f"{max_topics} topics (luavm.queue.maxTopics)")
    consumer.consume(topics)
    # Items go out only after this reply: the reply is written before the
    # handler next yields to the event loop, and call_soon runs after that.
    asyncio.get_running_loop().call_soon(consumer.release)
    return {"s": True}


def queue_unpop(consumer: ApiConsumer, params: Any) -> dict[str, bool]:
    if params is not None and not isinstance(params, dict):
        raise invalid("params must be a JSON object")
    if not consumer.topics:
        raise ApiError(UNPOP_FAILED, "unpop failed: this connection consumes no topic")
    consumer.stop()
    return {"s": True}


# Methods bound to the connection they arrive on.
METHODS: dict[str, Callable[[ApiConsumer, Any], Any]] = {
    "queue.pop": queue_pop,
    "queue.unpop": queue_unpop,
}
