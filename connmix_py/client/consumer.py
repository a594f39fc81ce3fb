"""Consumer: what the Lua scripts push with mix.queue.push, as an async iterator.

    async with Consumer("http://127.0.0.1:6789", ["chat"]) as consumer:
        async for event in consumer:          # QueueEvent(node, client_id, topic, data)
            ...

It holds one WebSocket API connection consuming the topics (``queue.pop``).
When the connection drops (the engine restarts, the network fails) it
connects again by itself, with exponential backoff, and consumes the same
topics. ``stop()`` ends consumption gracefully: the engine stops sending
(``queue.unpop``), the events already received are still yielded, then the
iteration ends; items not yet sent stay queued in the engine for others.

Flow control: at most ``buffer`` received events wait for the loop body;
beyond that the consumer stops reading. Once the socket buffers between it
and the engine are full too (the kernel's: up to megabytes), the engine
hands further items to other consumers, or keeps them queued.
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
from .errors import ACCESS_STATUSES, AccessDenied, ApiError, result_of

log = logging.getLogger("connmix.client")

HEARTBEAT = 20.0
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
                 min_backoff: float = 0.1, max_backoff: float = 5.0, stop_timeout: float = 5.0) -> None:
        self.topics = list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ValueError("topics must be a non-empty list of non-empty strings")
        base, self._headers = params.endpoint(url, username, password, auth)
        self._url = base + "/ws/v1"
        self._buffer_size = max(1, buffer)
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._stop_timeout = stop_timeout
        self.reconnects = 0  # connections made after the first one
        self._events: deque[QueueEvent] = deque()
        self._readable = asyncio.Event()  # events wait, or the iteration ended
        self._room = asyncio.Event()  # the buffer has room
        self._attached = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None

    # -- the application's side -----------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    @property
    def attached(self) -> bool:
        """True while the engine is sending this consumer its topics' items."""
        return self._attached.is_set()

    async def wait_attached(self) -> None:
        """Until the engine has accepted the topics (again, after a reconnect)."""
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
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(orjson.dumps({"m": _UNPOP, "p": {}, "i": _UNPOP}).decode())
            except (ConnectionError, aiohttp.ClientError):
                pass  # gone anyway: the engine keeps the items

    async def close(self) -> None:
        """stop(), wait (up to stop_timeout) for the engine to confirm, and
        let go of the connection. Events not yet iterated are dropped."""
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

    # -- the connection's side ---------------------------------------------------------

    async def _run(self) -> None:
        delay = self._min_backoff
        connections = 0
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stopping.is_set():
                    try:
                        ws = await session.ws_connect(self._url, heartbeat=HEARTBEAT, headers=self._headers)
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                        status = getattr(exc, "status", None)  # of a refused upgrade
                        if status in ACCESS_STATUSES:  # wrong credentials: retrying cannot help
                            raise AccessDenied(f"cannot consume from {self._url}: {exc}", status) from None
                        log.info("consumer: cannot connect to %s (%s); again in %.1fs", self._url, exc, delay)
                        await self._pause(delay)
                        delay = min(delay * 2, self._max_backoff)
                        continue
                    connections += 1
                    self.reconnects = connections - 1
                    try:
                        await self._consume(ws)
                    except (ConnectionError, aiohttp.ClientError):
                        pass  # lost mid-way: connect again
                    finally:
                        self._ws = None
                        was_attached = self._attached.is_set()
                        self._attached.clear()
                        await ws.close()
                    if self._stopping.is_set():
                        break
                    if was_attached:  # it worked: reconnect at once, the backoff starts over
                        delay = self._min_backoff
                        log.info("consumer: connection to %s lost; connecting again", self._url)
                    else:  # dropped before the topics were accepted: do not spin
                        await self._pause(delay)
                        delay = min(delay * 2, self._max_backoff)
        except (ApiError, AccessDenied) as exc:  # the engine refused us: retrying cannot help
            self._error = exc
        except Exception as exc:  # a bug: end the iteration with it rather than hang
            log.exception("consumer failed")
            self._error = exc
        finally:
            self._end()

    async def _consume(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Consume on one connection until it ends (or stop() is confirmed)."""
        self._ws = ws
        await ws.send_str(orjson.dumps({"m": _POP, "p": {"t": self.topics}, "i": _POP}).decode())
        if self._stopping.is_set():  # stop() came while connecting
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
                await self._put(QueueEvent(p.get("n"), p.get("c"), p.get("t"), p.get("d")))
            elif frame.get("i") == _POP:
                result_of(frame)  # raises ApiError: fatal
                self._attached.set()
                log.info("consumer: consuming %s from %s", ", ".join(self.topics), self._url)
            elif frame.get("i") == _UNPOP:
                break  # everything sent before the unpop reply has been read

    async def _put(self, event: QueueEvent) -> None:
        self._events.append(event)
        self._readable.set()
        if len(self._events) >= self._buffer_size and not self._stopping.is_set():
            # Stop reading: the engine sees a full socket and holds the items.
            self._room.clear()
            await self._room.wait()

    async def _pause(self, seconds: float) -> None:
        """Sleep between connection attempts; stop() cuts it short."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _end(self) -> None:
        self._ended = True
        self._attached.clear()
        self._readable.set()
