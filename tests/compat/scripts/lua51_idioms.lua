-- Lua 5.1 + bitop idioms CONNMIX scripts rely on, and pcall around waiting calls.
local pp = require("utils.prettyprint")
local codec = require("protocols/codec")

function on_message(msg)
    local conn = mix.websocket()
    local data = mix.json_decode(msg["data"])
    local op = data["op"]
    if op == "bits" then
        local flags = data["flags"]
        conn:send(mix.json_encode({
            band = bit.band(flags, 0x0F), bor = bit.bor(flags, 0x100),
            bxor = bit.bxor(flags, 0xFF), lshift = bit.lshift(1, 10),
            rshift = bit.rshift(flags, 4), tohex = bit.tohex(flags, 4),
        }))
    elseif op == "tables" then
        local list = data["list"]
        local a, b, c = unpack(list)
        table.insert(list, "tail")
        conn:send(mix.json_encode({ n = table.getn(list), first = a, second = b, third = c,
            joined = table.concat(list, ","), pretty = pp({ x = 1, y = { 2, 3 } }),
            framed = codec.frame("hi") }))
    elseif op == "pcall-http" then
        -- a waiting call inside pcall: yields across pcall (LuaJIT) and resumes
        local ok, resp, err = pcall(mix.http.request, "GET", data["url"], { timeout = 5 })
        conn:send(mix.json_encode({ ok = ok, status = resp and resp.status_code or false,
            err = err or false }))
    elseif op == "pcall-error" then
        local ok, err = pcall(function() error({ code = 7 }) end)
        local ok2, err2 = pcall(error, "plain")
        conn:send(mix.json_encode({ ok = ok, code = err.code, ok2 = ok2, err2 = err2 }))
    elseif op == "wait" then
        local ok, v = pcall(conn.wait_context_value, conn, "never", 0.2)
        conn:send(mix.json_encode({ ok = ok, v = v == nil and "nil" or v }))
    end
end
