"""No script, however wrong, freezes or crashes the engine: CPU and memory
budgets, and the optional sandbox."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

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
    -- Loops in coroutines the callback starts run under its budget too.
    if msg.data == "spin-in-wrap" then coroutine.wrap(function() while true do end end)() end
    if msg.data == "spin-in-resume" then coroutine.resume(coroutine.create(function() while true do end end)) end
    if msg.data == "spin-nested" then
        coroutine.wrap(function() coroutine.resume(coroutine.create(function() while true do end end)) end)()
    end
    if msg.data == "spin-resume-in-loop" then  -- each stop is caught; the next instruction stops it again
        while true do coroutine.resume(coroutine.create(function() while true do end end)) end
    end
    if msg.data == "spin-pcall-wrap-in-loop" then
        while true do pcall(coroutine.wrap(function() while true do end end)) end
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
    ("spin", 0.2, "CPU budget of 0.2s"),
    ("spin-in-wrap", 0.2, "CPU budget of 0.2s"),
    ("spin-in-resume", 0.2, "CPU budget of 0.2s"),
    ("spin-nested", 0.2, "CPU budget of 0.2s"),
    ("spin-resume-in-loop", 0.2, "CPU budget of 0.2s"),
    ("spin-pcall-wrap-in-loop", 0.2, "CPU budget of 0.2s"),
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


def test_budgets_below_a_second_are_accepted():
    settings = parse_settings(engine_config("entry.lua", {"cpuBudget": 0.2}), base_dir=".")
    assert settings.luavm.cpu_budget == 0.2


# Without the sandbox scripts keep debug and jit, but nothing there turns the
# budgets off: each call fails with a clear error, and a loop after them is
# still stopped.
HOOK_PROBES = {
    "sethook": ("debug.sethook()", "debug.sethook is not available to scripts"),
    "sethook-loaded": ("package.loaded.debug.sethook()", "debug.sethook is not available to scripts"),
    "sethook-require": ('require("debug").sethook()', "debug.sethook is not available to scripts"),
    "gethook": ("debug.gethook()", "debug.gethook is not available to scripts"),
    "getregistry": ("debug.getregistry()", "debug.getregistry is not available to scripts"),
    "getupvalue": ("debug.getupvalue(mix.websocket, 1)", "cannot look into the engine's functions"),
    # The guards' wrappers hold the C functions they guard as upvalues.
    "getupvalue-guards": ("debug.getupvalue(string.find, 1)", "cannot look into the engine's functions"),
    "setupvalue": ("debug.setupvalue(mix.websocket, 1, nil)", "cannot look into the engine's functions"),
    "upvaluejoin": ("local x; debug.upvaluejoin(function() return x end, 1, mix.websocket, 1)",
                    "cannot look into the engine's functions"),
    "python-metatable": ("getmetatable(mix.md5).__call = on_message", "attempt to index a string value"),
    "python-metatable-debug": ("debug.getmetatable(mix.md5)", "cannot look into the engine's Python objects"),
    "jit-on": ("jit.on()", "jit.on is not available to scripts"),
    "jit-on-loaded": ('package.loaded.jit.on(on_message, true)', "jit.on is not available to scripts"),
}

HOOK_SCRIPT = """
PROBES = {
%s
}
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "all-then-spin" then
        for _, probe in pairs(PROBES) do pcall(probe) end
        jit.flush()
        jit.opt.start(3)
        while true do end
    end
    local ok, err = pcall(PROBES[msg.data])
    conn:send(mix.json_encode({ok = ok, err = tostring(err)}))
end
"""


def hook_script() -> str:
    return HOOK_SCRIPT % "\n".join(f"    [{name!r}] = function() {source} end,"
                                    for name, (source, _) in HOOK_PROBES.items())


@pytest.mark.parametrize("probe", list(HOOK_PROBES))
async def test_scripts_cannot_reach_the_budgets_hook(start_engine, probe):
    running = await start_engine(hook_script(), luavm={"cpuBudget": 0.2})
    ws = await running.connect()
    await ws.send_str(probe)
    reply = await receive_json(ws)
    assert reply["ok"] is False and HOOK_PROBES[probe][1] in reply["err"], reply


async def assert_stopped(ws, frame: str, caplog, reason: str, timeout: float = 10) -> None:
    """Send frame: its callback is stopped (close 1011) and the reason logged."""
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await ws.send_str(frame)
        msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert reason in caplog.text


async def test_a_loop_after_trying_every_way_to_the_hook_is_still_stopped(start_engine, caplog):
    running = await start_engine(hook_script(), luavm={"cpuBudget": 0.2})
    ws = await running.connect()
    await assert_stopped(ws, "all-then-spin", caplog, "CPU budget of 0.2s")


# The hook calls nothing a script can replace: a replaced global would run
# inside the hook, where no hook fires.
REPLACED_GLOBALS = """
function on_message(msg)
    if msg.data == "error" then error = function() end end
    if msg.data == "floor" then math.floor = function() while true do end end end
    if msg.data == "clock" then os.clock = function() return 0 end end
    local t, i = {}, 0
    while true do i = i + 1; t[i] = string.rep("z", 64) .. i end
end
"""


@pytest.mark.parametrize("replaced, reason", [
    ("error", "CPU budget of 0.3s"),
    ("clock", "CPU budget of 0.3s"),
    ("floor", "memory exceeded its budget of 64 MB"),
])
async def test_budgets_survive_replaced_globals(start_engine, caplog, replaced, reason):
    cpu = 0.3 if reason.startswith("CPU") else 30
    running = await start_engine(REPLACED_GLOBALS, luavm={"cpuBudget": cpu, "memoryBudget": 64})
    ws = await running.connect()
    await assert_stopped(ws, replaced, caplog, reason, timeout=20)


# The engine's own Lua between callbacks runs outside any budget: it must run
# no code of the script's (metamethods of _G, an error value's __tostring).
TRAPS = """
function on_message(msg)
    local c = mix.websocket()
    local spin = function() while true do end end
    if msg.data == "trap-globals" then
        setmetatable(_G, {__index = spin, __newindex = spin})
        _G._G = nil  -- the next lookup of _G misses, and so would the next write of conn
        c:send("trapped")
    elseif msg.data == "error-value" then
        error(setmetatable({}, {__tostring = spin}))
    else
        c:send("ok")
    end
end
"""


async def test_metamethods_of_the_globals_do_not_run_between_callbacks(start_engine):
    running = await start_engine(TRAPS, luavm={"cpuBudget": 0.2})
    ws = await running.connect()
    await ws.send_str("trap-globals")
    assert (await ws.receive(timeout=10)).data == "trapped"
    await ws.send_str("hello")
    assert (await ws.receive(timeout=10)).data == "ok"


async def test_an_error_value_with_a_looping_tostring_is_stopped(start_engine, caplog):
    running = await start_engine(TRAPS, luavm={"cpuBudget": 0.2})
    other = await running.connect()
    ws = await running.connect()
    await assert_stopped(ws, "error-value", caplog, "CPU budget of 0.2s")
    await other.send_str("hello")
    assert (await other.receive(timeout=10)).data == "ok"


# Wall-clock bound: time passes while the process gets no CPU (a busy
# machine). Here a child process sleeps: the script's CPU clock hardly moves.
WALL_CLOCK = """
function on_message(msg)
    for i = 1, 30000 do end  -- past the slice's first hook check: its clocks run
    if msg.data == "sleep" then os.execute("sleep 0.6") end
    while true do end
end
"""


async def test_a_slice_is_stopped_after_its_budget_in_wall_clock_time(start_engine, caplog):
    running = await start_engine(WALL_CLOCK, luavm={"cpuBudget": 0.3})
    ws = await running.connect()
    await assert_stopped(ws, "sleep", caplog, "CPU budget of 0.3s (in wall-clock time)")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[11])  # utime


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not os.path.exists("/proc/self/stat"),
                    reason="needs Linux CPU affinity")
async def test_cpu_stolen_by_other_processes_does_not_stretch_the_stall(start_engine, caplog):
    running = await start_engine(WALL_CLOCK, luavm={"cpuBudget": 0.3})
    ws = await running.connect()
    was = os.sched_getaffinity(0)
    core = min(was)
    burn = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        while min(cpu_ticks(b.pid) for b in burners) < 5:  # both burning on the core
            await asyncio.sleep(0.05)
        os.sched_setaffinity(0, {core})  # this thread runs the engine and its Lua
        await assert_stopped(ws, "spin", caplog, "CPU budget of 0.3s (in wall-clock time)", timeout=20)
    finally:
        os.sched_setaffinity(0, was)
        for burner in burners:
            burner.kill()
            burner.wait()


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
