"""PubSubTransport over one Redis/Valkey server (see transport.py's contract).

Two connections: one subscriber (every wanted topic, messages read by one
task, so they are handed on in the broker's order) and one publisher
(PUBLISH commands written back to back without waiting, replies matched in
order: pipelining, and one publisher's messages reach the broker in call
order). Subscription changes are gathered for SUBSCRIBE_BATCH_SECONDS and
sent as one SUBSCRIBE / UNSUBSCRIBE each, so 10k clients subscribing cost
a few commands, not 10k round trips.

When either connection is lost both are closed, the outage is reported
once, and a reconnect is tried after a backoff that doubles (with jitter, so
a grid's nodes do not all knock at once on a restarted broker) up to
BACKOFF_MAX_SECONDS; the new subscriber connection subscribes to every
wanted topic before the transport says it is up again.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

from .broker_url import BrokerUrl
from .resp import CONNECT_TIMEOUT, RespConnection, RespError, keep_alive
from .transport import BrokerDown, MessageHandler, StateHandler

log = logging.getLogger("connmix.grid")

SUBSCRIBE_BATCH_SECONDS = 0.005  # subscription changes gathered into one command
TOPICS_PER_COMMAND = 5000  # one SUBSCRIBE carries at most this many topics
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# The subscriber connection says PING this often when it has nothing else
# to read, so a broker that vanished without closing the socket is noticed.
KEEPALIVE_SECONDS = 2.0


def _ignore_message(topic: bytes, data: bytes) -> None:
    pass


def _ignore_state(up: bool, why: str) -> None:
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class RedisPubSub:
    def __init__(self, url: BrokerUrl) -> None:
        self.url = url
        self.on_message: MessageHandler = _ignore_message
        self.on_state: StateHandler = _ignore_state
        self.wanted: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._subscriber: RespConnection | None = None
        self._publisher: RespConnection | None = None
        self._replies: deque[asyncio.Future[int]] = deque()
        self._task: asyncio.Task | None = None
        self.up = False

    # -- lifetime ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._connect()
        except (OSError, EOFError, RespError, TimeoutError) as exc:
            raise BrokerDown(f"engine.broker: cannot reach {self.url.display}: {_reason(exc)}") from None
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._disconnect("closed")
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    async def _connect(self) -> None:
        subscriber = await RespConnection.open(self.url)
        try:
            publisher = await RespConnection.open(self.url)
        except BaseException:
            subscriber.close()
            raise
        self._subscriber, self._publisher = subscriber, publisher
        try:
            await self._restore(subscriber)
        except BaseException:
            self._disconnect("lost while subscribing")
            raise
        self.up = True

    async def _restore(self, conn: RespConnection) -> None:
        """Subscribe to every wanted topic and wait until the broker confirms
        them all: up means a PUBLISH to any of them reaches this node."""
        pending = set(self.wanted)
        self._to_subscribe, self._to_unsubscribe = set(pending), set()
        self._flush()
        async with asyncio.timeout(CONNECT_TIMEOUT + len(pending) / 10000):
            while pending:
                reply = await conn.read()
                if isinstance(reply, list) and len(reply) == 3:
                    if reply[0] == b"subscribe":
                        pending.discard(reply[1].decode())
                    elif reply[0] == b"message":
                        self.on_message(reply[1], reply[2])

    async def _run(self) -> None:
        while True:
            why = await self._serve()
            self._disconnect(why)
            self.on_state(False, why)
            delay = BACKOFF_FIRST_SECONDS
            while True:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                try:
                    await self._connect()
                    break
                except (OSError, EOFError, RespError, TimeoutError) as exc:
                    log.debug("broker %s: reconnect failed: %s", self.url.display, _reason(exc))
                    delay = min(delay * 2, BACKOFF_MAX_SECONDS)
            self.on_state(True, "")

    async def _serve(self) -> str:
        """Read both connections until one is lost; why it was."""
        assert self._subscriber is not None and self._publisher is not None
        readers = [asyncio.create_task(self._read_messages(self._subscriber)),
                   asyncio.create_task(keep_alive(self._subscriber, KEEPALIVE_SECONDS)),
                   asyncio.create_task(self._read_replies(self._publisher))]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for reader in readers:
                reader.cancel()
        exc = next(iter(done)).exception()
        return _reason(exc) if exc is not None else "the connection ended"

    def _disconnect(self, why: str) -> None:
        self.up = False
        for conn in (self._subscriber, self._publisher):
            if conn is not None:
                conn.close()
        self._subscriber = self._publisher = None
        replies, self._replies = self._replies, deque()
        for reply in replies:
            if not reply.done():
                reply.set_exception(BrokerDown(why))

    # -- reading -----------------------------------------------------------------------

    async def _read_messages(self, conn: RespConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await conn.read()
            except RespError as exc:
                log.warning("broker %s refused a subscription: %s", self.url.display, exc)
                continue
            finally:
                conn.last_read = loop.time()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                try:
                    self.on_message(reply[1], reply[2])
                except Exception:
                    log.exception("broker message on %r", reply[1])

    async def _read_replies(self, conn: RespConnection) -> None:
        while True:
            try:
                reply: int | BaseException = await conn.read()
            except RespError as exc:
                reply = exc
            if not self._replies:
                raise ConnectionError("a reply nobody asked for")
            waiter = self._replies.popleft()
            if waiter.done():
                continue
            if isinstance(reply, BaseException):
                waiter.set_exception(BrokerDown(str(reply)))
            else:
                waiter.set_result(reply)

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, topics: list[str]) -> None:
        for topic in topics:
            if topic not in self.wanted:
                self.wanted.add(topic)
                self._to_unsubscribe.discard(topic)
                self._to_subscribe.add(topic)
        self._schedule_flush()

    def unsubscribe(self, topics: list[str]) -> None:
        for topic in topics:
            if topic in self.wanted:
                self.wanted.discard(topic)
                self._to_subscribe.discard(topic)
                self._to_unsubscribe.add(topic)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and (self._to_subscribe or self._to_unsubscribe):
            self._flush_handle = asyncio.get_running_loop().call_later(SUBSCRIBE_BATCH_SECONDS, self._flush)

    def _flush(self) -> None:
        """Send the gathered changes (kept for the next connection when down)."""
        self._flush_handle = None
        conn = self._subscriber
        if conn is None:
            return
        commands: list[tuple[bytes | str | int, ...]] = []
        for verb, topics in (("UNSUBSCRIBE", self._to_unsubscribe), ("SUBSCRIBE", self._to_subscribe)):
            ordered = sorted(topics)
            for start in range(0, len(ordered), TOPICS_PER_COMMAND):
                commands.append((verb, *ordered[start:start + TOPICS_PER_COMMAND]))
        self._to_subscribe, self._to_unsubscribe = set(), set()
        if commands:
            conn.write(*commands)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> int:
        conn = self._publisher
        if conn is None or not self.up:
            raise BrokerDown("the broker is not connected")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._replies.append(waiter)
        conn.write(("PUBLISH", topic, data))
        return await waiter
