-- Default socket entry script (protocol: socket): packets are a 4-byte
-- big-endian length and a body (lua/protocols/length_prefixed.lua); every
-- body is sent back. Docs of every call: README.md ("Custom protocols").
local mix_log = mix.log
local mix_DEBUG = mix.DEBUG
local packet = require("protocols.length_prefixed")

function on_connect(client_id)
    mix_log(mix_DEBUG, "on_connect " .. client_id)
end

-- buf: the bytes buffered so far (mix.buffer). Return the length of the
-- first complete packet, 0 to wait for more, -1 to disconnect.
function protocol_input(buf)
    return packet.input(buf)
end

-- str: one packet. The return value is on_message's msg (nil: no on_message).
function protocol_decode(str)
    return packet.decode(str)
end

-- Everything sent to the connection (conn:send, publishes, mesh.send, the
-- APIs) passes through here; return the bytes to write.
function protocol_encode(str)
    return packet.encode(str)
end

function on_message(msg)
    local conn = mix.socket.tcp()
    conn:send(msg)
end

-- err is nil on a clean close, else the reason.
function on_close(client_id, err)
    mix_log(mix_DEBUG, "on_close " .. client_id .. " " .. tostring(err))
end
