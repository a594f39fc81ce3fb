"""Consumer: what the Lua scripts push with mix.queue.push, as an async iterator.

    async with Consumer("http://127.0.0.1:6787", ["chat"]) as consumer:
        async for event in consumer:          # QueueEvent(node, client_id, topic, data)
            ...

``mix.queue`` is per node, as in CONNMIX, so the consumer consumes from
every node of the grid. Given a center's address or any node's, it finds the
nodes as CONNMIX's clients do (``GET /version``, ``GET /v1/nodes``) and holds
one WebSocket API connection per node, consuming the topics on each
(``queue.pop``). It reads ``/v1/nodes`` again every ``nodes_refresh``
seconds: a node that joined is consumed from at once; a node whose
connection drops and that is no longer listed is dropped (``nodes`` says
which are followed). An engine without a broker lists itself, so pointed at
one engine it consumes from that engine. ``discover=False`` consumes from
the given address only (a node reached through a proxy, whose listed address
is not reachable from here); so does a server without discovery, or a user
without the read role discovery needs.

When a node's connection drops (the engine restarts, the network fails) it
connects again by itself, with exponential backoff, and consumes the same
topics. ``stop()`` ends consumption gracefully: every engine stops sending
(``queue.unpop``), the events already received are still yielded, then the
iteration ends; items not yet sent stay queued in the engines for others.

Flow control: at most ``buffer`` received events (from all nodes together)
wait for the loop body; beyond that the consumer stops reading every
connection. Once the socket buffers between it and an engine are full too
(the kernel's: up to megabytes), that engine hands further items to other
consumers, or keeps them queued.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

import aiohttp
import orjson

from . import params
from .errors import ACCESS_STATUSES, AccessDenied, ApiError, TransportError, result_of
from .nodes import NoDiscovery, list_nodes

log = logging.getLogger("connmix.client")

HEARTBEAT = 20.0
# Seconds between two reads of /v1/nodes: how soon a node that joined the
# grid is consumed from (a node that left is noticed when its connection drops).
NODES_REFRESH = 5.0
_POP, _UNPOP = "queue.pop", "queue.unpop"


@dataclass(frozen=True)
class QueueEvent:
    node: int  # the engine node the item was pushed on
    client_id: str | None  # the connection whose script pushed it: answer it with send()
    topic: str
    data: Any  # what the script pushed: a string, or a table as dict / list


class Consumer:
    def __init__(self, url: str, topics: Iterable[str], *, username: str | None = None,
                 password: str | None = None, auth: tuple[str, str] | None = None, buffer: int = 100,
                 min_backoff: float = 0.1, max_backoff: float = 5.0, stop_timeout: float = 5.0,
                 discover: bool = True, nodes_refresh: float = NODES_REFRESH) -> None:
        self.topics = list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ValueError("topics must be a non-empty list of non-empty strings")
        self._base, self._headers = params.endpoint(url, username, password, auth)
        self._discover = discover
        self._nodes_refresh = nodes_refresh
        self._buffer_size = max(1, buffer)
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._stop_timeout = stop_timeout
        self.reconnects = 0  # connections made to a node after its first one
        self._events: deque[QueueEvent] = deque()
        self._readable = asyncio.Event()  # events wait, or the iteration ended
        self._room = asyncio.Event()  # the buffer has room
        self._attached = asyncio.Event()
        self._stopping = asyncio.Event()
        self._failed = asyncio.Event()  # a node refused us: everything ends
        self._ended = False
        self._error: BaseException | None = None
        self._listed: set[str] = set()  # the nodes' API base URLs, as last listed
        self._listed_once = False
        self._sessions: dict[str, _NodeSession] = {}
        self._task: asyncio.Task | None = None

    # -- the application's side -----------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    @property
    def attached(self) -> bool:
        """True while every node followed is sending this consumer its topics' items."""
        return self._attached.is_set()

    @property
    def nodes(self) -> list[str]:
        """The API base URLs of the nodes followed now."""
        return sorted(self._sessions)

    async def wait_attached(self) -> None:
        """Until every node followed has accepted the topics (again, after a reconnect)."""
        self.start()
        await self._attached.wait()

    def __aiter__(self) -> "Consumer":
        self.start()
        return self

    async def __anext__(self) -> QueueEvent:
        while True:
            if self._events:
                event = self._events.popleft()
                self._room.set()
                return event
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()

    async def stop(self) -> None:
        """Stop consuming: what already arrived is still yielded, then the
        iteration ends."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._room.set()
        await asyncio.gather(*(session.unpop() for session in list(self._sessions.values())))

    async def close(self) -> None:
        """stop(), wait (up to stop_timeout) for the engines to confirm, and
        let go of the connections. Events not yet iterated are dropped."""
        await self.stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self._stop_timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._events:
            log.warning("consumer closed with %d received events not iterated", len(self._events))
            self._events.clear()
        self._end()

    async def __aenter__(self) -> "Consumer":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- following the nodes -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with aiohttp.ClientSession() as http:
                await self._follow(http)
                if not self._failed.is_set():  # stop(): each session ends on its unpop reply
                    await asyncio.gather(*(session.task for session in list(self._sessions.values())
                                           if session.task))
        except Exception as exc:  # a bug: end the iteration with it rather than hang
            log.exception("consumer failed")
            self._error = exc
        finally:
            tasks = [session.task for session in self._sessions.values() if session.task]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._end()

    async def _follow(self, http: aiohttp.ClientSession) -> None:
        """Read the node list now and every nodes_refresh seconds, and start
        a session for each node listed that has none, until stop() or a
        refusal."""
        delay = self._min_backoff
        listing_failed = False
        while not self._stopping.is_set() and not self._failed.is_set():
            try:
                listed = await self._list(http)
            except AccessDenied as exc:
                self._fail(exc)
                return
            except TransportError as exc:
                if not self._listed_once:  # nothing to consume from yet: retry soon
                    log.info("consumer: cannot list the nodes at %s (%s); again in %.1fs", self._base, exc, delay)
                    await self._pause(delay)
                    delay = min(delay * 2, self._max_backoff)
                    continue
                if not listing_failed:  # once per outage, not at every refresh
                    log.info("consumer: cannot list the nodes at %s (%s); following the last list",
                             self._base, exc)
                listing_failed = True
            else:
                delay, listing_failed = self._min_backoff, False
                self._listed, self._listed_once = set(listed), True
                for base in listed:
                    if base not in self._sessions and not self._stopping.is_set():
                        self._sessions[base] = _NodeSession(self, base, http)
                self._state_changed()
            await self._pause(self._nodes_refresh)

    async def _list(self, http: aiohttp.ClientSession) -> list[str]:
        if not self._discover:
            return [self._base]
        try:
            return await list_nodes(http, self._base, self._headers)
        except NoDiscovery as exc:
            if self._listed_once and self._listed != {self._base}:
                raise TransportError(str(exc)) from None  # it did list nodes: keep following them
            if not self._listed_once:
                log.info("consumer: no node list at %s (%s); consuming from it alone", self._base, exc)
            return [self._base]

    def _still_listed(self, base: str) -> bool:
        return base in self._listed

    def _dropped(self, session: _NodeSession) -> None:
        if self._sessions.get(session.base) is session:
            del self._sessions[session.base]
        log.info("consumer: node %s is no longer listed; dropped", session.base)
        self._state_changed()

    def _state_changed(self) -> None:
        sessions = self._sessions.values()
        if self._listed_once and sessions and all(session.attached for session in sessions):
            self._attached.set()
        else:
            self._attached.clear()

    def _fail(self, exc: BaseException) -> None:
        """A node refused us (credentials, topics): retrying cannot help."""
        if self._error is None:
            self._error = exc
        self._failed.set()
        self._stopping.set()  # every other session and the follower end too
        self._room.set()

    async def _put(self, event: QueueEvent) -> None:
        self._events.append(event)
        self._readable.set()
        while len(self._events) >= self._buffer_size and not self._stopping.is_set():
            # Stop reading: the engines see full sockets and hold the items.
            self._room.clear()
            await self._room.wait()

    async def _pause(self, seconds: float) -> None:
        """Sleep between attempts; stop() cuts it short."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _end(self) -> None:
        self._ended = True
        self._attached.clear()
        self._readable.set()


class _NodeSession:
    """One node's /ws/v1 connection consuming the topics, reconnecting while
    the node is listed."""

    def __init__(self, consumer: Consumer, base: str, http: aiohttp.ClientSession) -> None:
        self.consumer = consumer
        self.base = base
        self.url = base + "/ws/v1"
        self.attached = False
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = asyncio.create_task(self._run(http))

    async def unpop(self) -> None:
        ws = self.ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(orjson.dumps({"m": _UNPOP, "p": {}, "i": _UNPOP}).decode())
            except (ConnectionError, aiohttp.ClientError):
                pass  # gone anyway: the engine keeps the items

    async def _run(self, http: aiohttp.ClientSession) -> None:
        consumer = self.consumer
        try:
            await self._connect_and_consume(http)
        except (ApiError, AccessDenied) as exc:  # the engine refused us: retrying cannot help
            consumer._fail(exc)
        except Exception as exc:  # a bug: end the iteration with it rather than hang
            log.exception("consumer failed")
            consumer._fail(exc)

    async def _connect_and_consume(self, http: aiohttp.ClientSession) -> None:
        consumer = self.consumer
        delay = consumer._min_backoff
        connections = 0
        while not consumer._stopping.is_set():
            try:
                ws = await http.ws_connect(self.url, heartbeat=HEARTBEAT, headers=consumer._headers)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                status = getattr(exc, "status", None)  # of a refused upgrade
                if status in ACCESS_STATUSES:  # wrong credentials: retrying cannot help
                    raise AccessDenied(f"cannot consume from {self.url}: {exc}", status) from None
                if not consumer._still_listed(self.base):
                    consumer._dropped(self)
                    return
                log.info("consumer: cannot connect to %s (%s); again in %.1fs", self.url, exc, delay)
                await consumer._pause(delay)
                delay = min(delay * 2, consumer._max_backoff)
                continue
            connections += 1
            if connections > 1:
                consumer.reconnects += 1
            try:
                await self._consume(ws)
            except (ConnectionError, aiohttp.ClientError):
                pass  # lost mid-way: connect again
            finally:
                self.ws = None
                was_attached, self.attached = self.attached, False
                consumer._state_changed()
                await ws.close()
            if consumer._stopping.is_set():
                break
            if not consumer._still_listed(self.base):
                consumer._dropped(self)
                return
            if was_attached:  # it worked: reconnect at once, the backoff starts over
                delay = consumer._min_backoff
                log.info("consumer: connection to %s lost; connecting again", self.url)
            else:  # dropped before the topics were accepted: do not spin
                await consumer._pause(delay)
                delay = min(delay * 2, consumer._max_backoff)

    async def _consume(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Consume on one connection until it ends (or stop() is confirmed)."""
        consumer = self.consumer
        self.ws = ws
        await ws.send_str(orjson.dumps({"m": _POP, "p": {"t": consumer.topics}, "i": _POP}).decode())
        if consumer._stopping.is_set():  # stop() came while connecting
            await ws.send_str(orjson.dumps({"m": _UNPOP, "p": {}, "i": _UNPOP}).decode())
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(frame, dict):
                continue
            if frame.get("e") == _POP:
                p = frame["p"]
                await consumer._put(QueueEvent(p.get("n"), p.get("c"), p.get("t"), p.get("d")))
            elif frame.get("i") == _POP:
                result_of(frame)  # raises ApiError: fatal
                self.attached = True
                consumer._state_changed()
                log.info("consumer: consuming %s from %s", ", ".join(consumer.topics), self.url)
            elif frame.get("i") == _UNPOP:
                break  # everything sent before the unpop reply has been read
