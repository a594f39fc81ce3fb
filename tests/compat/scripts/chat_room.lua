-- A chat room in the style of CONNMIX's documentation examples:
-- {"op":"join","room":"r1","name":"ann"}, {"op":"send","text":"hi"}, {"op":"quit"}
local mix_log = mix.log
local mix_DEBUG = mix.DEBUG

function on_handshake(client_id, headers, server)
    mix_log(mix_DEBUG, "handshake " .. client_id .. " " .. server["RequestUri"])
end

function on_message(msg)
    local conn = mix.websocket()
    local data, err = mix.json_decode(msg["data"])
    if err then
        conn:send(mix.json_encode({ code = 1, msg = "invalid json" }))
        return
    end
    local op = data["op"]
    if op == "join" then
        conn:set_context({ room = data["room"], name = data["name"] })
        local err = conn:subscribe("room:" .. data["room"])
        if err then
            conn:send(mix.json_encode({ code = 1, msg = err }))
            return
        end
        local s, f = mix.mesh.publish("room:" .. data["room"],
            mix.json_encode({ event = "join", name = data["name"] }))
        conn:send(mix.json_encode({ result = true, members = s }))
    elseif op == "send" then
        local ctx = conn:context()
        if ctx["room"] == nil then
            conn:send('{"code":1,"msg":"join first"}')
            return
        end
        mix.mesh.publish("room:" .. ctx["room"],
            mix.json_encode({ event = "message", name = ctx["name"], text = data["text"] }))
    elseif op == "quit" then
        local room = conn:context_value("room")
        conn:unsubscribe("room:" .. room)
        mix.mesh.publish("room:" .. room, mix.json_encode({ event = "quit", name = conn:context_value("name") }))
        conn:set_context({})
        conn:send('{"result":true}')
    end
end

function on_close(client_id, err)
end
