-- A binary game protocol on lua/protocols/length_prefixed.lua. Each body is
-- a 2-byte big-endian opcode and fixed fields, packed with mix.php_pack:
--   1 LOGIN  N player      -> 1 N player, n players online
--   2 MOVE   n x, n y      -> 2 N player, n x, n y   to everyone in the world
--   3 PING   J timestamp   -> 3 J timestamp
-- Anything else gets  255 a* message.
local packet = require("protocols.length_prefixed")

local LOGIN, MOVE, PING, ERROR = 1, 2, 3, 255
local online = 0
-- the fields after the opcode, as php_unpack formats
local FIELDS = { [LOGIN] = "x2/Nplayer", [MOVE] = "x2/nx/ny", [PING] = "x2/Jts" }

function protocol_input(buf)
    return packet.input(buf)
end

function protocol_decode(str)
    local body = packet.decode(str)
    if #body < 2 then
        return { op = ERROR, why = "short packet" }
    end
    local head = mix.php_unpack("nop", body)
    local format = FIELDS[head.op]
    if format == nil then
        return { op = ERROR, why = "unknown opcode " .. head.op }
    end
    local msg, err = mix.php_unpack(format, body)
    if err then
        return { op = ERROR, why = err }
    end
    msg.op = head.op
    return msg
end

function protocol_encode(str)
    return packet.encode(str)
end

function on_message(msg)
    local conn = mix.socket.tcp()
    if msg.op == LOGIN then
        conn:set_context_value("player", msg.player)
        conn:subscribe("world")
        online = online + 1
        conn:send(packet.encode(mix.php_pack("nNn", LOGIN, msg.player, online)))
    elseif msg.op == MOVE then
        local player = conn:context_value("player")
        if player == nil then
            conn:send(packet.encode(mix.php_pack("na*", ERROR, "login first")))
            return
        end
        mix.mesh.publish("world", mix.php_pack("nNnn", MOVE, player, msg.x, msg.y), "binary")
    elseif msg.op == PING then
        conn:send(packet.encode(mix.php_pack("nJ", PING, msg.ts)), "binary")
    else
        conn:send(packet.encode(mix.php_pack("na*", ERROR, msg.why)))
    end
end

function on_close(client_id, err)
    if conn and conn:context_value("player") then
        online = online - 1
    end
end
