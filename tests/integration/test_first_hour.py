"""Issue 13, "The first hour": what a new user meets first, tried as they
would (real processes, real ports, real clients)."""
from __future__ import annotations

import asyncio
import sys

import aiohttp

SCRIPT = """
function on_message(msg)
    error("secret-token-42 went wrong")
end
"""


async def test_lua_runtime_error_closes_with_1011_and_a_short_reason(start_engine, caplog):
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("x")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "lua error")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "entry0.lua:3: secret-token-42 went wrong" in logged  # the whole message stays in the log


async def test_client_used_without_with_closes_its_session_at_exit(start_engine):
    """Client(...).publish(...) in a script that never calls close(): nothing
    printed at exit (it was aiohttp's "Unclosed client session")."""
    running = await start_engine(SCRIPT)
    program = f"from connmix_py.client import Client\nprint(Client({running.api_url!r}).publish('news', 'hi'))\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert (process.returncode, out.decode(), err.decode()) == (0, "Published(delivered=0, failed=0)\n", "")
