"""Client ids across a real `kill -9` and restart of the engine process: the
restarted engine never hands out an id the killed one gave someone else."""
from __future__ import annotations

import asyncio
import re
import signal
import sys
import textwrap

import aiohttp

from connmix_py.ids import node_of
from tests.waiting import within

ID_SCRIPT = """
function on_message(msg)
    conn:send(conn:client_id())
end
"""
LISTENING = re.compile(r"websocket server on 127\.0\.0\.1:(\d+)")


def write_config(folder) -> str:
    (folder / "entry.lua").write_text(textwrap.dedent(ID_SCRIPT))
    path = folder / "connmix.yaml"
    path.write_text("engine:\n  apiServer: {port: 0, bind: 127.0.0.1}\n  servers:\n"
                    "    - {port: 0, bind: 127.0.0.1, entry: entry.lua, options: [{name: path, value: /ws}]}\n")
    return str(path)


async def start_engine(config: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "dev", "-f", config,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    port = None
    async with within(30, "the engine logged that it is running"):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the engine exited before it was running"
            port = port or (LISTENING.search(line) and int(LISTENING.search(line).group(1)))
            if "running" in line:
                break
    assert port
    return proc, port


async def client_ids(session: aiohttp.ClientSession, port: int, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_str("id?")
            ids.append((await ws.receive(timeout=10)).data)
    return ids


async def test_kill_9_and_restart_never_repeats_an_id(tmp_path):
    config = write_config(tmp_path)
    procs = []
    try:
        async with aiohttp.ClientSession() as session:
            first, port = await start_engine(config)
            procs.append(first)
            before = await client_ids(session, port, 20)
            first.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.wait(), 30)
            second, port = await start_engine(config)
            procs.append(second)
            after = await client_ids(session, port, 20)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 30)
    assert len(set(before + after)) == 40
    assert min(int(i) for i in after) > max(int(i) for i in before)
    assert {node_of(i) for i in before + after} == {1}
