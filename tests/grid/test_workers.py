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
import pytest

from connmix_py.grid.workers import worker_count
from tests.integration.test_cli import assert_one_clear_line, connmix
from tests.ports import reserved_port
from tests.waiting import until, within

ECHO_LUA = """
function on_message(msg)
    mix.websocket():send(msg.data)
end
"""
# Hang guards, never timing goals: a worker start loads Python, lupa and the script.
START_GUARD = 60
STOP_GUARD = 30


def write_yaml(folder: Path, ws_port: int, api_port: int, engine: str = "") -> Path:
    (folder / "entry.lua").write_text(ECHO_LUA)
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
async def supervised(tmp_path: Path, *args: str, engine: str = "") -> AsyncIterator[Supervised]:
    with reserved_port() as api_port, reserved_port() as ws_port:
        config = write_yaml(tmp_path, ws_port, api_port, engine)
        output = tmp_path / "output.log"
        with output.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "connmix_py", "single", "-f", str(config), *args,
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


async def test_a_sigkilled_parent_takes_its_workers_along(tmp_path):
    """No orphan keeps the ports: a worker gets SIGTERM when its parent dies."""
    async with supervised(tmp_path, "-p", "1") as gateway, aiohttp.ClientSession() as session:
        await gateway.ready(session)
        [worker] = children(gateway.proc.pid)
        gateway.proc.kill()
        await gateway.proc.wait()
        await until(lambda: not alive(worker), "the orphaned worker stopped", STOP_GUARD)


def test_a_bad_yaml_stops_at_once_with_one_line(tmp_path):
    config = tmp_path / "connmix.yaml"
    config.write_text("engine:\n  servers:\n    - port: [1\n")
    assert_one_clear_line(connmix("single", "-f", str(config), "-p", "2"), "connmix.yaml:")


def test_more_than_one_worker_needs_a_broker(tmp_path):
    config = write_yaml(tmp_path, 0, 0)
    assert_one_clear_line(connmix("single", "-f", str(config), "-p", "2"), "-p 2", "engine.broker")


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


@pytest.mark.parametrize("value", ["0", "auto"])
def test_every_cpu_is_the_default_count(value):
    assert worker_count(value) == os.cpu_count()
