"""Discovery across real processes: `connmix engine` nodes on a real valkey,
`connmix center` reading their registry; CONNMIX's PHP client (real php-cli
for the discovery GETs, then the /ws/v1 frames of its source) and our
Consumer pointed at the center."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import textwrap
import time

import aiohttp
import pytest
import yaml

from connmix_py.client import Consumer
from connmix_py.grid.keys import NODE_TTL_MS
from tests.api_helpers import SCRIPT, client_id, push
from tests.compat.test_connmix_php_client import PhpNode
from tests.conftest import reference_command
from tests.grid_nodes import engine_command
from tests.integration.test_cli import assert_one_clear_line
from tests.ports import reserve_port
from tests.waiting import until, within

START_TIMEOUT = 30.0  # a process on a loaded machine; a hang guard, not a goal
REFRESH = 0.3  # the Consumer's nodes_refresh here: joins are seen quickly


class CenterProcess:
    """`connmix center -f <yaml>` on a reserved port."""

    def __init__(self, folder, broker_url: str | None, users: list | None = None) -> None:
        self._reservation = reserve_port()
        self.port = self._reservation.getsockname()[1]
        conf: dict = {"logging": {"filename": str(folder / "center.log"), "level": "info"},
                      "center": {"apiServer": {"port": self.port, "bind": "127.0.0.1"}}}
        if broker_url is not None:
            conf["engine"] = {"broker": broker_url}
        if users:
            conf["access"] = {"users": users}
        self.yaml = folder / "center.yaml"
        self.yaml.write_text(yaml.safe_dump(conf))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *args: str) -> CenterProcess:
        self.process = subprocess.Popen(engine_command("center", "-f", str(self.yaml), *args),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the center did not get ready"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self._reservation.close()


@pytest.fixture
async def grid(make_grid, tmp_path):
    """Nodes running tests/api_helpers.py's SCRIPT (mix.queue.push on request)."""
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT))
    return make_grid(str(entry))


@pytest.fixture
async def center(grid, tmp_path):
    running = await CenterProcess(tmp_path, grid.broker.url).start()
    yield running
    running.stop()


# Nodes::loadVersion and Nodes::loadNodes of CONNMIX's PHP client, in PHP:
# GET {host}/version, the first api, GET {host}/{version}/nodes, json_decode
# as an array; each node's address as the current client reads it
# (api_server), falling back to the older clients' host.
PHP_DISCOVERY = r"""
$host = $argv[1];
$body = json_decode(file_get_contents("$host/version"), true);
$version = array_shift($body['apis']);
$nodes = json_decode(file_get_contents("$host/$version/nodes"), true)['nodes'];
$addresses = [];
foreach ($nodes as $node) {
    $addresses[] = ['api_server' => $node['api_server'], 'host' => $node['host'], 'id' => $node['id']];
}
echo json_encode(['version' => $version, 'nodes' => $addresses]);
"""


def php_discover(center_url: str) -> dict:
    php = reference_command("php", "php-cli")
    done = subprocess.run([php, "-r", PHP_DISCOVERY, center_url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_php_client_finds_every_node_through_the_center_and_consumes_on_each(grid, center, session):
    one, two = await grid.start_node(), await grid.start_node()
    found = await asyncio.to_thread(php_discover, center.url)
    expected = sorted([(one.node_id, f"127.0.0.1:{one.api_port}"), (two.node_id, f"127.0.0.1:{two.api_port}")])
    assert found["version"] == "v1"
    assert [(node["id"], node["api_server"]) for node in found["nodes"]] == expected
    assert all(node["host"] == node["api_server"] for node in found["nodes"])

    # Plain HTTP: the whole record but its token, on the center and on any node alike.
    status, listing = await get_json(session, center.url + "/v1/nodes")
    assert status == 200 and [node["id"] for node in listing["nodes"]] == [one.node_id, two.node_id]
    for node, process in zip(listing["nodes"], (one, two), strict=True):
        assert "token" not in node and node["pid"] == process.process.pid
        assert node["servers"] == [{"protocol": "websocket", "port": process.ws_port, "path": "/ws"}]
    assert (await get_json(session, one.api_url + "/v1/nodes"))[1]["nodes"] == listing["nodes"]

    # Then /ws/v1 on each node, as the PHP client opens them: each node's own queue.
    for node_id, address in expected:
        php = PhpNode(await session.ws_connect(f"ws://{address}/ws/v1"))
        assert await php.reply(await php.pop("jobs")) == {"E": None, "r": {"s": True}, "i": 0}
        process = one if node_id == one.node_id else two
        user = await session.ws_connect(process.ws_url)
        assert (await push(user, "jobs", f"on node {node_id}"))["err"] is False
        event = await php.event()
        assert (event["n"], event["c"], event["d"]) == (node_id, await client_id(user), f"on node {node_id}")
        await php.ws.close()
        await user.close()


async def test_a_sigkilled_node_leaves_the_list_within_the_ttl_and_a_new_node_appears(grid, center, session):
    one, two = await grid.start_node(), await grid.start_node()

    async def listed() -> list[int]:
        return [node["id"] for node in (await get_json(session, center.url + "/v1/nodes"))[1]["nodes"]]

    assert await listed() == [one.node_id, two.node_id]
    await two.kill()  # no unregistering: its record expires
    async with within(NODE_TTL_MS / 1000 + 10, "the killed node left /v1/nodes"):
        while await listed() != [one.node_id]:
            await asyncio.sleep(0.1)
    three = await grid.start_node()
    assert await listed() == sorted([one.node_id, three.node_id])
    # A node answers as the center does.
    assert [node["id"] for node in (await get_json(session, one.api_url + "/v1/nodes"))[1]["nodes"]] == \
        sorted([one.node_id, three.node_id])


async def test_the_consumer_given_the_center_follows_the_nodes(grid, center, session):
    one, two = await grid.start_node(), await grid.start_node()
    consumer = Consumer(center.url, ["jobs"], nodes_refresh=REFRESH, min_backoff=0.05, max_backoff=0.3)
    try:
        await asyncio.wait_for(consumer.wait_attached(), 30)
        assert consumer.nodes == sorted([one.api_url, two.api_url])
        got = set()
        for node in (one, two):
            user = await session.ws_connect(node.ws_url)
            assert (await push(user, "jobs", f"from {node.node_id}"))["err"] is False
        for _ in range(2):
            event = await asyncio.wait_for(consumer.__anext__(), 10)
            got.add((event.node, event.data))
        assert got == {(one.node_id, f"from {one.node_id}"), (two.node_id, f"from {two.node_id}")}

        three = await grid.start_node()  # joins later: followed
        await until(lambda: three.api_url in consumer.nodes, "the consumer follows the new node", 30)
        await asyncio.wait_for(consumer.wait_attached(), 30)
        user = await session.ws_connect(three.ws_url)
        assert (await push(user, "jobs", "from three"))["err"] is False
        event = await asyncio.wait_for(consumer.__anext__(), 10)
        assert (event.node, event.data) == (three.node_id, "from three")

        await two.stop()  # leaves: dropped, and the consumer goes on
        await until(lambda: two.api_url not in consumer.nodes, "the consumer drops the stopped node", 30)
        user = await session.ws_connect(one.ws_url)
        assert (await push(user, "jobs", "still here"))["err"] is False
        event = await asyncio.wait_for(consumer.__anext__(), 10)
        assert (event.node, event.data) == (one.node_id, "still here")
    finally:
        await consumer.close()


def test_connmix_center_without_a_broker_exits_with_one_line(tmp_path):
    center = CenterProcess(tmp_path, None)
    try:
        done = subprocess.run(engine_command("center", "-f", str(center.yaml)), capture_output=True,
                              text=True, timeout=30)
    finally:
        center.stop()
    assert_one_clear_line(done, "engine.broker", "connmix center")


async def test_connmix_center_is_behind_access_users(grid, tmp_path, session):
    users = [{"username": "viewer", "password": "pw-viewer", "roles": ["read"]}]
    # -p as CONNMIX's start scripts pass it: accepted (one process all the same).
    center = await CenterProcess(tmp_path, grid.broker.url, users).start("-p", "2")
    try:
        assert (await get_json(session, center.url + "/v1/nodes"))[0] == 401
        viewer = {"Authorization": "Basic " + base64.b64encode(b"viewer:pw-viewer").decode()}
        async with session.get(center.url + "/v1/nodes", headers=viewer) as resp:
            assert resp.status == 200 and await resp.json() == {"nodes": []}
    finally:
        center.stop()


async def test_a_node_answers_503_while_its_broker_is_down_and_lists_again_after(grid, session):
    one = await grid.start_node()
    grid.broker.kill()
    status, body = await get_json(session, one.api_url + "/v1/nodes")
    assert status == 503 and "unreachable" in body["error"]
    await grid.broker.start_again()  # empty: the node registers again by its heartbeat
    async with within(30, "the node is listed again"):
        while True:
            status, body = await get_json(session, one.api_url + "/v1/nodes")
            if status == 200 and [node["id"] for node in body["nodes"]] == [one.node_id]:
                break
            await asyncio.sleep(0.1)
