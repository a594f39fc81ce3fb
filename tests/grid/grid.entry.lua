-- The grid tests' script: each JSON request is one mesh operation, answered
-- with one JSON reply (a publish's counts, a send's error, a waited value).
function on_message(msg)
    local conn = mix.websocket()
    local req = mix.json_decode(msg["data"])
    local op = req["op"]
    if op == "id" then
        conn:send(mix.json_encode({ id = conn:client_id() }))
    elseif op == "subscribe" then
        conn:subscribe(req["channel"])
        conn:send('{"subscribed":true}')
    elseif op == "publish" then
        local s, f = mix.mesh.publish(req["channel"], req["data"])
        conn:send(mix.json_encode({ s = s, f = f }))
    elseif op == "send" then
        local err = mix.mesh.send(req["to"], req["data"])
        conn:send(mix.json_encode({ sent = err == nil }))
    elseif op == "wait" then
        local value = conn:wait_context_value(req["key"], 20)
        conn:send(mix.json_encode({ key = req["key"], value = value }))
    end
end
