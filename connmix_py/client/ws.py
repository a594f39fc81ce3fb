"""The WebSocket API as a transport: one persistent connection, requests
pipelined, replies matched to requests by id (in whatever order they come)."""
from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

from .errors import TransportError, refused, result_of

HEARTBEAT = 20.0  # seconds between ping frames: a dead connection is noticed


class WsTransport:
    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        self._url = base_url + "/ws/v1"
        self._headers = headers
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # Requests waiting for a reply on the current connection, by id.
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._connecting: asyncio.Lock | None = None
        self._reader: asyncio.Task | None = None

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        ws, pending = await self._connection()
        request_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        pending[request_id] = reply
        try:
            await ws.send_str(orjson.dumps({"m": method, "p": params, "i": request_id}).decode())
            async with asyncio.timeout(self._timeout):
                return result_of(await reply)
        except TimeoutError:
            raise TransportError(f"{method}: no reply from {self._url} within {self._timeout:g}s") from None
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise TransportError(f"{method}: connection to {self._url} lost: {exc}") from None
        finally:
            pending.pop(request_id, None)

    async def _connection(self) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
        ws = self._ws
        if ws is not None and not ws.closed:
            return ws, self._pending
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect, however many callers wait
            if self._ws is None or self._ws.closed:
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                try:
                    ws = await self._session.ws_connect(self._url, heartbeat=HEARTBEAT, headers=self._headers,
                                                        timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout))
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    status = getattr(exc, "status", None)
                    raise refused(f"cannot connect to {self._url}: {exc}", status) from None
                # Each connection has its own pending table, so a lost one
                # fails only the requests that were sent on it.
                self._ws, self._pending = ws, {}
                self._reader = asyncio.create_task(self._read(ws, self._pending))
        return self._ws, self._pending

    @staticmethod
    async def _read(ws: aiohttp.ClientWebSocketResponse, pending: dict[int, asyncio.Future]) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    reply = orjson.loads(msg.data)
                    waiter = pending.pop(reply.get("i"), None)
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    continue  # not a reply of ours ("pong", an event)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        finally:
            lost = TransportError(f"connection to the engine lost ({ws.close_code})")
            for waiter in pending.values():
                if not waiter.done():
                    waiter.set_exception(lost)
            pending.clear()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._ws = self._session = self._reader = None
