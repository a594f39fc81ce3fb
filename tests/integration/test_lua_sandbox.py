"""luavm.sandbox: true - every way out that was found (issue 8, finding 2)
fails with a clear error and runs nothing; require keeps working inside the
entry script's folder, in the same sandbox."""
from __future__ import annotations

import aiohttp
import pytest
from lupa import luajit21

from tests.helpers import receive_json

# Each probe would run `touch MARK` (or load code) if the sandbox let it.
PROBES = {
    "require-io": ('require("io").popen("touch MARK")', "module 'io' not found"),
    "io-global": ('io.popen("touch MARK")', "attempt to index global 'io'"),
    "os-execute": ('os.execute("touch MARK")', "attempt to call field 'execute'"),
    "ffi": ('require("ffi").C.system("touch MARK")', "module 'ffi' not found"),
    "ffi-loaded": ('package.loaded.ffi.C.system("touch MARK")', "attempt to index field 'ffi'"),
    "debug-loaded": ("package.loaded.debug.sethook()", "attempt to call field 'sethook'"),
    "debug-require": ('require("debug").sethook()', "attempt to call field 'sethook'"),
    "jit-loaded": ("package.loaded.jit.on()", "attempt to index field 'jit'"),
    "jit-require": ('require("jit").on()', "module 'jit' not found"),
    "string-dump": ("string.dump(on_message)", "attempt to call field 'dump'"),
    "loadstring": ('loadstring("os.execute(\'touch MARK\')")()', "attempt to call global 'loadstring'"),
    "write-and-require": ('io.open(FOLDER .. "/written.lua", "w")', "attempt to index global 'io'"),
    "require-parent": ('require("../outside")', "not allowed in the sandbox"),
    "require-dotted-parent": ('require("..outside")', "not allowed in the sandbox"),
    "require-absolute": ("require(OUTSIDE)", "not allowed in the sandbox"),
    "require-with-string-replaced": ('string.find = function() return 1 end; require("../outside")',
                                     "not allowed in the sandbox"),
    "require-bytecode": ('require("bytecode")', "wrong mode"),
    "loadlib": ('package.loadlib("libc.so.6", "system")', "attempt to call field 'loadlib'"),
    "c-module": ('require("cmodule")', "module 'cmodule' not found"),
    "getfenv": ("getfenv(1)", "attempt to call global 'getfenv'"),
    "setfenv": ("setfenv(1, {})", "attempt to call global 'setfenv'"),
    "gc-stop": ('collectgarbage("stop")', 'collectgarbage("stop") is not allowed'),
    "gc-restart": ('collectgarbage("restart")', 'collectgarbage("restart") is not allowed'),
    "gc-setpause": ('collectgarbage("setpause", 1000)', 'collectgarbage("setpause") is not allowed'),
    "gc-setstepmul": ('collectgarbage("setstepmul", 1)', 'collectgarbage("setstepmul") is not allowed'),
    "newproxy": ("newproxy(true)", "attempt to call global 'newproxy'"),
    "python-metatable": ("getmetatable(mix.md5).__gc = on_message", "attempt to index a string value"),
    "python-global": ("python.iter({})", "attempt to index global 'python'"),
}

PROBE_SCRIPT = """
FOLDER, OUTSIDE = %r, %r
function on_message(msg)
    local conn = mix.websocket()
    local probe = ({
%s
    })[msg.data]
    local ok, err = pcall(probe)
    conn:send(mix.json_encode({ok = ok, err = tostring(err)}))
end
"""


def probe_script(folder, outside: str, marker: str) -> str:
    probes = "\n".join(f"        [{name!r}] = function() {source.replace('MARK', marker)} end,"
                       for name, (source, _) in PROBES.items())
    return PROBE_SCRIPT % (str(folder), outside, probes)


def bytecode_module() -> bytes:
    lua = luajit21.LuaRuntime(encoding=None)
    return lua.execute(b"return string.dump(function() return {} end)")


@pytest.mark.parametrize("probe", list(PROBES))
async def test_sandbox_probe_fails_with_a_clear_error(start_engine, tmp_path, probe):
    marker = tmp_path / "marker"
    outside_dir = tmp_path.parent / f"{tmp_path.name}-outside"
    outside_dir.mkdir(exist_ok=True)
    (outside_dir / "outside.lua").write_text(f'os.execute("touch {marker}")\nreturn {{}}\n')
    (tmp_path.parent / "outside.lua").write_text(f'os.execute("touch {marker}")\nreturn {{}}\n')
    (tmp_path / "bytecode.lua").write_bytes(bytecode_module())
    (tmp_path / "cmodule.so").write_bytes(b"not a shared object")
    running = await start_engine(probe_script(tmp_path, str(outside_dir / "outside"), str(marker)),
                                 luavm={"sandbox": True})
    ws = await running.connect()
    await ws.send_str(probe)
    reply = await receive_json(ws)
    assert reply["ok"] is False and PROBES[probe][1] in reply["err"], reply
    assert not marker.exists()


INSPECT = """
function on_message(msg)
    local conn = mix.websocket()
    local util = require("lib.util")
    conn:send(mix.json_encode({
        util = util.name, slashed = require("lib/util").name, seen_io = util.seen_io,
        cpath = package.cpath, loaders = #package.loaders, os = (function()
            local names = {}
            for k in pairs(os) do table.insert(names, k) end
            table.sort(names)
            return names
        end)(),
        count = type(collectgarbage("count")), collect = collectgarbage("collect"),
        traceback = type(debug.traceback()),
    }))
end
"""


async def test_sandboxed_require_finds_modules_in_the_folder_in_the_same_sandbox(start_engine, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.lua").write_text('return { name = "util", seen_io = io ~= nil }\n')
    running = await start_engine(INSPECT, luavm={"sandbox": True})
    ws = await running.connect()
    await ws.send_str("x")
    assert await receive_json(ws) == {
        "util": "util", "slashed": "util", "seen_io": False, "cpath": "", "loaders": 1,
        "os": ["clock", "date", "time"], "count": "number", "collect": 0, "traceback": "string"}


async def test_hot_update_builds_a_sandboxed_state_too(start_engine, tmp_path):
    marker = tmp_path / "marker"
    script = (f'function on_message(msg) '
              f'mix.websocket():send(tostring(pcall(require("io").popen, "touch {marker}"))) end')
    running = await start_engine(script, luavm={"sandbox": True})
    running.engine.vms[0].load()  # what hot update does with changed files
    ws = await running.connect()
    await ws.send_str("x")
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    assert not marker.exists()
