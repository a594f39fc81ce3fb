-- The grid tests' script: each JSON request is one mesh operation, answered
-- with one JSON reply.
function on_message(msg)
    local conn = mix.websocket()
    local req = mix.json_decode(msg["data"])
    local op = req["op"]
    if op == "id" then
        conn:send(mix.json_encode({ id = conn:client_id() }))
    elseif op == "subscribe" then
        -- channels in one callback: their broker subscriptions go out in one batch
        for _, channel in ipairs(req["channels"]) do
            conn:subscribe(channel)
        end
        conn:send('{"subscribed":true}')
    elseif op == "publish" then
        -- n publishes in a row, "1".."n" (each waits for the grid's counts)
        local s, f = 0, 0
        for i = 1, req["n"] or 1 do
            local si, fi = mix.mesh.publish(req["channel"], req["data"] or tostring(i))
            s, f = s + si, f + fi
        end
        conn:send(mix.json_encode({ s = s, f = f }))
    elseif op == "send" then
        local err = mix.mesh.send(req["to"], req["data"])
        conn:send(mix.json_encode({ sent = err == nil }))
    elseif op == "wait" then
        local value = conn:wait_context_value(req["key"], 20)
        conn:send(mix.json_encode({ waited = value or false }))
    end
end
