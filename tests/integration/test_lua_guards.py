"""Issue 8 finding 4: no client message freezes the engine longer than the CPU
budget or grows memory past the memory budget, whatever library function it
calls; and the memory budget stops the callback that grows memory, not the
ones that run while memory is high."""
from __future__ import annotations

import logging

import aiohttp
import pytest
from lupa import luajit21

from tests.luahelp import make_lua

MB = 1024 * 1024

BOMBS = """
keep = {}
local big = string.rep("y", 4 * 1024 * 1024)
local bombs = {
    find = function() return string.find(string.rep("a", 150), ".-.-.-.-b") end,
    gmatch = function() for _ in string.gmatch(string.rep("a", 150), ".-.-.-.-b") do end end,
    ["gsub-doubling"] = function()
        local s = "xy"
        for _ = 1, 40 do s = s:gsub(".", "%0%0") end
    end,
    rep = function() return string.rep("x", 2^30) end,
    ["concat-self"] = function()
        local s = "x"
        for _ = 1, 40 do s = s .. s end
    end,
    ["concat-self-in-pcall"] = function()
        local s = "x"
        for _ = 1, 40 do pcall(function() s = s .. s end) end
        local t = {}
        for i = 1, 1e9 do t[i] = s end
    end,
    ["table-concat"] = function()
        local t = {}
        for i = 1, 100 do t[i] = big end
        return table.concat(t, ",")
    end,
    format = function() return string.format(string.rep("%s", 50), unpack((function()
        local t = {} for i = 1, 50 do t[i] = big end return t end)())) end,
    json_encode = function()
        local t = {}
        for i = 1, 30 do t[i] = big end
        local out, err = mix.json_encode(t)
        error(err)
    end,
    json_decode = function()
        local _, err = mix.json_decode("[" .. string.rep("[],", 2 * 1024 * 1024) .. "[]]")
        error(err)
    end,
    php_pack = function()
        local _, err = mix.php_pack("a999999999", "x")
        error(err)
    end,
    php_unpack = function()
        local _, err = mix.php_unpack("C*", string.rep("z", 2 * 1024 * 1024))
        error(err)
    end,
    base64 = function()
        local s = string.rep("b", 20 * 1024 * 1024)
        local t = {}
        for i = 1, 10 do t[i] = assert(mix.base64_encode(s)) end
    end,
}

function on_message(msg)
    local bomb = bombs[msg.data]
    if bomb then bomb() end
    conn:send("ok")
end
"""


def memory_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM starts again from the current RSS


@pytest.mark.parametrize("bomb, reason", [
    ("find", "CPU budget of 1s"),
    ("gmatch", "CPU budget of 1s"),
    ("gsub-doubling", "budget of"),
    ("rep", "rep: a result of 1073741824 bytes would pass the Lua memory budget of 64 MB"),
    ("concat-self", "Lua memory exceeded its budget of 64 MB (an allocation passed the hard limit of 96 MB)"),
    ("concat-self-in-pcall", "Lua memory exceeded its budget of 64 MB"),
    ("table-concat", "concat: a result of 419430499 bytes would pass the Lua memory budget"),
    ("format", "format: a result of"),
    ("json_encode", "json_encode: a result of"),
    ("json_decode", "json_decode: a result of"),
    ("php_pack", "php_pack: Type a: result larger than"),
    ("php_unpack", "php_unpack: a result of"),
    ("base64", "base64_encode: a result of"),
])
async def test_bomb_is_stopped_within_budgets_and_others_are_served(start_engine, caplog, bomb, reason):
    running = await start_engine(BOMBS, luavm={"cpuBudget": 1, "memoryBudget": 64})
    other = await running.connect()
    bad = await running.connect()
    reset_peak_memory()
    rss_before = memory_kb("VmRSS")
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await bad.send_str(bomb)
        msg = await bad.receive(timeout=30)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert reason in caplog.text
    # The hard cap (96 MB) plus what Python copies on the way.
    assert memory_kb("VmHWM") - rss_before < 200 * 1024
    await other.send_str("hello")
    assert (await other.receive(timeout=5)).data == "ok"
    fresh = await running.connect()
    await fresh.send_str("hello")
    assert (await fresh.receive(timeout=5)).data == "ok"


HOARDER = """
keep = {}
function on_message(msg)
    if msg.data == "store" then  -- 10 MB more in a global, in small pieces
        for _ = 1, 100 do keep[#keep + 1] = string.rep("k", 100 * 1024) .. #keep end
    elseif msg.data == "garbage" then  -- 200 MB of garbage, nothing kept
        for i = 1, 400 do local s = string.rep("g", 512 * 1024) .. i end
    end
    conn:send("ok " .. #keep)
end
"""


async def test_memory_budget_stops_the_callback_that_grows_not_the_others(start_engine, caplog):
    running = await start_engine(HOARDER, luavm={"memoryBudget": 64})
    hoarder, innocent = await running.connect(), await running.connect()
    for _ in range(4):
        await hoarder.send_str("store")
        assert (await hoarder.receive(timeout=10)).data.startswith("ok")
    await innocent.send_str("garbage")
    assert (await innocent.receive(timeout=30)).data == "ok 400"
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        for _ in range(4):
            await hoarder.send_str("store")
            msg = await hoarder.receive(timeout=10)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                break
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert "memory exceeded its budget of 64 MB" in caplog.text
    # What the hoarder kept stays (it is a global), yet callbacks that do
    # not grow memory still run, garbage and all.
    for _ in range(3):
        await innocent.send_str("garbage")
        assert (await innocent.receive(timeout=30)).data.startswith("ok")
    fresh = await running.connect()
    await fresh.send_str("hello")
    assert (await fresh.receive(timeout=5)).data.startswith("ok")


# The Lua matcher against LuaJIT's own C functions -------------------------------

COMPARE = b"""
local f, s, p, r, x = ...
local function show(...)
    local t = {}
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        t[#t + 1] = type(v) .. ":" .. tostring(v)
    end
    return table.concat(t, "|")
end
if f == "gmatch" then
    local out = {}
    local ok, e = pcall(function()
        for a, b, c in string.gmatch(s, p) do
            out[#out + 1] = show(a, b, c)
            if #out > 50 then break end
        end
    end)
    return ok and table.concat(out, ";") or "error:" .. tostring(e)
end
if f == "gsub-function" then
    local calls = {}
    local replaced = show(pcall(string.gsub, s, p, function(...)
        calls[#calls + 1] = show(...)
        if #calls % 2 == 0 then return nil end
        return "<" .. #calls .. ">"
    end))
    return replaced .. "#" .. table.concat(calls, ";")
end
if f == "gsub-table" then
    return show(pcall(string.gsub, s, p, { a = "A", hello = 1, [" "] = false, x = {} }))
end
return show(pcall(string[f], s, p, r, x))
"""

SUBJECTS = [b"", b"a", b"hello world", b"  trim me  ", b"key=value; k2=v2", b"(a(b)c)d(e", b"a,b,,c",
            b"x\0y\0z", b"aaa", b"abcabcabc", b"f(a(b)) [x]", b"12.5e3 -7 0x1F", b"\n\tline\r\n", b"^a^b"]
PATTERNS = [b"a", b".", b"^a", b"a$", b"^$", b"%a+", b"%s*$", b"^%s*(.-)%s*$", b"(%w+)=(%w+)", b"%b()",
            b"%f[%w]%w+", b"()a()", b"(a)(b)?", b"[%a_][%w_]*", b"[^,]*", b"", b"(", b"[a", b"%", b"%g+",
            b"x%z", b"[%z]", b"(.)%1", b"%d+%.?%d*", b"[a-c]+", b"[]]", b"[^]]", b"[%]]", b"a-b", b".-",
            b"(h)(e)(l)(l)(o)", b"%f[%A]", b"%1", b"(()", b"a)", b"%bx", b"$", b"^", b"^.", b"[a-]", b"%-",
            b"^(%S+)%s+(%S+)", b"((a)(b))", b"[%d-z]", b"%f", b"x\0y"]
CALLS = ([("find", r, None) for r in (None, 2, -3, 100)] + [("find", 1, True)]
         + [("match", r, None) for r in (None, 3, -2)] + [("gmatch", None, None)]
         + [("gsub", r, x) for r in (b"X", b"%0%0", b"<%1>", b"%2", b"%%", b"%", b"%a", 7) for x in (None, 1)]
         + [("gsub-function", None, None), ("gsub-table", None, None)])


def test_lua_matcher_gives_what_the_c_functions_give(tmp_path):
    reference = luajit21.LuaRuntime(encoding=None)
    lua = make_lua(tmp_path)
    lua.vm.guards.set_step_limit(0)  # every match goes through the Lua matcher
    differences = []
    for subject in SUBJECTS:
        for pattern in PATTERNS:
            for name, r, x in CALLS:
                expected = reference.execute(COMPARE, name, subject, pattern, r, x)
                got = lua.execute(COMPARE.decode(), name, subject, pattern, r, x)
                if got != expected:
                    differences.append((name, subject, pattern, r, x, expected, got))
    assert differences == []


def test_guards_keep_the_c_functions_results_for_ordinary_calls(tmp_path):
    lua = make_lua(tmp_path)
    assert lua.run('return ("a,b"):find(",", 1, true)') == (2, 2)
    assert lua.run('return ("k=v"):match("(%w+)=(%w+)")') == (b"k", b"v")
    assert lua.run('return string.rep("ab", 3, "-"), table.concat({1, "x"}, ";"), string.format("%5.1f|%s", 2, "s")') \
        == (b"ab-ab-ab", b"1;x", b"  2.0|s")
    # A long needle over a long subject: searched window by window, same answer.
    assert lua.run('local s = string.rep("a", 3e6) .. "b" return s:find(string.rep("a", 20) .. "b", 5, true)') \
        == (3_000_000 - 19, 3_000_001)


async def test_backtracking_find_on_a_long_subject_is_stopped_by_the_cpu_budget(start_engine, caplog):
    running = await start_engine("""
        function on_message(msg)
            local s = string.rep("a", 20000)
            conn:send(tostring(s:find("a*a*b")))
        end
        """, luavm={"cpuBudget": 0.5})
    ws = await running.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        await ws.send_str("x")
        msg = await ws.receive(timeout=30)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert "CPU budget of 0.5s" in caplog.text


FILLER = """
keep = {}
function on_message(msg)
    if msg.data == "fill" then  -- keeps 900 KB, under what a finished callback may keep
        keep[#keep + 1] = string.rep("f", 900 * 1024) .. #keep
    elseif msg.data == "split" then
        local parts, err = mix.str_split(string.rep("@", 1024 * 1024 - 10), "@")
        conn:send(tostring(err))
        return
    end
    conn:send("ok")
end
"""


async def test_values_from_python_never_pass_the_hard_cap(start_engine, caplog):
    # A Lua string made by lupa past the cap aborts the process (LuaJIT
    # panics): with Lua memory full, events are refused instead.
    running = await start_engine(FILLER, luavm={"memoryBudget": 64}, maxMessageSize=8 * MB)
    other, filler = await running.connect(max_msg_size=8 * MB), await running.connect()
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        for _ in range(300):  # until Lua memory reaches the cap
            await filler.send_str("fill")
            msg = await filler.receive(timeout=10)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                break
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
        await other.send_str("x" * 6 * MB)  # more than the few MB left
        msg = await other.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert "on_message not run" in caplog.text and "Lua memory budget used up" in caplog.text


async def test_str_split_into_a_million_pieces_is_refused(start_engine):
    running = await start_engine(FILLER, luavm={"memoryBudget": 64})
    ws = await running.connect()
    await ws.send_str("split")
    assert "str_split: a result of" in (await ws.receive(timeout=10)).data


CREEPER = """
kept = {}
function on_message(msg)
    -- under budget/64 per message: never judged as growth, yet it adds up
    kept[#kept + 1] = string.rep(string.char(#kept % 256), 200 * 1024)
    local err = mix.websocket():send("ok")
    if err then error("full: " .. err) end  -- near the cap even a send's answer has no room
end
"""


async def test_a_handshake_when_lua_memory_is_full_is_refused_with_503(start_engine, caplog):
    running = await start_engine(CREEPER, luavm={"memoryBudget": 16})  # hard cap 48 MB
    creeper = await running.connect()
    for _ in range(400):  # until the state is full: the creeper's callback fails
        await creeper.send_str("more")
        if (await creeper.receive(timeout=10)).type is not aiohttp.WSMsgType.TEXT:
            break
    with caplog.at_level(logging.ERROR, logger="connmix.lua"):
        async with running.session.get(running.ws_url, headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Pad": "x" * 8000}) as resp:
            assert resp.status == 503
    assert "on_handshake not run" in caplog.text
