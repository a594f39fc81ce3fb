"""Fixtures of the grid tests: a real valkey, and a client of it for
writing and reading the registry directly."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer


@pytest.fixture
def valkey():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
async def registry(valkey):
    client = aioredis.Redis(host="127.0.0.1", port=valkey.port)
    yield client
    await client.aclose()
