"""Hot update (byteCodeExpires): new code for new callbacks, connections,
contexts and subscriptions kept; a broken version is rejected."""
from __future__ import annotations

import asyncio
import logging
import os
import textwrap

from tests.helpers import receive_json
from tests.waiting import until

VERSION = """
local util = require("util")
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "join" then
        conn:set_context_value("name", "ann")
        conn:subscribe("room")
    end
    conn:send(mix.json_encode({version = %d, tag = util.tag(), name = conn:context_value("name")}))
end
"""
UTIL = 'return { tag = function() return "%s" end }\n'


def write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    # mtime resolution: make each write visibly newer
    stamp = os.stat(path).st_mtime_ns + 1_000_000_000 * (1 + write.count)
    write.count += 1
    os.utime(path, ns=(stamp, stamp))


write.count = 0


async def reply_until(ws, predicate, attempts: int = 50):
    """Ask until the reply satisfies predicate (the reload happens on its own tick)."""
    for _ in range(attempts):
        await ws.send_str("ping")
        reply = await receive_json(ws)
        if predicate(reply):
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError(f"last reply {reply!r}")


async def test_changed_script_and_module_take_effect_keeping_connections(start_engine, tmp_path, caplog):
    (tmp_path / "util.lua").write_text(UTIL % "a")
    running = await start_engine(VERSION % 1, byteCodeExpires=0.2)
    entry = running.engine.settings.servers[0].entry
    ws = await running.connect()
    await ws.send_str("join")
    assert await receive_json(ws) == {"version": 1, "tag": "a", "name": "ann"}

    write(entry, VERSION % 2)
    assert (await reply_until(ws, lambda r: r["version"] == 2))["name"] == "ann"

    write(tmp_path / "util.lua", UTIL % "b")
    await reply_until(ws, lambda r: r["tag"] == "b")

    # subscriptions made under version 1 still deliver
    assert (await running.api("/v1/mesh/publish", {"c": "room", "d": "hi"}))["r"]["s"] == 1
    assert (await ws.receive(timeout=5)).data == "hi"

    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        write(entry, "function on_message(msg)\n  this is not lua\nend\n")
        await until(lambda: "hot update rejected" in caplog.text, "the broken script was rejected")
    assert ":2:" in caplog.text
    await ws.send_str("ping")
    assert await receive_json(ws) == {"version": 2, "tag": "b", "name": "ann"}


async def test_zero_disables_hot_update(start_engine, tmp_path):
    (tmp_path / "util.lua").write_text(UTIL % "a")
    running = await start_engine(VERSION % 1, byteCodeExpires=0)
    ws = await running.connect()
    write(running.engine.settings.servers[0].entry, VERSION % 2)
    await asyncio.sleep(1.5)  # longer than any check interval would be
    await ws.send_str("ping")
    assert (await receive_json(ws))["version"] == 1
