"""The Consumer given one address (a center) consumes from every node it
lists, follows a node that joins, drops a node that leaves, and keeps its
stop semantics. The nodes are real engines, each with its own mix.queue;
their records are written into a real valkey by the test, as their registry
would (the process-level grid is in test_discovery.py)."""
from __future__ import annotations

import asyncio
import textwrap

import pytest
from aiohttp import web

from connmix_py import Engine, parse_settings
from connmix_py.client import AccessDenied, Consumer, QueueEvent
from connmix_py.config import ApiServerSettings
from connmix_py.grid.broker_url import parse_broker_url
from connmix_py.grid.center import Center
from tests.api_helpers import SCRIPT, burst, client_id, push
from tests.conftest import Running, engine_config
from tests.grid.registry_records import register, registry_fixture, unregister, valkey_fixture  # noqa: F401
from tests.waiting import until, within

REFRESH = 0.2  # the test's nodes_refresh: joins are seen quickly


@pytest.fixture
async def center(valkey):
    settings = parse_settings({})
    settings.center.api_server = ApiServerSettings(port=0, bind="127.0.0.1")
    running = Center(settings, parse_broker_url(f"redis://{valkey.addr}/0"))
    await running.start()
    yield f"http://127.0.0.1:{running.port}"
    await running.stop()


@pytest.fixture
async def nodes(tmp_path, session, registry):
    """start(node_id) -> Running: an engine registered under its id."""
    started: list[Engine] = []

    async def start(node_id: int) -> Running:
        entry = tmp_path / "entry.lua"
        entry.write_text(textwrap.dedent(SCRIPT))
        engine = Engine(parse_settings(engine_config(str(entry)), base_dir=str(tmp_path)), node_id=node_id)
        await engine.start()
        started.append(engine)
        await register(registry, node_id, f"127.0.0.1:{engine.api_port}")
        return Running(engine, session, "/ws")

    yield start
    for engine in started:
        await engine.stop()


async def next_event(consumer: Consumer) -> QueueEvent:
    return await asyncio.wait_for(consumer.__anext__(), 10)


async def test_the_consumer_given_a_center_consumes_from_every_node(center, nodes):
    one, two = await nodes(1), await nodes(2)
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        assert consumer.nodes == sorted([one.api_url, two.api_url])
        on_one, on_two = await one.connect(), await two.connect()
        assert (await push(on_one, "jobs", "from one"))["err"] is False
        assert (await push(on_two, "jobs", "from two"))["err"] is False
        got = {(await next_event(consumer)) for _ in range(2)}
        assert got == {QueueEvent(1, await client_id(on_one), "jobs", "from one"),
                       QueueEvent(2, await client_id(on_two), "jobs", "from two")}
    finally:
        await consumer.close()


async def test_a_node_that_joins_is_followed_and_one_that_leaves_is_dropped(center, nodes, registry):
    one, two = await nodes(1), await nodes(2)
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH, min_backoff=0.05, max_backoff=0.2)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        three = await nodes(3)  # joins the grid after the consumer started
        await until(lambda: three.api_url in consumer.nodes, "the consumer follows node 3")
        await asyncio.wait_for(consumer.wait_attached(), 10)
        on_three = await three.connect()
        assert (await push(on_three, "jobs", "from three"))["err"] is False
        assert (await next_event(consumer)).node == 3

        await two.engine.stop()  # node 2 leaves: its connection drops, its record goes
        await unregister(registry, 2)
        await until(lambda: two.api_url not in consumer.nodes, "the consumer drops node 2")
        assert consumer.nodes == sorted([one.api_url, three.api_url])
        on_one = await one.connect()
        assert (await push(on_one, "jobs", "still consumed"))["err"] is False
        event = await next_event(consumer)
        assert (event.node, event.data) == (1, "still consumed")
    finally:
        await consumer.close()


async def test_a_node_still_listed_is_reconnected_not_dropped(center, nodes, tmp_path):
    one = await nodes(1)
    port = one.engine.api_port
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH, min_backoff=0.05, max_backoff=0.2)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        await one.engine.stop()  # restarts on the same port, its record still there
        await until(lambda: not consumer.attached, "the consumer noticed the node left")
        await asyncio.sleep(3 * REFRESH)  # a few listings that still name it
        assert consumer.nodes == [one.api_url]
        conf = engine_config(str(tmp_path / "entry.lua"))
        conf["engine"]["apiServer"]["port"] = port
        again = Engine(parse_settings(conf, base_dir=str(tmp_path)), node_id=1)
        await again.start()
        try:
            await asyncio.wait_for(consumer.wait_attached(), 10)
            assert consumer.reconnects == 1
        finally:
            await again.stop()
    finally:
        await consumer.close()


async def test_stop_ends_consumption_on_every_node_and_leaves_later_items_queued(center, nodes):
    one, two = await nodes(1), await nodes(2)
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH)
    await asyncio.wait_for(consumer.wait_attached(), 10)
    on_one, on_two = await one.connect(), await two.connect()
    await push(on_one, "jobs", "a")
    await push(on_two, "jobs", "b")
    got = []
    async with within(10, "two events, then the end of the iteration"):
        async for event in consumer:
            got.append(event.data)
            if len(got) == 2:
                await consumer.stop()
    assert sorted(got) == ["a", "b"]
    await consumer.close()
    # Nobody consumes any more: each node keeps what is pushed next for the next consumer.
    assert (await push(on_one, "jobs", "after stop"))["n"] == 1
    assert (await push(on_two, "jobs", "after stop"))["n"] == 1


async def test_a_center_with_no_node_yet_waits_for_one(center, nodes):
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH)
    try:
        consumer.start()
        await asyncio.sleep(3 * REFRESH)
        assert consumer.nodes == [] and not consumer.attached
        one = await nodes(1)
        await asyncio.wait_for(consumer.wait_attached(), 10)
        assert consumer.nodes == [one.api_url]
    finally:
        await consumer.close()


async def test_discover_false_consumes_from_the_given_address_only(center, nodes):
    one, two = await nodes(1), await nodes(2)
    consumer = Consumer(one.api_url, ["jobs"], discover=False)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        assert consumer.nodes == [one.api_url]
        # n: the items waiting in node 2's queue, for want of a consumer there.
        assert (await push(await two.connect(), "jobs", "not for us"))["n"] == 1
    finally:
        await consumer.close()


async def test_wrong_credentials_at_the_center_end_the_iteration_at_once(valkey):
    settings = parse_settings({"access": {"users": [{"username": "ops", "password": "pw-ops",
                                                     "roles": ["read", "write"]}]}})
    settings.center.api_server = ApiServerSettings(port=0, bind="127.0.0.1")
    guarded = Center(settings, parse_broker_url(f"redis://{valkey.addr}/0"))
    await guarded.start()
    consumer = Consumer(f"http://127.0.0.1:{guarded.port}", ["jobs"], username="ops", password="wrong")
    try:
        with pytest.raises(AccessDenied) as denied:
            async with within(10, "the refusal ends the iteration"):
                async for _ in consumer:
                    pass
        assert denied.value.status == 401 and consumer.nodes == []
    finally:
        await consumer.close()
        await guarded.stop()


async def test_the_nodes_followed_are_still_consumed_while_the_center_cannot_list_them(center, nodes, valkey):
    one = await nodes(1)
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        valkey.process.terminate()  # the center answers 503 from now on
        valkey.process.wait(10)
        await asyncio.sleep(3 * REFRESH)  # listings that fail
        assert consumer.nodes == [one.api_url] and consumer.attached
        assert (await push(await one.connect(), "jobs", "during the outage"))["err"] is False
        assert (await next_event(consumer)).data == "during the outage"
    finally:
        await consumer.close()


async def test_a_list_that_turns_into_a_404_keeps_the_nodes_followed(nodes):
    """A discovery address that listed nodes and then answers 404 (a proxy
    misrouting, say) is not taken for an engine of its own."""
    one = await nodes(1)
    listing = {"nodes": [{"api_server": f"127.0.0.1:{one.engine.api_port}"}]}
    lists = True

    async def version(request):
        return web.json_response({"apis": ["v1"]})

    async def node_list(request):
        return web.json_response(listing) if lists else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1/nodes", node_list)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    consumer = Consumer(address, ["jobs"], nodes_refresh=REFRESH)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        lists = False
        await asyncio.sleep(3 * REFRESH)  # refreshes answered 404
        assert consumer.nodes == [one.api_url] and consumer.attached
        assert (await push(await one.connect(), "jobs", "still followed"))["err"] is False
        assert (await next_event(consumer)).data == "still followed"
    finally:
        await consumer.close()
        await runner.cleanup()


async def test_the_buffer_bounds_the_events_waiting_from_all_nodes_together(center, nodes):
    one, two = await nodes(1), await nodes(2)
    consumer = Consumer(center, ["jobs"], nodes_refresh=REFRESH, buffer=3)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        for node in (one, two):
            assert (await burst(await node.connect(), "jobs", 20))["pushed"] == 20
        await asyncio.sleep(0.5)  # nobody iterates: the node sessions stop reading
        # The limit, plus at most one event each other node's session read before it saw the buffer full.
        assert len(consumer._events) <= 3 + 1
        got = sorted([(event.node, event.data["i"]) for event in [await next_event(consumer) for _ in range(40)]])
        assert got == sorted((node, i) for node in (1, 2) for i in range(1, 21))  # nothing lost
    finally:
        await consumer.close()
