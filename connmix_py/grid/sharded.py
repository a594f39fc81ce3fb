"""The pub/sub transport over a Redis/Valkey Cluster: sharded pub/sub
(SSUBSCRIBE/SPUBLISH), so channels spread over the shards and the grid is not
capped by one broker process. Implements transport.PubSubTransport.

A topic's slot (CRC16 of its name, as Redis Cluster hashes keys) names the
shard master that carries it. Each master gets two connections: a subscriber
(SSUBSCRIBE/SUNSUBSCRIBE batched, one command per slot since a command's
channels must share one) and a publisher (SPUBLISH pipelined: written in call
order, replies read in order, so one caller's publishes on a topic stay in
order). The slot map is read at start (CLUSTER SLOTS) and again on MOVED, when
a server drops a moved slot's channels (it sends SUNSUBSCRIBE), and when a
shard's connection fails; topics then follow their slot to its new master.
The connections are the grid's own RESP connections (resp.py), as the
single-server transport's: an outage is seen here, never retried behind our back.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.crc import key_slot

from connmix_py.grid.broker_url import BrokerUrl
from connmix_py.grid.pubsub import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS, KEEPALIVE_SECONDS
from connmix_py.grid.resp import CONNECT_TIMEOUT, RespConnection, RespError, keep_alive
from connmix_py.grid.transport import BrokerDown, MessageHandler, StateHandler

log = logging.getLogger("connmix.grid")

SLOTS = 16384
REFRESH_SPACING = 0.1  # seconds between two slot map reads (a burst of MOVED reads once)
CHANNELS_PER_COMMAND = 1000  # SSUBSCRIBE/SUNSUBSCRIBE size bound
SLOT_CACHE_SIZE = 65536  # topic -> slot memo; cleared when full

Address = tuple[str, int]
# What a lost or unusable connection raises (RespConnection.open and read).
CONNECTION_ERRORS = (OSError, EOFError, TimeoutError, RespError)


class SlotMoved(Exception):
    """A master answered MOVED: the slot map is stale."""


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): exponential,
    with jitter so that nodes that lost the broker together do not return together."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** attempt) * random.uniform(0.5, 1.0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Command:
    """A SSUBSCRIBE/SUNSUBSCRIBE sent and not yet fully answered (one reply per channel, or one error)."""
    subscribe: bool
    topics: list[str]
    unanswered: int


@dataclass(eq=False)
class _Shard:
    """One shard master: the topics it should carry and its two connections."""
    address: Address
    want: set[str] = field(default_factory=set)  # wanted topics whose slot this master serves
    changed: set[str] = field(default_factory=set)  # topics to compare against `subscribed` at the next flush
    subscribed: set[str] = field(default_factory=set)  # asked for on the current subscriber connection
    sent: deque[_Command] = field(default_factory=deque)
    replies: deque[asyncio.Future[int]] = field(default_factory=deque)  # publishes awaiting SPUBLISH's reply
    subscriber: RespConnection | None = None
    publisher: RespConnection | None = None
    up: bool = False  # connected and every wanted topic confirmed once
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class ShardedPubSub:
    """transport.PubSubTransport over a cluster's sharded pub/sub."""

    def __init__(self, url: BrokerUrl, on_message: MessageHandler | None = None,
                 on_state: StateHandler | None = None) -> None:
        self.on_message: MessageHandler = on_message or (lambda topic, data: None)
        self.on_state: StateHandler = on_state or (lambda up, why: None)
        self._url = urlsplit(url.redis_py_url)
        self._seed: Address = (self._url.hostname or "127.0.0.1", self._url.port or 6379)
        self._display = url.display
        self._wanted: set[str] = set()
        self._slot_cache: dict[str, int] = {}
        self._owners: list[_Shard | None] = [None] * SLOTS
        self._shards: dict[Address, _Shard] = {}
        self._refresh_wanted = asyncio.Event()
        self._refreshed: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._reported_down = False
        self._all_up = asyncio.Event()
        self._closed = False

    # -- the transport contract ------------------------------------------------

    async def start(self) -> None:
        try:
            ranges = await self._read_slots([self._seed])
        except CONNECTION_ERRORS as exc:
            raise BrokerDown(f"engine.broker: cannot reach {self._display}: {exc}") from None
        self._apply(ranges)
        first_tries = [asyncio.ensure_future(self._connect(shard)) for shard in self._shards.values()]
        failures = [r for r in await asyncio.gather(*first_tries, return_exceptions=True) if r is not None]
        if failures:
            await self.close()
            raise BrokerDown(f"engine.broker: cannot reach {self._display}: {failures[0]}")
        for shard in self._shards.values():
            shard.task = asyncio.create_task(self._serve(shard, connected=True))
        self._refresher = asyncio.create_task(self._refresh_loop())
        # Up means a publish to any topic wanted so far reaches this transport.
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + len(self._wanted) / 10000):
                await self._all_up.wait()
        except TimeoutError:
            await self.close()
            raise BrokerDown(f"{self._display}: subscriptions not confirmed in time") from None

    def subscribe(self, topics: list[str]) -> None:
        for topic in topics:
            if topic not in self._wanted:
                self._wanted.add(topic)
                self._mark(topic, wanted=True)

    def unsubscribe(self, topics: list[str]) -> None:
        for topic in topics:
            if topic in self._wanted:
                self._wanted.discard(topic)
                self._mark(topic, wanted=False)

    async def publish(self, topic: str, data: bytes) -> int:
        try:
            return await self._publish_once(topic, data)
        except SlotMoved:
            # The slot moved since the map was read: read it again and send once
            # more to the new owner (publishes racing a resharding may reorder).
            await self._await_refresh()
            try:
                return await self._publish_once(topic, data)
            except SlotMoved as moved:
                raise BrokerDown(f"{self._display}: {moved}") from None

    async def close(self) -> None:
        self._closed = True
        tasks = [s.task for s in self._shards.values() if s.task] + ([self._refresher] if self._refresher else [])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for shard in self._shards.values():
            await self._disconnect(shard, "the transport closed")

    # -- slots and the map -----------------------------------------------------

    def slot(self, topic: str) -> int:
        slot = self._slot_cache.get(topic)
        if slot is None:
            if len(self._slot_cache) >= SLOT_CACHE_SIZE:
                self._slot_cache.clear()
            slot = self._slot_cache[topic] = key_slot(topic.encode())
        return slot

    def shard_of(self, topic: str) -> str | None:
        """host:port of the master carrying this topic, as the map says now."""
        shard = self._owners[self.slot(topic)]
        return shard.name if shard else None

    def _mark(self, topic: str, wanted: bool) -> None:
        shard = self._owners[self.slot(topic)]
        if shard is None:
            return  # a slot no master serves now: placed at the next map read
        if wanted:
            shard.want.add(topic)
        else:
            shard.want.discard(topic)
        shard.changed.add(topic)
        shard.dirty.set()

    async def _read_slots(self, candidates: Iterable[Address]) -> list[tuple[int, int, Address]]:
        """(first slot, last slot, master) from the first candidate that answers CLUSTER SLOTS."""
        error: Exception = BrokerDown("no cluster node to ask for the slot map")
        for address in candidates:
            try:
                connection = await self._open(address)
            except CONNECTION_ERRORS as exc:
                error = exc
                continue
            try:
                connection.write(("CLUSTER", "SLOTS"))
                answer = await connection.read()
            except CONNECTION_ERRORS as exc:
                error = exc
                continue
            finally:
                connection.close()
            ranges = []
            for first, last, master, *_replicas in answer:
                host = _text(master[0]) or address[0]  # "" : the node does not know its own address
                ranges.append((int(first), int(last), (host, int(master[1]))))
            return ranges
        raise error

    def _apply(self, ranges: list[tuple[int, int, Address]]) -> None:
        """Take a slot map: masters that joined get a shard, masters that serve
        no slot any more lose theirs, and every topic goes where its slot is."""
        owners: list[_Shard | None] = [None] * SLOTS
        for first, last, address in ranges:
            shard = self._shards.get(address)
            if shard is None:
                shard = self._shards[address] = _Shard(address)
                if self._refresher is not None:  # after start: a master that joined
                    shard.task = asyncio.create_task(self._serve(shard, connected=False))
            owners[first:last + 1] = [shard] * (last - first + 1)
        self._owners = owners
        serving = {id(s) for s in owners if s is not None}
        for address, shard in list(self._shards.items()):
            if id(shard) not in serving:
                del self._shards[address]
                if shard.task:
                    shard.task.cancel()
        for shard in self._shards.values():
            before = shard.want
            shard.want = set()
            shard.changed |= before
        for topic in self._wanted:
            owner = owners[self.slot(topic)]
            if owner is not None:
                owner.want.add(topic)
                owner.changed.add(topic)
        for shard in self._shards.values():
            shard.dirty.set()
        self._report()

    def _request_refresh(self) -> None:
        self._refresh_wanted.set()

    async def _await_refresh(self) -> None:
        if self._refreshed is None or self._refreshed.done():
            self._refreshed = asyncio.get_running_loop().create_future()
        waiter = self._refreshed
        self._request_refresh()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), CONNECT_TIMEOUT * 2)
        except TimeoutError:
            raise BrokerDown(f"{self._display}: the slot map could not be read") from None

    async def _refresh_loop(self) -> None:
        attempt = 0
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            candidates = [*self._shards, self._seed]
            try:
                ranges = await self._read_slots(dict.fromkeys(candidates))
            except CONNECTION_ERRORS as exc:
                log.debug("broker %s: slot map not read: %s", self._display, exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                self._refresh_wanted.set()
                continue
            attempt = 0
            self._apply(ranges)
            if self._refreshed is not None and not self._refreshed.done():
                self._refreshed.set_result(None)
            await asyncio.sleep(REFRESH_SPACING)

    # -- one shard's connections ----------------------------------------------

    async def _open(self, address: Address) -> RespConnection:
        """A connection to one master, with the URL's credentials and TLS."""
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        credentials = self._url.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{host}:{address[1]}" if credentials else f"{host}:{address[1]}"
        url = urlunsplit((self._url.scheme, netloc, "", self._url.query, ""))
        return await RespConnection.open(BrokerUrl(url=url, cluster=False, display=f"{host}:{address[1]}"))

    async def _connect(self, shard: _Shard) -> None:
        opened = await asyncio.gather(self._open(shard.address), self._open(shard.address),
                                      return_exceptions=True)
        failed = [result for result in opened if isinstance(result, BaseException)]
        if failed:
            for result in opened:
                if isinstance(result, RespConnection):
                    result.close()
            raise failed[0]
        shard.subscriber, shard.publisher = opened  # type: ignore[assignment]
        shard.subscribed = set()
        shard.sent.clear()
        shard.changed = set(shard.want)
        shard.dirty.set()

    async def _serve(self, shard: _Shard, connected: bool) -> None:
        """Keep one shard connected: run its readers and flusher, and after a
        failure reconnect with backoff (reading the slot map again meanwhile)."""
        attempt = 0
        while not self._closed:
            try:
                if not connected:
                    await self._connect(shard)
                connected = False
                attempt = 0
                assert shard.subscriber is not None
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read_messages(shard))
                    group.create_task(self._read_replies(shard))
                    group.create_task(self._flush_loop(shard))
                    group.create_task(keep_alive(shard.subscriber, KEEPALIVE_SECONDS))
            except* CONNECTION_ERRORS as failure:
                why = str(failure.exceptions[0]) or type(failure.exceptions[0]).__name__
                await self._disconnect(shard, why)
                self._request_refresh()  # a failover may have moved the slots elsewhere
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            finally:
                if shard not in self._shards.values():  # the map no longer names this master
                    await self._disconnect(shard, "it serves no slot now")

    async def _disconnect(self, shard: _Shard, why: str) -> None:
        shard.up = False
        # Forgotten before the first await: a publish meanwhile must not write
        # to (and so make redis-py reconnect) a connection being closed.
        connections = (shard.subscriber, shard.publisher)
        shard.subscriber = shard.publisher = None
        for connection in connections:
            if connection is not None:
                connection.close()
        while shard.replies:
            waiter = shard.replies.popleft()
            if not waiter.done():
                waiter.set_exception(BrokerDown(f"broker shard {shard.name}: {why}"))
        self._report(why=f"broker shard {shard.name}: {why}")

    def _report(self, why: str = "") -> None:
        """Tell on_state once when the first shard goes down, and once when every shard is back."""
        if self._closed:
            return
        all_up = all(shard.up for shard in self._shards.values())
        if all_up:
            self._all_up.set()
        else:
            self._all_up.clear()
        if not all_up and not self._reported_down and why:
            self._reported_down = True
            log.warning("broker %s down: %s", self._display, why)
            self.on_state(False, why)
        elif all_up and self._reported_down:
            self._reported_down = False
            log.warning("broker %s back: every subscription restored", self._display)
            self.on_state(True, "")

    async def _flush_loop(self, shard: _Shard) -> None:
        while True:
            await shard.dirty.wait()
            shard.dirty.clear()
            self._flush(shard)
            if not shard.up and not shard.sent:
                shard.up = True  # nothing was left to restore
                self._report()

    def _flush(self, shard: _Shard) -> None:
        """Send what changed since the last flush: one SSUBSCRIBE/SUNSUBSCRIBE
        per slot, all in one write."""
        changed, shard.changed = shard.changed, set()
        joining: dict[int, list[str]] = {}
        leaving: dict[int, list[str]] = {}
        for topic in changed:
            if topic in shard.want and topic not in shard.subscribed:
                joining.setdefault(self.slot(topic), []).append(topic)
                shard.subscribed.add(topic)
            elif topic not in shard.want and topic in shard.subscribed:
                leaving.setdefault(self.slot(topic), []).append(topic)
                shard.subscribed.discard(topic)
        commands: list[tuple[bytes | str | int, ...]] = []
        for subscribe, groups in ((True, joining), (False, leaving)):
            for topics in groups.values():
                for start in range(0, len(topics), CHANNELS_PER_COMMAND):
                    chunk = topics[start:start + CHANNELS_PER_COMMAND]
                    commands.append(("SSUBSCRIBE" if subscribe else "SUNSUBSCRIBE", *chunk))
                    shard.sent.append(_Command(subscribe, chunk, len(chunk)))
        if commands and shard.subscriber is not None:
            shard.subscriber.write(*commands)

    async def _read_messages(self, shard: _Shard) -> None:
        connection = shard.subscriber
        assert connection is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await connection.read()
            except RespError as error:
                self._command_failed(shard, error)
                continue
            finally:
                connection.last_read = loop.time()
            kind = reply[0]
            if kind == b"smessage":
                try:
                    self.on_message(reply[1], reply[2])
                except Exception:
                    log.exception("broker message handler failed")
            elif kind in (b"ssubscribe", b"sunsubscribe"):
                self._answered(shard, kind == b"ssubscribe", _text(reply[1]))

    def _answered(self, shard: _Shard, subscribe: bool, topic: str) -> None:
        head = shard.sent[0] if shard.sent else None
        if head is not None and head.subscribe == subscribe and topic in head.topics:
            head.unanswered -= 1
            if head.unanswered == 0:
                shard.sent.popleft()
                self._restored(shard)
        elif not subscribe:
            # Not our SUNSUBSCRIBE: the server dropped the channel because its
            # slot moved to another master. Follow it.
            shard.subscribed.discard(topic)
            shard.changed.add(topic)
            self._request_refresh()

    def _command_failed(self, shard: _Shard, error: RespError) -> None:
        command = shard.sent.popleft() if shard.sent else None
        if command is not None and command.subscribe:
            shard.subscribed.difference_update(command.topics)
            shard.changed.update(command.topics)  # sent again once the map is read again
        log.debug("broker shard %s: %s", shard.name, error)
        self._request_refresh()
        self._restored(shard)

    def _restored(self, shard: _Shard) -> None:
        if not shard.up and not shard.sent and shard.subscriber is not None:
            shard.up = True
            self._report()

    async def _read_replies(self, shard: _Shard) -> None:
        connection = shard.publisher
        assert connection is not None
        while True:
            try:
                reply: Any = await connection.read()
            except RespError as error:
                reply = error
            if not shard.replies:
                raise BrokerDown(f"broker shard {shard.name}: a reply nobody asked for")
            waiter = shard.replies.popleft()
            if waiter.done():
                continue
            if isinstance(reply, RespError):
                if str(reply).startswith("MOVED "):
                    self._request_refresh()
                    waiter.set_exception(SlotMoved(str(reply)))
                else:  # CLUSTERDOWN and the like: not sent now
                    waiter.set_exception(BrokerDown(f"broker shard {shard.name}: {reply}"))
            else:
                waiter.set_result(int(reply))

    async def _publish_once(self, topic: str, data: bytes) -> int:
        shard = self._owners[self.slot(topic)]
        if shard is None or shard.publisher is None:
            raise BrokerDown(f"{self._display}: no connected master for the topic's slot")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        shard.replies.append(waiter)
        shard.publisher.write(("SPUBLISH", topic, data))  # in call order: no await before it
        return await waiter
