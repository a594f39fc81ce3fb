-- A chat entry in the shape of connmix/examples laravel-chat/entry.lua,
-- written here: the old calling style (the connection last, no client id),
-- helpers required the way CONNMIX's install layout finds them, events for
-- a backend pushed to one queue topic. Packets are text lines (one JSON
-- object each) instead of websocket frames.
require("prettyprint")
local mix_log = mix.log
local mix_ERROR = mix.ERROR
local line = require("protocols/line")
local mix_push = mix.queue.push
local topic = "chat"
local auth_op = "auth"
local auth_key = "uid"

local function push(conn, tb)
    local n, err = mix_push(topic, tb)
    if err then
        mix_log(mix_ERROR, "push error: " .. err)
        conn:close()
    end
end

function on_connect(conn)
    conn:set_context_value("headers", { remote = conn:remote_addr() })
    push(conn, { event = "connect" })
end

function on_close(err, conn)
    push(conn, { event = "close", uid = conn:context()[auth_key] })
end

function protocol_input(buf, conn)
    return line.input(buf)
end

function protocol_decode(str, conn)
    return { type = "text", data = line.decode(str) }
end

-- What the backend sends (mesh.send, publishes) goes out as one line.
function protocol_encode(str, conn)
    return line.encode(str)
end

function on_message(data, conn)
    local msg, err = mix.json_decode(data["data"])
    if err then
        mix_log(mix_ERROR, "json_decode error: " .. err)
        return
    end
    local ctx = conn:context()
    local tb = { event = "message", uid = ctx[auth_key], frame = data }
    if msg["op"] == auth_op then
        tb["headers"] = ctx["headers"]
    end
    push(conn, tb)
    -- The next message waits for the backend's answer: it carries the uid.
    if msg["op"] == auth_op then
        conn:wait_context_value(auth_key)
    end
end
