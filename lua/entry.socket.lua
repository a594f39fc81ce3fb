-- Default socket entry script (protocol: socket): a WebSocket server written
-- in Lua over raw TCP (lua/protocols/websocket.lua), as CONNMIX's default
-- socket entry is; every message is sent back. Docs of every call:
-- README.md ("Custom protocols over TCP").
local mix_log = mix.log
local mix_DEBUG = mix.DEBUG
local websocket = require("protocols.websocket")

function on_connect(client_id)
    mix_log(mix_DEBUG, "on_connect " .. client_id)
end

-- After the upgrade request is read; return false to refuse it (403).
local function on_handshake(client_id, headers)
    mix_log(mix_DEBUG, "on_handshake " .. client_id .. " " .. tostring(headers.RequestUri))
end

-- buf: the bytes buffered so far (mix.buffer). Return the length of the
-- first complete packet (here the upgrade request, then one frame), 0 to
-- wait for more, -1 to disconnect.
function protocol_input(buf)
    return websocket.input(buf, on_handshake)
end

-- The return value is on_message's msg: {type = "text"|"binary", data, finish}
-- for a whole message, nil (no on_message) for the rest.
function protocol_decode(str)
    return websocket.decode(str)
end

-- What the engine sends for the script (publishes, mix.mesh.send, the APIs)
-- passes through here; conn:send writes its bytes as given.
function protocol_encode(str)
    return websocket.encode(str)
end

function on_message(msg)
    if msg.type == "text" then
        websocket.send_text(msg.data)
    else
        websocket.send_binary(msg.data)
    end
end

-- err is nil on a clean close, else the reason.
function on_close(client_id, err)
    mix_log(mix_DEBUG, "on_close " .. client_id .. " " .. tostring(err))
end
