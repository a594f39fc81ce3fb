"""The Lua VM as scripts see it: `require` beside the entry script, the
message table, the connection passed to callbacks (SPEC section 3)."""
from __future__ import annotations

import textwrap

import pytest

from tests.luahelp import ask

ENTRY = """
local pretty = require("utils.prettyprint")
local proto = require("protocols/websocket")
local pkg = require("lib")  -- lib/init.lua

function on_message(msg, passed)
    local chunk = loadstring(msg.data)
    setfenv(chunk, setmetatable({ pretty = pretty, proto = proto, pkg = pkg, msg = msg, passed = passed },
                                { __index = _G }))
    conn:send(mix.json_encode({ chunk() }))
end
"""

MODULES = {
    "utils/prettyprint.lua": """
        local M = { loads = (PRETTY_LOADS or 0) + 1 }
        PRETTY_LOADS = M.loads
        function M.show(t) return "<" .. table.concat(t, ",") .. ">" end
        return M
    """,
    "protocols/websocket.lua": """
        local util = require("utils.prettyprint")  -- modules require each other too
        return { name = "websocket", show = util.show }
    """,
    "lib/init.lua": 'return { from_init = true }',
}


@pytest.fixture
async def engine(start_engine, tmp_path):
    for name, source in MODULES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return await start_engine(ENTRY)


@pytest.mark.parametrize("snippet, expected", [
    ('return pretty.show({1, 2})', ["<1,2>"]),
    ('return proto.name, proto.show({"a"})', ["websocket", "<a>"]),
    ('return pkg.from_init', [True]),
    ('return pretty.loads, PRETTY_LOADS', [1, 1]),  # loaded once though required twice
    ('return rawequal(require("utils.prettyprint"), pretty)', [True]),
    ('return pcall(require, "no.such.module")', [False]),
    ('return msg.type, msg.data ~= nil, msg.finish', ["text", True, True]),
    ('return rawequal(passed, conn), rawequal(passed, mix.websocket())', [True, True]),
])
async def test_modules_beside_the_entry_script(engine, snippet, expected):
    ws = await engine.connect()
    result = await ask(ws, snippet)
    assert result[:len(expected)] == expected
