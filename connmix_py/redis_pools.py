"""Named, pooled Redis connections for mix.redis (engine.luavm.redis)."""
from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .config import RedisSettings

CONNECT_TIMEOUT = 3.0
COMMAND_TIMEOUT = 10.0


class RedisPools:
    def __init__(self, entries: list[RedisSettings]) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self._clients: dict[str, aioredis.Redis] = {}

    def has(self, name: str) -> bool:
        return name in self.entries

    def client(self, name: str) -> aioredis.Redis:
        client = self._clients.get(name)
        if client is None:
            entry = self.entries[name]
            host, _, port = entry.addr.rpartition(":")
            client = aioredis.Redis(
                host=host, port=int(port), db=entry.db, password=entry.password or None,
                max_connections=entry.pool_size, socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT, decode_responses=False,
                # One quick retry covers a pooled connection the server dropped;
                # an unreachable server is an error for the script at once.
                retry=Retry(NoBackoff(), 1))
            # Raw replies, like CONNMIX's go-redis Do(): "OK" stays "OK", not True.
            client.response_callbacks.clear()
            self._clients[name] = client
        return client

    async def command(self, name: str, args: list[Any]) -> Any:
        """Run one command; raises RedisError (server error or unreachable)."""
        return await self.client(name).execute_command(*args)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


__all__ = ["RedisPools", "RedisError"]
