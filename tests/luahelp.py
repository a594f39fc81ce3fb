"""A loaded LuaVM for tests of pure `mix` functions (no sockets, no engine).

    @pytest.fixture
    def lua(tmp_path):
        return make_lua(tmp_path)

    def test_x(lua):
        assert lua.run('return mix.str_split("a@b", "@")') == ([b"a", b"b"], None)
"""
from __future__ import annotations

from typing import Any

from connmix_py.config import LuaVmSettings, ServerSettings
from connmix_py.hub import Hub
from connmix_py.lua.convert import from_lua
from connmix_py.lua.vm import LuaVM
from connmix_py.mesh import Mesh


class LoadedLua:
    def __init__(self, vm: LuaVM) -> None:
        self.vm = vm

    def execute(self, source: str, *args: Any) -> Any:
        """Run a Lua chunk; its results as lupa returns them (a tuple if several)."""
        return self.vm.runtime.execute(source.encode(), *args)

    def run(self, source: str, *args: Any) -> tuple:
        """Run a Lua chunk; every result converted to Python (tables -> list/dict)."""
        results = self.execute(source, *args)
        if type(results) is not tuple:
            results = (results,)
        return tuple(from_lua(value) for value in results)

    def table(self, value: Any) -> Any:
        """A Python value as a Lua value (str -> bytes, dict/list -> table)."""
        return self.vm.to_lua(value)


def make_lua(tmp_path, luavm: LuaVmSettings | None = None, **settings: Any) -> LoadedLua:
    entry = tmp_path / "entry.lua"
    entry.write_text("-- empty entry for tests\n")
    hub = Hub()
    vm = LuaVM(ServerSettings(entry=str(entry), **settings), hub, Mesh(hub), lambda: None, luavm)
    vm.load()
    return LoadedLua(vm)


# An entry script that runs each text message as a Lua chunk inside
# on_message (so inside the connection's coroutine, with `conn` set) and
# replies with its results as a JSON array, nil written as NIL. Binary
# messages are echoed. on_close counts its calls in `closed`.
NIL = "<nil>"
EVAL_SCRIPT = """
closed = {}

local function pack(...)
    local out = {}
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        if v == nil then v = "%s" end
        out[i] = v
    end
    return out
end

function on_message(msg)
    if msg.type == "binary" then
        conn:send(msg.data, "binary")
        return
    end
    local chunk, err = loadstring(msg.data, "=snippet")
    if not chunk then
        conn:send(mix.json_encode({ "syntax error", err }))
        return
    end
    local reply, err = mix.json_encode(pack(chunk()))
    conn:send(reply or mix.json_encode({ "cannot encode", err }))
end

function on_close(client_id, err)
    local seen = closed[client_id] or { count = 0 }
    seen.count = seen.count + 1
    seen.err = err or "%s"
    closed[client_id] = seen
end
""" % (NIL, NIL)


async def ask(ws, lua_source: str, timeout: float = 5) -> list:
    """Send a snippet to EVAL_SCRIPT; its results as a list."""
    await ws.send_str(lua_source)
    msg = await ws.receive(timeout=timeout)
    assert msg.type.name == "TEXT", f"expected a reply, got {msg!r}"
    return msg.json()
