"""connmix center and the grid's directory, against registration records a
test writes into a real valkey: discovery as CONNMIX's PHP client reads it,
stale ids pruned, access.users, the broker missing or down."""
from __future__ import annotations

import asyncio
import base64
import logging
import subprocess

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from connmix_py.config import parse_settings
from connmix_py.grid.broker_url import parse_broker_url
from connmix_py.grid.center import Center, CenterError
from connmix_py.grid.keys import NODES_SET, node_key
from tests.grid.registry_records import listed, register, registry_fixture, valkey_fixture  # noqa: F401
from tests.ports import reserved_port
from tests.waiting import within


def center_settings(users: list | None = None, **yaml: object):
    data: dict = {"center": {"apiServer": {"port": 0, "bind": "127.0.0.1"}}, **yaml}
    if users:
        data["access"] = {"users": users}
    return parse_settings(data)


@pytest.fixture
async def start_center(valkey):
    centers: list[Center] = []

    async def start(users: list | None = None) -> str:
        center = Center(center_settings(users), parse_broker_url(f"redis://{valkey.addr}/0"))
        await center.start()
        centers.append(center)
        return f"http://127.0.0.1:{center.port}"

    yield start
    for center in centers:
        await center.stop()


async def get(session: aiohttp.ClientSession, url: str, headers: dict | None = None) -> tuple[int, object]:
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_center_answers_discovery_from_the_registry_as_the_php_client_reads_it(
        start_center, registry, session):
    third = await register(registry, 3, "127.0.0.1:7003")
    first = await register(registry, 1, "127.0.0.1:7001", connections=12)
    await registry.sadd(NODES_SET, 7)  # a node that died: its record expired, its id stayed
    center = await start_center()

    assert await get(session, center + "/version") == (200, {"apis": ["v1"]})
    status, body = await get(session, center + "/v1/nodes")
    assert status == 200
    assert body == {"nodes": [listed(first), listed(third)]}  # by id, every field but the token
    assert all(node["api_server"] == node["host"] for node in body["nodes"])  # current and older PHP clients
    assert not await registry.sismember(NODES_SET, 7)  # pruned by the read


async def test_a_node_whose_record_expires_leaves_the_list_and_a_new_one_appears(start_center, registry, session):
    await register(registry, 1, "127.0.0.1:7001")
    await register(registry, 2, "127.0.0.1:7002", ttl_ms=300)  # its heartbeat stopped
    center = await start_center()

    async def listed_ids() -> list[int]:
        return [node["id"] for node in (await get(session, center + "/v1/nodes"))[1]["nodes"]]

    assert await listed_ids() == [1, 2]
    async with within(10, "node 2 left the list"):
        while await listed_ids() != [1]:
            await asyncio.sleep(0.05)
    await register(registry, 5, "127.0.0.1:7005")
    assert await listed_ids() == [1, 5]


async def test_a_record_that_is_not_a_node_is_skipped_with_one_warning(start_center, registry, session, caplog):
    good = await register(registry, 1, "127.0.0.1:7001")
    await registry.set(node_key(2), b"not json", px=60000)
    await registry.sadd(NODES_SET, 2)
    center = await start_center()
    with caplog.at_level(logging.WARNING, "connmix.grid.directory"):
        for _ in range(3):
            assert await get(session, center + "/v1/nodes") == (200, {"nodes": [listed(good)]})
    warnings = [r.getMessage() for r in caplog.records if r.name == "connmix.grid.directory"]
    assert len(warnings) == 1 and "node 2" in warnings[0]


async def answering(registry: aioredis.Redis) -> None:
    async with within(10, "valkey answers again"):
        while True:
            try:
                await registry.ping()
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.05)


USERS = [
    {"username": "viewer", "password": "pw-viewer", "roles": ["read"]},
    {"username": "writer", "password": "pw-writer", "roles": ["write"]},
    {"username": "remote", "password": "pw-remote", "roles": ["read", "write"], "host": "10.*.*.*"},
]


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


async def test_the_center_is_behind_access_users_as_a_nodes_api_server(start_center, registry, session):
    node = await register(registry, 1, "127.0.0.1:7001")
    center = await start_center(USERS)
    for path in ("/version", "/v1/nodes"):
        async with session.get(center + path) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="connmix"'
        assert (await get(session, center + path, basic("viewer", "wrong")))[0] == 401
        assert (await get(session, center + path, basic("writer", "pw-writer")))[0] == 403  # no read role
        assert (await get(session, center + path, basic("remote", "pw-remote")))[0] == 403  # not from 10.*
    assert await get(session, center + "/v1/nodes", basic("viewer", "pw-viewer")) == (200, {"nodes": [listed(node)]})
    assert await get(session, center + "/healthz") == (200, {"status": "ok", "broker": "connected"})  # open to probes


def test_the_center_without_a_broker_refuses_in_one_line():
    with pytest.raises(CenterError) as refused:
        Center(center_settings(), None)
    assert "engine.broker" in str(refused.value) and "\n" not in str(refused.value)


async def test_the_center_refuses_to_start_when_the_broker_cannot_be_reached():
    with reserved_port() as port:  # nothing listens there
        center = Center(center_settings(), parse_broker_url(f"redis://127.0.0.1:{port}/0"))
        with pytest.raises(CenterError) as refused:
            await center.start()
    message = str(refused.value)
    assert message.startswith("engine.broker: broker redis://127.0.0.1:") and "\n" not in message


async def test_the_center_says_when_the_broker_is_down_and_lists_again_when_it_is_back(
        valkey, registry, session, caplog):
    center = Center(center_settings(), parse_broker_url(f"redis://{valkey.addr}/0"))
    await center.start()
    url = f"http://127.0.0.1:{center.port}"
    try:
        assert await get(session, url + "/readyz") == (200, {"status": "ready"})
        valkey.process.terminate()
        valkey.process.wait(10)
        with caplog.at_level(logging.WARNING, "connmix.grid.directory"):
            status, body = await get(session, url + "/v1/nodes")
            assert status == 503 and "unreachable" in body["error"] and "\n" not in body["error"]
            status, body = await get(session, url + "/healthz")
            assert status == 200 and body["status"] == "ok" and body["broker"].startswith("down: broker redis://")
            status, body = await get(session, url + "/readyz")
            assert status == 503 and body["reasons"][0].startswith("broker redis://")
        outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outages) == 1  # said once, not at every request

        valkey.process = subprocess.Popen(valkey.process.args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)  # the same port: still reserved
        await answering(registry)
        node = await register(registry, 4, "127.0.0.1:7004")
        assert await get(session, url + "/v1/nodes") == (200, {"nodes": [listed(node)]})
        assert await get(session, url + "/healthz") == (200, {"status": "ok", "broker": "connected"})
    finally:
        await center.stop()
