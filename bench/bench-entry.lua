-- bench-entry.lua: the message-centre subset of ../shared/bench (its README, "The protocol").
--   {"op":"subscribe","channel":"<name>"}   -> conn:subscribe(name), reply {"result":true}
--   {"op":"unsubscribe","channel":"<name>"} -> conn:unsubscribe(name), reply {"result":true}
--   {"op":"echo","data":...}                -> the same frame text back
-- Publishing is the engine's own API (POST /v1/mesh/publish, /ws/v1 mesh.publish).
-- No auth and no logging per message: this measures the engine, not the article's script.
local json_decode = mix.json_decode
local OK, FAILED = '{"result":true}', '{"result":false}'

function on_handshake(client_id, headers, server)
end

function on_message(msg)
    if msg.type ~= "text" then
        return
    end
    local conn = mix.websocket()
    local req, err = json_decode(msg.data)
    if err ~= nil or type(req) ~= "table" then
        conn:send(FAILED)
        return
    end
    local op = req.op
    if op == "echo" then
        conn:send(msg.data)
    elseif op == "subscribe" then
        -- conn:subscribe returns an error string, or nil on success
        conn:send(conn:subscribe(req.channel) == nil and OK or FAILED)
    elseif op == "unsubscribe" then
        conn:send(conn:unsubscribe(req.channel) == nil and OK or FAILED)
    else
        conn:send(FAILED)
    end
end

function on_close(client_id, err)
end
