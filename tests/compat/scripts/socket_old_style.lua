-- Written for an older CONNMIX release: every callback takes the connection
-- as its last argument; no mix.socket.tcp(), no global conn. Packets are
-- "<length>:<json>" (a netstring without the trailing comma).

function on_connect(client_id, c)
    c:set_context_value("packets", 0)
end

function protocol_input(buf, c)
    local data = buf:tostring()
    local colon = data:find(":", 1, true)
    if colon == nil then
        return #data > 10 and -1 or 0 -- a length has at most 10 digits
    end
    local size = tonumber(data:sub(1, colon - 1))
    if size == nil then
        return -1
    end
    if #data < colon + size then
        return 0
    end
    return colon + size
end

function protocol_decode(str, c)
    c:set_context_value("packets", c:context_value("packets") + 1)
    local body = str:sub(str:find(":", 1, true) + 1)
    local data, err = mix.json_decode(body)
    if err then
        return { op = "invalid", err = err }
    end
    return data
end

function protocol_encode(str, c)
    return #str .. ":" .. str
end

function on_message(data, c)
    if data.op == "add" then
        c:send(protocol_encode(mix.json_encode({ sum = data.a + data.b, packets = c:context_value("packets") }), c))
    elseif data.op == "audit" then
        c:subscribe("audit")
        c:send(protocol_encode(mix.json_encode({ ok = true }), c))
    elseif data.op == "whoami" then
        c:send(protocol_encode(mix.json_encode({ id = c:client_id() }), c))
    elseif data.op == "invalid" then
        c:send(protocol_encode(mix.json_encode({ error = "invalid json" }), c))
    else
        c:send(protocol_encode(mix.json_encode({ error = "unknown op" }), c))
    end
end

function on_close(client_id, err, c)
    mix.mesh.publish("audit", mix.json_encode({ closed = client_id, packets = c:context_value("packets") }))
end
