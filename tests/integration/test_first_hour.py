"""Issue 13, "The first hour": what a new user meets first, tried as they
would (real processes, real ports, real clients)."""
from __future__ import annotations

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
