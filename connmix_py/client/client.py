"""AsyncClient and Client: publish, send and conn.call from a backend.

    async with AsyncClient("http://127.0.0.1:6789") as client:
        await client.publish("user:1001", {"msg": "hi"})      # -> Published(delivered=1, failed=0)
        await client.send(client_id, "just you")
        await client.conn_call(client_id, "subscribe", "room:7")

``transport="http"`` (default) posts each call over a keep-alive pool;
``transport="ws"`` pipelines every call over one persistent WebSocket API
connection, for high rates. Errors: ApiError (with the API's ``code``) and
TransportError.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Coroutine, NamedTuple, TypeVar

from . import params
from .http import HttpTransport
from .ws import WsTransport

T = TypeVar("T")


class Published(NamedTuple):
    delivered: int
    failed: int


class AsyncClient:
    def __init__(self, url: str = "http://127.0.0.1:6789", *, transport: str = "http",
                 username: str | None = None, password: str | None = None,
                 auth: tuple[str, str] | None = None, timeout: float = 10.0, pool_size: int = 100) -> None:
        base, headers = params.endpoint(url, username, password, auth)
        if transport == "http":
            self._transport: HttpTransport | WsTransport = HttpTransport(base, headers, timeout, pool_size)
        elif transport == "ws":
            self._transport = WsTransport(base, headers, timeout)
        else:
            raise ValueError(f"transport must be 'http' or 'ws', not {transport!r}")

    async def publish(self, channel: str, data: Any) -> Published:
        """To every subscriber of channel in the grid. data: str (text frame),
        bytes (binary frame) or any JSON value (sent as its JSON text)."""
        result = await self._transport.request("mesh.publish", params.delivery(channel, data))
        return Published(result["s"], result["f"])

    async def send(self, client_id: str, data: Any) -> None:
        """To one client; ApiError 401 when it is unknown or closed."""
        await self._transport.request("mesh.send", params.delivery(client_id, data))

    async def conn_call(self, client_id: str, function: str, *args: Any) -> None:
        """Run subscribe / unsubscribe / set_context / set_context_value on a
        client's connection: ``conn_call(cid, "set_context_value", "uid", 1001)``."""
        await self._transport.request("conn.call", params.conn_call(client_id, function, args))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """The same calls, blocking, for synchronous code (Django views, scripts,
    threads). An AsyncClient runs on a private event loop in a background
    thread; any number of threads may share one Client. Do not call it from
    inside a running event loop: use AsyncClient there."""

    def __init__(self, url: str = "http://127.0.0.1:6789", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="connmix-client", daemon=True)
        self._thread.start()
        self._client = AsyncClient(url, **options)
        # close() runs by itself at exit (or when the Client is collected), so a
        # Client used without ``with`` leaves no "Unclosed client session" behind.
        self._closer = weakref.finalize(self, _shut_down, self._loop, self._thread, self._client)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def publish(self, channel: str, data: Any) -> Published:
        return self._run(self._client.publish(channel, data))

    def send(self, client_id: str, data: Any) -> None:
        self._run(self._client.send(client_id, data))

    def conn_call(self, client_id: str, function: str, *args: Any) -> None:
        self._run(self._client.conn_call(client_id, function, *args))

    def close(self) -> None:
        self._closer()  # runs _shut_down once, whoever calls first

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: AsyncClient) -> None:
    """Close the client's connections, then its loop and thread (no reference to the Client)."""
    asyncio.run_coroutine_threadsafe(client.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
