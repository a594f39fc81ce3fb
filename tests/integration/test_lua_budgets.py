"""No script, however wrong, freezes or crashes the engine: CPU and memory
budgets, and the optional sandbox."""
from __future__ import annotations

import logging

import aiohttp
import pytest

from connmix_py import Engine, StartupError, parse_settings
from tests.conftest import engine_config
from tests.helpers import receive_json

RUNAWAY = """
grow = {}
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "spin" then while true do end end
    if msg.data == "spin-in-pcall" then
        while true do pcall(function() while true do end end) end
    end
    if msg.data == "grow" then
        local i = 0
        while true do i = i + 1; grow[i] = string.rep("x", 64) .. i end
    end
    if msg.data == "grow-local" then
        local t, i = {}, 0
        while true do i = i + 1; t[i] = string.rep("y", 64) .. i end
    end
    grow = {}
    conn:send("ok")
end
"""


@pytest.mark.parametrize("frame, cpu, reason", [
    ("spin", 0.3, "CPU budget of 0.3s"),
    ("spin-in-pcall", 0.3, "CPU budget of 0.3s"),
    ("grow", 30, "memory exceeded its budget of 64 MB"),
    ("grow-local", 30, "memory exceeded its budget of 64 MB"),
])
async def test_runaway_callback_is_stopped_and_others_carry_on(start_engine, caplog, frame, cpu, reason):
    running = await start_engine(RUNAWAY, luavm={"cpuBudget": cpu, "memoryBudget": 64})
    other = await running.connect()
    bad = await running.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await bad.send_str(frame)
        msg = await bad.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert reason in caplog.text and ".lua:" in caplog.text
    await other.send_str("hello")
    assert (await other.receive(timeout=5)).data == "ok"
    # The VM is still usable by new connections, and its memory came back.
    fresh = await running.connect()
    await fresh.send_str("hello")
    assert (await fresh.receive(timeout=5)).data == "ok"
    used_kb = running.engine.vms[0].runtime.execute("collectgarbage(); return collectgarbage('count')")
    assert used_kb < 64 * 1024


async def test_runaway_top_level_code_stops_start_up(tmp_path):
    entry = tmp_path / "entry.lua"
    entry.write_text("while true do end\n")
    engine = Engine(parse_settings(engine_config(str(entry), {"cpuBudget": 0.2}), base_dir=str(tmp_path)))
    with pytest.raises(StartupError, match=r"entry.lua:1: callback exceeded its Lua CPU budget"):
        await engine.start()


SANDBOXED = """
function on_message(msg)
    local conn = mix.websocket()
    local found = {}
    for _, name in ipairs({"io", "dofile", "loadstring", "loadfile", "load", "jit"}) do
        if _G[name] ~= nil then table.insert(found, name) end
    end
    if os.execute ~= nil then table.insert(found, "os.execute") end
    if debug.sethook ~= nil then table.insert(found, "debug.sethook") end
    local util = require("helper")  -- require still works
    conn:send(mix.json_encode({left = found, util = util.name, time = type(os.time())}))
end
"""


async def test_sandbox_removes_process_file_and_code_loading(start_engine, tmp_path):
    (tmp_path / "helper.lua").write_text('return { name = "helper" }\n')
    running = await start_engine(SANDBOXED, luavm={"sandbox": True})
    ws = await running.connect()
    await ws.send_str("x")
    assert await receive_json(ws) == {"left": {}, "util": "helper", "time": "number"}


async def test_no_sandbox_by_default(start_engine, tmp_path):
    (tmp_path / "helper.lua").write_text('return { name = "helper" }\n')
    running = await start_engine(SANDBOXED)
    ws = await running.connect()
    await ws.send_str("x")
    left = (await receive_json(ws))["left"]
    assert "io" in left and "os.execute" in left and "loadstring" in left
