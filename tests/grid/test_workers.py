"""`-p N`: the parent keeps N worker processes (each an engine listening on
the yaml's ports with SO_REUSEPORT) running, restarts one that dies, passes
SIGTERM on and exits when they all have stopped; a mistake stops everything
with one line. Real processes on reserved ports."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from connmix_py.client import Consumer
from connmix_py.grid.keys import NODES_SET, channel_topic, node_key
from connmix_py.grid.workers import worker_count
from tests.held_backend import held_fixture  # noqa: F401  (the held fixture)
from tests.integration.test_cli import assert_one_clear_line, connmix
from tests.ports import reserved_port
from tests.redis_server import RedisServer
from tests.waiting import until, within

ECHO_LUA = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "subscribe" then
        conn:subscribe("news")
        conn:send("subscribed")
    else
        conn:send(msg.data)
    end
end
"""
CLIENTS = 200
# Hang guards, never timing goals: a worker start loads Python, lupa and the script.
START_GUARD = 60
STOP_GUARD = 30


def write_yaml(folder: Path, ws_port: int, api_port: int, engine: str = "", lua: str = ECHO_LUA) -> Path:
    (folder / "entry.lua").write_text(lua)
    path = folder / "connmix.yaml"
    path.write_text(textwrap.dedent(f"""\
        logging: {{level: info}}
        engine:
          apiServer: {{port: {api_port}, bind: 127.0.0.1}}
          servers:
            - {{port: {ws_port}, bind: 127.0.0.1, protocol: websocket, entry: entry.lua,
                options: [{{name: path, value: /ws}}]}}
        """) + textwrap.indent(textwrap.dedent(engine), "  "))
    return path


def children(pid: int) -> set[int]:
    """The live child processes of pid (Linux /proc)."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.update(int(child) for child in listing.read().split())
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


class Supervised:
    """`connmix single -f FILE -p N` running; its output goes to a file (a
    pipe nobody reads would block the workers once full)."""

    def __init__(self, proc: asyncio.subprocess.Process, output: Path, api_port: int, ws_port: int) -> None:
        self.proc = proc
        self.output = output
        self.api_port = api_port
        self.ws_port = ws_port

    def log(self) -> str:
        return self.output.read_text()

    async def ready(self, session: aiohttp.ClientSession) -> None:
        """Until the shared apiServer port answers /readyz with 200."""
        async with within(START_GUARD, "a worker answers /readyz"):
            while True:
                assert self.proc.returncode is None, self.log()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.api_port}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def echo(self, session: aiohttp.ClientSession, text: str) -> str:
        async with session.ws_connect(f"http://127.0.0.1:{self.ws_port}/ws") as ws:
            await ws.send_str(text)
            return (await ws.receive(timeout=STOP_GUARD)).data


@contextlib.asynccontextmanager
async def supervised(tmp_path: Path, *args: str, engine: str = "", lua: str = ECHO_LUA,
                     command: str = "single") -> AsyncIterator[Supervised]:
    with reserved_port() as api_port, reserved_port() as ws_port:
        config = write_yaml(tmp_path, ws_port, api_port, engine, lua)
        output = tmp_path / "output.log"
        with output.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "connmix_py", command, "-f", str(config), *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink)
        running = Supervised(proc, output, api_port, ws_port)
        try:
            yield running
        finally:
            workers = children(proc.pid)
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), STOP_GUARD)
            for pid in workers:  # never leave a worker holding the ports
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_a_sigkilled_worker_is_started_again_and_serves(tmp_path):
    async with supervised(tmp_path, "-p", "1") as gateway, aiohttp.ClientSession() as session:
        await gateway.ready(session)
        assert await gateway.echo(session, "before") == "before"
        [first] = children(gateway.proc.pid)
        os.kill(first, signal.SIGKILL)
        await until(lambda: children(gateway.proc.pid) - {first}, "a new worker process", START_GUARD)
        await until(lambda: not alive(first), "the killed worker is gone")
        await gateway.ready(session)
        assert await gateway.echo(session, "after") == "after"
        assert "worker 1 (pid %d) was killed by SIGKILL; starting it again" % first in gateway.log()
        [second] = children(gateway.proc.pid)
        assert second != first


async def test_a_replacement_that_cannot_start_is_retried_with_backoff(tmp_path):
    """Only the first start of a worker stops everything on a start-up
    mistake; a replacement that fails (the script broke meanwhile) is tried
    again, waiting longer each time, and serves once the script is fixed."""
    async with supervised(tmp_path, "-p", "1") as gateway, aiohttp.ClientSession() as session:
        await gateway.ready(session)
        entry = tmp_path / "entry.lua"
        entry.write_text("function on_message(msg)\n  local x =\nend\n")
        [first] = children(gateway.proc.pid)
        os.kill(first, signal.SIGKILL)
        # Each death came soon after its start: 0.5 s, then twice as long each time.
        await until(lambda: "exited with status 78; starting it again in 2 s" in gateway.log(),
                    "a second failed start, retried after a longer wait", START_GUARD)
        assert f"(pid {first}) was killed by SIGKILL; starting it again in 0.5 s" in gateway.log()
        assert "exited with status 78; starting it again in 1 s" in gateway.log()
        assert gateway.proc.returncode is None
        entry.write_text(ECHO_LUA)
        await gateway.ready(session)
        assert await gateway.echo(session, "fixed") == "fixed"


async def test_sigterm_stops_every_worker_and_the_parent_exits_0(tmp_path):
    async with supervised(tmp_path, "-p", "1") as gateway, aiohttp.ClientSession() as session:
        await gateway.ready(session)
        [worker] = children(gateway.proc.pid)
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), STOP_GUARD) == 0, gateway.log()
        assert not alive(worker)
        log = gateway.log()
        assert "worker 1 connmix: stopping" in log  # the worker's own lines name it
        assert "every worker has stopped" in log
        assert "Traceback" not in log
        # Each worker has a log file of its own; the parent's lines go to logging.filename.
        assert "worker 1 connmix: stopping" in (tmp_path / "logs" / "connmix.worker1.log").read_text()
        assert "every worker has stopped" in (tmp_path / "logs" / "connmix.log").read_text()


async def test_a_sigkilled_parent_takes_its_workers_along(tmp_path):
    """No orphan keeps the ports: a worker gets SIGTERM when its parent dies."""
    async with supervised(tmp_path, "-p", "1") as gateway, aiohttp.ClientSession() as session:
        await gateway.ready(session)
        [worker] = children(gateway.proc.pid)
        gateway.proc.kill()
        await gateway.proc.wait()
        await until(lambda: not alive(worker), "the orphaned worker stopped", STOP_GUARD)


HOLDING_LUA = """
function on_message(msg)
    mix.websocket():send("waiting")
    mix.http.request("GET", "%s", {timeout = "120s"})
end
"""


async def test_a_second_sigterm_kills_workers_still_stopping(tmp_path, held):
    """The first SIGTERM starts a graceful stop that waits for a callback
    (shutdownGrace 60 s); the second kills the worker instead of waiting."""
    async with (supervised(tmp_path, "-p", "1", engine="shutdownGrace: 60\n",
                           lua=HOLDING_LUA % held.url("held")) as gateway,
                aiohttp.ClientSession() as session):
        await gateway.ready(session)
        [worker] = children(gateway.proc.pid)
        async with session.ws_connect(f"http://127.0.0.1:{gateway.ws_port}/ws") as ws:
            await ws.send_str("wait")
            assert (await ws.receive(timeout=STOP_GUARD)).data == "waiting"
            await held.arrived("held")
            gateway.proc.send_signal(signal.SIGTERM)
            await until(lambda: "worker 1 connmix: stopping" in gateway.log(), "the worker began its stop")
            gateway.proc.send_signal(signal.SIGTERM)
            # Well under the 60 s grace the worker would otherwise wait.
            assert await asyncio.wait_for(gateway.proc.wait(), STOP_GUARD) == 1, gateway.log()
        assert not alive(worker)
        assert "signalled again: killing 1 worker(s) still stopping" in gateway.log()


def test_a_bad_yaml_stops_at_once_with_one_line(tmp_path):
    config = tmp_path / "connmix.yaml"
    config.write_text("engine:\n  servers:\n    - port: [1\n")
    assert_one_clear_line(connmix("single", "-f", str(config), "-p", "2"), "connmix.yaml:")


def test_more_than_one_worker_needs_a_broker(tmp_path):
    config = write_yaml(tmp_path, 0, 0)
    assert_one_clear_line(connmix("single", "-f", str(config), "-p", "2"), "-p 2", "engine.broker")


def test_workers_cannot_share_port_0(tmp_path):
    config = write_yaml(tmp_path, 0, 0, engine="broker: redis://127.0.0.1:1/0\n")
    assert_one_clear_line(connmix("engine", "-f", str(config), "-p", "2"), "engine.apiServer.port", "-p 2")


def test_a_bad_process_count_is_one_line(tmp_path):
    config = write_yaml(tmp_path, 0, 0)
    assert_one_clear_line(connmix("single", "-f", str(config), "-p", "many"), "-p", "'many'")


def test_a_port_in_use_stops_everything_with_the_workers_line(tmp_path):
    """The worker cannot listen (a process without SO_REUSEPORT holds the
    port): its one line, and no restart loop."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_yaml(tmp_path, taken.getsockname()[1], 0)
        result = connmix("single", "-f", str(config), "-p", "1")
    line = assert_one_clear_line(result, "engine.servers[0].port", "cannot listen", "worker 1")
    assert "in use" in line
    assert "starting it again" not in result.stderr


def test_workers_that_cannot_start_are_one_line(tmp_path):
    """-p 3 with the port in use: each worker reports it to the parent, which
    logs it once and stops."""
    server = RedisServer()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with reserved_port() as api_port:
                config = write_yaml(tmp_path, taken.getsockname()[1], api_port,
                                    engine=f"broker: redis://127.0.0.1:{server.port}/0\n")
                result = connmix("engine", "-f", str(config), "-p", "3")
    finally:
        server.stop()
    assert_one_clear_line(result, "engine.servers[0].port", "cannot listen", "connmix.workers: worker ")
    assert "starting it again" not in result.stderr


@pytest.mark.parametrize("value", ["0", "auto"])
def test_every_cpu_is_the_default_count(value):
    assert worker_count(value) == os.cpu_count()


# -- -p 2 as a grid: two workers, one valkey -------------------------------------------


async def registered(broker: aioredis.Redis) -> list[dict]:
    """The live registrations, as the registry's readers see them: a record
    claims its id before its worker listens (the shared apiServer port, no
    servers yet), and is listed only once the worker announced itself."""
    ids = sorted(int(node) for node in await broker.smembers(NODES_SET))
    records = await broker.mget([node_key(node) for node in ids]) if ids else []
    nodes = [orjson.loads(record) for record in records if record is not None]
    return [node for node in nodes if node["servers"]]


async def worker_stats(session: aiohttp.ClientSession, node: dict) -> dict:
    """/v1/stats from one worker alone, through the private apiServer port it registered."""
    async with session.get(f"http://{node['api_server']}/v1/stats") as resp:
        return (await resp.json())["r"]


async def subscribe(session: aiohttp.ClientSession, ws_port: int) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"http://127.0.0.1:{ws_port}/ws")
    await ws.send_str("subscribe")
    assert (await ws.receive(timeout=STOP_GUARD)).data == "subscribed"
    return ws


async def both_nodes_subscribed(broker: aioredis.Redis) -> None:
    """Until each worker's broker subscription to "news" is in place: a node
    tells the broker about a channel's first local subscriber in a batch,
    after the subscribe call has returned to Lua."""
    async with within(START_GUARD, "both workers subscribed to news on the broker"):
        while (await broker.pubsub_numsub(channel_topic("news")))[0][1] != 2:
            await asyncio.sleep(0.05)


async def publish(session: aiohttp.ClientSession, api_port: int, data: str) -> dict:
    async with session.post(f"http://127.0.0.1:{api_port}/v1/mesh/publish",
                            json={"c": "news", "d": data}) as resp:
        return (await resp.json())["r"]


async def test_two_workers_share_the_ports_and_the_grid(tmp_path):
    """`connmix engine -p 2`: 200 clients land on both workers; one publish
    through the shared apiServer reaches all of them with the exact count; a
    SIGKILLed worker is started again and its new clients get publishes."""
    server = RedisServer()
    broker = aioredis.Redis(port=server.port)
    try:
        async with (supervised(tmp_path, "-p", "2", command="engine",
                               engine=f"broker: redis://127.0.0.1:{server.port}/0\n") as gateway,
                    # limit=0: a session holds 100 connections by default, and 200 clients stay open.
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session):
            nodes: list[dict] = []

            async def two_registered() -> bool:
                nodes[:] = await registered(broker)
                return len(nodes) == 2

            async with within(START_GUARD, "both workers registered"):
                while not await two_registered():
                    assert gateway.proc.returncode is None, gateway.log()
                    await asyncio.sleep(0.1)
            assert {node["pid"] for node in nodes} == children(gateway.proc.pid)
            # Each registers its private apiServer port, not the shared one.
            assert all(node["api_server"] != f"127.0.0.1:{gateway.api_port}" for node in nodes)

            clients = [await subscribe(session, gateway.ws_port) for _ in range(CLIENTS)]
            counts = [(await worker_stats(session, node))["connections"] for node in nodes]
            assert sum(counts) == CLIENTS and min(counts) > 0, counts  # the kernel used both

            await both_nodes_subscribed(broker)
            assert await publish(session, gateway.api_port, "to all") == {"s": CLIENTS, "f": 0}
            for ws in clients:
                assert (await ws.receive(timeout=STOP_GUARD)).data == "to all"

            # SIGKILL one worker: the parent starts another, which registers anew.
            killed = nodes[0]
            lost = (await worker_stats(session, killed))["connections"]
            before = {node["pid"] for node in nodes}
            os.kill(killed["pid"], signal.SIGKILL)

            async def replaced() -> bool:
                nodes[:] = await registered(broker)
                pids = {node["pid"] for node in nodes}
                return killed["pid"] not in pids and len(pids) == 2

            async with within(START_GUARD, "a new worker registered in the killed one's place"):
                while not await replaced():
                    assert gateway.proc.returncode is None, gateway.log()
                    await asyncio.sleep(0.1)
            [new] = [node for node in nodes if node["pid"] not in before]
            # New clients until one lands on the new worker (the kernel hashes each connection).
            newcomers: list[aiohttp.ClientWebSocketResponse] = []
            async with within(START_GUARD, "a new client on the new worker"):
                while (await worker_stats(session, new))["connections"] == 0:
                    newcomers.append(await subscribe(session, gateway.ws_port))
            receivers = CLIENTS - lost + len(newcomers)
            await both_nodes_subscribed(broker)
            assert await publish(session, gateway.api_port, "again") == {"s": receivers, "f": 0}
            got = [(await ws.receive(timeout=STOP_GUARD)).data for ws in clients + newcomers]
            assert got.count("again") == receivers  # the killed worker's clients got their close
            assert got[CLIENTS:] == ["again"] * len(newcomers)
            for ws in clients + newcomers:
                await ws.close()
            gateway.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(gateway.proc.wait(), STOP_GUARD) == 0, gateway.log()
    finally:
        await broker.aclose()
        server.stop()


PUSH_LUA = """
function on_message(msg)
    local n, err = mix.queue.push("jobs", msg.data)
    mix.websocket():send(err and ("error: " .. err) or "pushed")
end
"""


async def test_a_consumer_given_the_shared_port_gets_the_items_of_every_worker(tmp_path):
    """Each worker's mix.queue is its own; the Consumer finds both through
    /v1/nodes (their private apiServer ports) and gets what either queued."""
    server = RedisServer()
    broker = aioredis.Redis(port=server.port)
    try:
        async with (supervised(tmp_path, "-p", "2", command="engine", lua=PUSH_LUA,
                               engine=f"broker: redis://127.0.0.1:{server.port}/0\n") as gateway,
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session):
            async with within(START_GUARD, "both workers listening"):
                while len(nodes := await registered(broker)) < 2:
                    assert gateway.proc.returncode is None, gateway.log()
                    await asyncio.sleep(0.1)
            consumer = Consumer(f"http://127.0.0.1:{gateway.api_port}", ["jobs"])
            async with consumer:
                async with within(START_GUARD, "the consumer attached to both workers"):
                    while len(consumer.nodes) < 2 or not consumer.attached:
                        await asyncio.sleep(0.05)
                # Clients until both workers have pushed at least once (the kernel picks).
                pushed: list[str] = []
                clients = []  # kept open: a worker's connection count says it got one
                async with within(START_GUARD, "an item pushed on each worker"):
                    while min([(await worker_stats(session, node))["connections"] for node in nodes]) == 0:
                        clients.append(ws := await session.ws_connect(f"http://127.0.0.1:{gateway.ws_port}/ws"))
                        await ws.send_str(f"item {len(pushed)}")
                        assert (await ws.receive(timeout=STOP_GUARD)).data == "pushed"
                        pushed.append(f"item {len(pushed)}")
                events = []
                async with within(STOP_GUARD, "every item consumed"):
                    async for event in consumer:
                        events.append(event)
                        if len(events) == len(pushed):
                            break
            assert sorted(event.data for event in events) == sorted(pushed)
            assert {event.node for event in events} == {node["id"] for node in nodes}
    finally:
        await broker.aclose()
        server.stop()
