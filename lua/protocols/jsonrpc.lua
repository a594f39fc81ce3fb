-- JSON-RPC over newline-terminated lines, with the functions of CONNMIX's
-- protocols/jsonrpc.lua (input, decode, encode, encode_table), written for
-- connmix-py. A line that is not a JSON object with a string "method"
-- closes the connection ("params" may be left out, as JSON-RPC 2.0 allows).
--
--   local jsonrpc = require("protocols.jsonrpc")
--   function protocol_input(buf) return jsonrpc.input(buf) end
--   function protocol_decode(str, c) return jsonrpc.decode(str, c) end
--   function protocol_encode(str) return jsonrpc.encode(str) end
--   function on_message(req) conn:send(jsonrpc.encode_table({jsonrpc = "2.0", id = req.id, result = 1})) end
local text = require("protocols.text")

local M = {}

M.input = text.input
M.encode = text.encode

-- The request as a table; nil (no on_message) and the connection closed
-- for anything else. conn: the connection (default: the current one).
function M.decode(str, conn)
    local request, err = mix.json_decode(text.decode(str))
    if err == nil and type(request) == "table" and type(request.method) == "string" then
        return request
    end
    mix.log(mix.DEBUG, "jsonrpc: not a request: " .. tostring(err or "no method"))
    local c = type(conn) == "table" and conn or mix.socket.tcp()
    c:close()
    return nil
end

-- s, err = encode_table(tb): tb as JSON, one line.
function M.encode_table(tb)
    local str, err = mix.json_encode(tb)
    if err then
        return nil, err
    end
    return M.encode(str), nil
end

return M
