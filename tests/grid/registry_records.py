"""Registration records written straight into a real valkey, as a node's
registry writes them (the grid contract): for testing the readers (the
directory, the center, the Consumer) apart from the nodes."""
from __future__ import annotations

import time

import orjson
import pytest
import redis.asyncio as aioredis

from connmix_py.grid.keys import NODE_TTL_MS, NODES_SET, node_key
from tests.redis_server import RedisServer


@pytest.fixture(name="valkey")
def valkey_fixture():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(name="registry")
async def registry_fixture(valkey):
    client = aioredis.Redis(host="127.0.0.1", port=valkey.port)
    yield client
    await client.aclose()


def record(node_id: int, api_server: str, **extra: object) -> dict:
    now = time.time()
    return {"id": node_id, "token": f"secret-token-{node_id}", "api_server": api_server, "host": api_server,
            "servers": [{"protocol": "websocket", "port": 6790, "path": "/chat"}],
            "started": now - 10, "heartbeat": now, "connections": 0, "pid": 1000 + node_id,
            "version": "0.1.0", **extra}


async def register(redis: aioredis.Redis, node_id: int, api_server: str, ttl_ms: int = NODE_TTL_MS * 20,
                   **extra: object) -> dict:
    """Write a node's record (a long TTL by default: the test removes it) and list its id."""
    written = record(node_id, api_server, **extra)
    await redis.set(node_key(node_id), orjson.dumps(written), px=ttl_ms)
    await redis.sadd(NODES_SET, node_id)
    return written


async def unregister(redis: aioredis.Redis, node_id: int) -> None:
    """What a node leaving for good does: its record goes (its id is pruned on read)."""
    await redis.delete(node_key(node_id))


def listed(written: dict) -> dict:
    """What /v1/nodes shows of a record: all of it but the token."""
    return {key: value for key, value in written.items() if key != "token"}
