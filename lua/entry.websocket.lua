-- Default websocket entry script, laid out like CONNMIX's own.
-- Docs of every call: README.md ("The Lua API").
local mix_log = mix.log
local mix_DEBUG = mix.DEBUG

-- Runs when the upgrade request is read; return false to refuse it (403).
function on_handshake(client_id, headers, server)
    mix_log(mix_DEBUG, "on_handshake " .. client_id .. " from " .. server["RemoteAddr"])
end

-- msg = {type = "text" | "binary", data = <string>, finish = true}
function on_message(msg)
    local conn = mix.websocket()
    if msg["type"] ~= "text" then
        conn:close()
        return
    end
    -- hello example: {"op":"hello","name":"Ann"} -> {"hello":"Ann"}
    local data, err = mix.json_decode(msg["data"])
    if err then
        conn:send('{"code":1,"msg":"invalid json"}')
        return
    end
    if data["op"] == "hello" then
        local reply = mix.json_encode({ hello = data["name"] or "world", client_id = conn:client_id() })
        conn:send(reply)
        return
    end
    conn:send('{"code":1,"msg":"unknown op"}')
end

-- err is nil on a clean close, else the reason.
function on_close(client_id, err)
    mix_log(mix_DEBUG, "on_close " .. client_id .. " " .. tostring(err))
end
