-- A line-based chat over raw TCP (telnet style), on lua/protocols/line.lua:
-- "NICK ann", "JOIN lobby", "SAY hello", "WHO", "QUIT".
local line = require("protocols.line")

function on_connect(client_id)
    mix.socket.tcp():send(line.encode("WELCOME " .. client_id))
end

function protocol_input(buf)
    return line.input(buf)
end

function protocol_decode(str)
    local text = line.decode(str)
    if text == "" then
        return nil -- blank lines are ignored
    end
    local verb, rest = text:match("^(%u+)%s*(.*)$")
    return { verb = verb or "?", arg = rest or text }
end

function protocol_encode(str)
    return line.encode(str)
end

function on_message(cmd)
    local conn = mix.socket.tcp()
    local nick = conn:context_value("nick")
    if cmd.verb == "NICK" then
        conn:set_context_value("nick", cmd.arg)
        conn:send(line.encode("OK"))
    elseif nick == nil then
        conn:send(line.encode("ERR nick first"))
    elseif cmd.verb == "JOIN" then
        conn:set_context_value("room", cmd.arg)
        conn:subscribe("room:" .. cmd.arg)
        local s = mix.mesh.publish("room:" .. cmd.arg, "* " .. nick .. " joined")
        conn:send(line.encode("OK " .. s))
    elseif cmd.verb == "SAY" then
        local room = conn:context_value("room")
        if room == nil then
            conn:send(line.encode("ERR join first"))
            return
        end
        mix.mesh.publish("room:" .. room, "<" .. nick .. "> " .. cmd.arg)
    elseif cmd.verb == "QUIT" then
        conn:send(line.encode("BYE"))
        conn:close()
    else
        conn:send(line.encode("ERR unknown " .. cmd.verb))
    end
end

function on_close(client_id, err)
    if conn then
        local room, nick = conn:context_value("room"), conn:context_value("nick")
        if room then
            conn:unsubscribe("room:" .. room)
            mix.mesh.publish("room:" .. room, "* " .. nick .. " left")
        end
    end
end
