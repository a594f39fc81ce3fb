"""Grid nodes for tests: real `connmix engine -f <yaml>` processes against a
real Valkey (tests/redis_server.py), each on its own reserved ports.

    grid = Grid(tmp_path, entry="/path/entry.websocket.lua", ws_path="/chat")
    a, b = await grid.start_node(), await grid.start_node()
    ...   # a.ws_url, a.api_url, a.node_id, a.log_text()
    await b.kill()         # SIGKILL
    grid.broker.kill(); await grid.broker.start_again()
    await grid.close()     # every node stopped (SIGTERM), then the broker

A node is started when its /readyz answers 200 and its registration (the
record with its pid) is on the broker. Its stdout and stderr go to a file,
read with ``log_text()``.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis
import yaml

from connmix_py.grid.keys import NODES_SET, channel_topic, node_key
from tests.ports import reserve_port
from tests.redis_server import RedisServer

START_TIMEOUT = 30.0  # seconds for a node to answer /readyz on a loaded machine
STOP_TIMEOUT = 15.0


class Broker(RedisServer):
    """A RedisServer that can be killed and started again on the same port
    (its reservation is kept meanwhile, so no one else takes the port)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    async def start_again(self, timeout: float = 10) -> None:
        self.process = subprocess.Popen(self.process.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the broker did not start again")

    def client(self) -> redis.Redis:
        return redis.from_url(self.url)


class Node:
    def __init__(self, grid: Grid, name: str, command: str = "engine") -> None:
        """command: engine (a grid node), or dev/single without engine.broker (one node, for comparison)."""
        self.grid = grid
        self.name = name
        self.command = command
        self._reservations = [reserve_port(), reserve_port()]
        self.ws_port, self.api_port = (sock.getsockname()[1] for sock in self._reservations)
        self.dir = grid.tmp_path / name
        self.dir.mkdir()
        self.log_path = self.dir / "output.log"
        self.process: subprocess.Popen | None = None
        self.node_id = 0

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}{self.grid.ws_path}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def config(self) -> dict[str, Any]:
        server = {"port": self.ws_port, "bind": "127.0.0.1", "protocol": "websocket",
                  "options": [{"name": "path", "value": self.grid.ws_path}], "entry": self.grid.entry}
        engine: dict[str, Any] = {"shutdownGrace": 1,
                                  "apiServer": {"port": self.api_port, "bind": "127.0.0.1"},
                                  "servers": [server]}
        if self.command == "engine":
            engine["broker"] = self.grid.broker.url
        engine.update(self.grid.engine_extra)
        return {"logging": {"filename": str(self.dir / "connmix.log"), "level": "info"}, "engine": engine}

    async def start(self) -> Node:
        path = self.dir / "connmix.yaml"
        path.write_text(yaml.safe_dump(self.config()))
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(engine_command(self.command, "-f", str(path)),
                                            stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as session:
            while not await self._ready(session):
                if self.process.poll() is not None:
                    raise RuntimeError(f"node {self.name} exited {self.process.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.name} not ready in {START_TIMEOUT}s:\n{self.log_text()}")
                await asyncio.sleep(0.05)
        if self.command == "engine":
            self.node_id = await self._registered_id(deadline)
        return self

    async def _ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.api_url + "/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def _registered_id(self, deadline: float) -> int:
        assert self.process is not None
        while time.monotonic() < deadline:
            for record in await self.grid.records():
                if record.get("pid") == self.process.pid:
                    return int(record["id"])
            await asyncio.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not register:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        return await self._end(signal.SIGTERM)

    async def kill(self) -> int | None:
        return await self._end(signal.SIGKILL)

    async def _end(self, sig: int) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
            await asyncio.sleep(0.02)
        return self.process.returncode

    def release_ports(self) -> None:
        for sock in self._reservations:
            sock.close()


class Grid:
    def __init__(self, tmp_path: Path, entry: str, ws_path: str = "/ws",
                 engine_extra: dict[str, Any] | None = None) -> None:
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.entry = entry
        self.ws_path = ws_path
        self.engine_extra = engine_extra or {}
        self.broker = Broker()
        self.nodes: list[Node] = []

    async def start_node(self, name: str | None = None, command: str = "engine") -> Node:
        node = Node(self, name or f"node{len(self.nodes) + 1}", command)
        self.nodes.append(node)
        return await node.start()

    async def records(self) -> list[dict[str, Any]]:
        """The registration records on the broker, as stored (token included)."""
        client = self.broker.client()
        try:
            ids = await client.smembers(NODES_SET)
            if not ids:
                return []
            values = await client.mget([node_key(int(i)) for i in ids])
            return [orjson.loads(value) for value in values if value is not None]
        finally:
            await client.aclose()

    async def subscribed_nodes(self, channel: str) -> int:
        """How many nodes the broker has subscribed to a mesh channel."""
        return await self.topic_subscribers(channel_topic(channel))

    async def topic_subscribers(self, topic: str) -> int:
        client = self.broker.client()
        try:
            counts = await client.pubsub_numsub(topic)
            return int(counts[0][1])
        finally:
            await client.aclose()

    async def wait_subscribed(self, channel: str, nodes: int, timeout: float = 10) -> None:
        await self.wait_topic(channel_topic(channel), nodes, timeout)

    async def wait_topic(self, topic: str, subscribers: int, timeout: float = 10) -> None:
        """Until the broker counts this many subscribers of a topic (a node's inbox, say)."""
        deadline = time.monotonic() + timeout
        while (count := await self.topic_subscribers(topic)) != subscribers:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} subscriber(s), not {subscribers}, of {topic} on the broker")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
            node.release_ports()
        if self.broker.process.poll() is None:
            self.broker.stop()
        else:
            self.broker.dir.cleanup()
            self.broker.reservation.close()


def engine_command(*args: str) -> list[str]:
    """`connmix <args>` as run by the tests (the installed package's module)."""
    return [sys.executable, "-m", "connmix_py", *args]

