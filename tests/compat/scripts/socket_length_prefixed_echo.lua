-- An echo server on lua/protocols/length_prefixed.lua: every packet's body
-- comes back framed the same way (conn:send writes bytes as given, so the
-- script frames its reply).
local packet = require("protocols.length_prefixed")

function protocol_input(buf)
    return packet.input(buf)
end

function protocol_decode(str)
    return packet.decode(str)
end

function protocol_encode(str)
    return packet.encode(str)
end

function on_message(msg)
    mix.socket.tcp():send(packet.encode(msg))
end
