"""The HTTP API as a transport: one keep-alive connection pool."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from .errors import TransportError, refused, result_of

PATHS = {
    "mesh.publish": "/v1/mesh/publish",
    "mesh.send": "/v1/mesh/send",
    "conn.call": "/v1/conn/call",
}


class HttpTransport:
    def __init__(self, base_url: str, headers: dict[str, str], timeout: float, pool_size: int) -> None:
        self._base = base_url
        self._headers = {"Content-Type": "application/json", **headers}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Created on first use: a session belongs to the running loop.
            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        url = self._base + PATHS[method]
        try:
            async with self._client().post(url, data=orjson.dumps(params), headers=self._headers) as resp:
                body = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            raise TransportError(f"{method}: no reply from {self._base} in time") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method}: cannot reach {self._base}: {exc}") from None
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            reply = None
        if status != 200 or not isinstance(reply, dict):
            text = body[:200].decode("utf-8", "replace").strip()
            raise refused(f"{method}: HTTP {status} from {url}: {text}", status)
        return result_of(reply)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
