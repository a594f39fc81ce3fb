"""What CONNMIX scripts rely on in the Lua side: require in CONNMIX's layout
(lua/utils by bare name, slashed names), print(t) after requiring
prettyprint as CONNMIX's faq shows it, mix.http.request's query string."""
from __future__ import annotations

import os
import re
import shutil

import pytest
from aiohttp import web

from tests.conftest import ROOT
from tests.helpers import receive_json
from tests.luahelp import make_lua


def ship_helpers(folder) -> None:
    """Our lua/utils and lua/protocols beside the entry, as in CONNMIX's lua/."""
    for name in ("utils", "protocols"):
        shutil.copytree(os.path.join(ROOT, "lua", name), folder / name)


REQUIRING = """
local bare = require("prettyprint")              -- laravel-chat: found in utils/
local line = require("protocols/line")           -- a slash instead of a dot
local dotted = require("utils.prettyprint")

function on_message(msg)
    mix.websocket():send(mix.json_encode({
        bare = type(bare), dotted = type(dotted), framed = line.encode("x"),
        shown = bare({ a = 1 }),
    }))
end
"""


@pytest.mark.parametrize("sandbox", [False, True])
async def test_require_finds_utils_by_bare_name_and_slashed_names(start_engine, tmp_path, sandbox):
    ship_helpers(tmp_path)
    running = await start_engine(REQUIRING, luavm={"sandbox": sandbox})
    ws = await running.connect()
    await ws.send_str("x")
    assert await receive_json(ws) == {"bare": "function", "dotted": "function", "framed": "x\n",
                                      "shown": "{ a = 1 }"}


async def test_hot_update_watches_modules_found_in_utils(start_engine, tmp_path):
    (tmp_path / "utils").mkdir()
    helper = tmp_path / "utils" / "greeting.lua"
    helper.write_text('return "hello"\n')
    running = await start_engine('local g = require("greeting")\n'
                                 'function on_message(msg) mix.websocket():send(g) end\n')
    vm = running.engine.vms[0]
    stat = os.stat(helper)
    helper.write_text('return "changed"\n')
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert vm.reload_if_changed()
    ws = await running.connect()
    await ws.send_str("x")
    assert await ws.receive_str(timeout=5) == "changed"


# CONNMIX's faq: print(server) and print(mix.parse_url(...)) after
# require("utils.prettyprint"); keys here in sorted order, tabs as indent.
FAQ_URL = """{
\t"force_query" = false
\t"fragment" = ""
\t"host" = ""
\t"opaque" = ""
\t"path" = "/chat"
\t"query" = [table: ADDRESS]
\t{
\t\t"foo" = "bar"
\t}
\t"raw_fragment" = ""
\t"raw_path" = ""
\t"raw_query" = "foo=bar"
\t"scheme" = ""
\t"user" = ""
}"""


def test_print_shows_a_tables_contents_as_connmix_faq_does(tmp_path):
    ship_helpers(tmp_path)
    lua = make_lua(tmp_path)
    printed = lua.execute("""
        local out = {}
        print = function(s) out[#out + 1] = s end  -- what the helper prints with
        require("utils.prettyprint")
        local tb, err = mix.parse_url("/chat?foo=bar")
        print(tb, err)
        print("plain", 1, nil, true)
        print({})
        return unpack(out)
    """)
    faq, plain, empty = (value.decode() for value in printed)
    assert re.sub(r"\[table: [^\]]+\]", "[table: ADDRESS]", faq) == FAQ_URL
    assert plain == "plain\t1\tnil\ttrue"
    assert empty == "{\n}"


QUERYING = """
function on_message(msg)
    local r, err = mix.http.request("GET", msg.data, { query = QUERY })
    mix.websocket():send(r and r.body or ("error: " .. err))
end
"""


@pytest.fixture
async def raw_echo():
    """An HTTP server answering with the request's target as it arrived."""
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    app = web.Application()
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/echo"
    await runner.cleanup()


@pytest.mark.parametrize("query, path, arrived", [
    ('"a=1&b=x%20y&c=%2F%26"', "", "/echo?a=1&b=x%20y&c=%2F%26"),  # sent as given, escapes kept
    ('"a=1"', "?old=2#frag", "/echo?a=1"),  # replaces the url's own query, as Go's RawQuery does
    ('"k=v w&n=\\xe4"', "", "/echo?k=v%20w&n=%E4"),  # what cannot go on the wire is escaped
    ('{a = "1"}', "?old=2", "/echo?old=2&a=1"),  # ours: a table adds to the url's query
])
async def test_http_request_query_string(start_engine, raw_echo, query, path, arrived):
    running = await start_engine(QUERYING.replace("QUERY", query))
    ws = await running.connect()
    await ws.send_str(raw_echo + path)
    assert await ws.receive_str(timeout=5) == arrived
