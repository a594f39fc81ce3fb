-- A WebSocket server (RFC 6455) over a socket server, written for
-- connmix-py from the RFC. Its functions take the arguments of both shapes
-- of CONNMIX's protocols/websocket.lua, so a script can switch between the
-- two files:
--
--   connmix/protocols (the connection passed in):
--     websocket.input(buf, conn, uri, on_handshake)  -- on_handshake(headers, conn)
--     websocket.decode(conn), websocket.encode(str)
--     websocket.send_text(conn, data), websocket.send_binary(conn, data)
--   CONNMIX's install package (the current connection):
--     websocket.input(buf, on_handshake)             -- on_handshake(client_id, headers)
--     websocket.decode(str), websocket.encode(str)
--     websocket.send_text(data), websocket.send_binary(data)
--
-- on_message gets whole messages, { type = "text"|"binary", data = s, finish = true }:
-- fragments are joined, pings answered with a pong, a close answered with a
-- close and the connection closed; protocol errors close with the RFC's code.
-- An on_handshake returning false refuses the upgrade with 403 (ours).
local M = {}

local band, bor, bxor, rshift = bit.band, bit.bor, bit.bxor, bit.rshift
local byte, char, sub, find, lower, match, gmatch = string.byte, string.char, string.sub,
    string.find, string.lower, string.match, string.gmatch
local concat = table.concat
local mix_log, mix_DEBUG = mix.log, mix.DEBUG

-- Bounds: a frame, a joined message, a request head. The server's
-- maxPacketSize bounds a frame too (a frame is one packet).
M.max_payload = 1024 * 1024
M.max_message = 1024 * 1024
M.max_head = 8192

local GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
local OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
local KINDS = { [OP_TEXT] = "text", [OP_BINARY] = "binary" }

-- connection object -> its state once upgraded: { frame = message for decode,
-- parts/kind/size = a fragmented message being joined }. Weak keys: the
-- state goes with the connection object when the engine forgets it.
local states = setmetatable({}, { __mode = "k" })

local function current_conn(conn)
    if type(conn) == "table" then
        return conn
    end
    return mix.socket.tcp()
end

-- UTF-8 as RFC 3629 defines it (no surrogates, nothing over U+10FFFF).
local function valid_utf8(s)
    local i, n = find(s, "[\128-\255]"), #s
    while i do
        local c, c2, c3, c4 = byte(s, i, i + 3)
        local lo, hi, size = 0x80, 0xBF, 0
        if c >= 0xC2 and c <= 0xDF then
            size = 2
        elseif c >= 0xE0 and c <= 0xEF then
            size = 3
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            size = 4
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        else
            return false
        end
        if c2 == nil or c2 < lo or c2 > hi then
            return false
        end
        if size >= 3 and (c3 == nil or c3 < 0x80 or c3 > 0xBF) then
            return false
        end
        if size == 4 and (c4 == nil or c4 < 0x80 or c4 > 0xBF) then
            return false
        end
        if i + size > n then
            return true
        end
        i = find(s, "[\128-\255]", i + size)
    end
    return true
end
M.valid_utf8 = valid_utf8

-- A server frame: FIN set, never masked (RFC 6455 5.1).
local function build_frame(opcode, payload)
    local n, first = #payload, bor(0x80, opcode)
    if n <= 125 then
        return char(first, n) .. payload
    elseif n <= 65535 then
        return char(first, 126, rshift(n, 8), band(n, 0xFF)) .. payload
    end
    local high = math.floor(n / 4294967296)
    return char(first, 127, band(rshift(high, 24), 0xFF), band(rshift(high, 16), 0xFF),
        band(rshift(high, 8), 0xFF), band(high, 0xFF), band(rshift(n, 24), 0xFF),
        band(rshift(n, 16), 0xFF), band(rshift(n, 8), 0xFF), band(n, 0xFF)) .. payload
end
M.build_frame = build_frame

-- Eight bytes per step: string.byte/char calls dominate the cost.
local function unmask(payload, key)
    local k1, k2, k3, k4 = byte(key, 1, 4)
    local out, n, i, j = {}, #payload, 1, 0
    while i + 7 <= n do
        local a, b, c, d, e, f, g, h = byte(payload, i, i + 7)
        j = j + 1
        out[j] = char(bxor(a, k1), bxor(b, k2), bxor(c, k3), bxor(d, k4),
            bxor(e, k1), bxor(f, k2), bxor(g, k3), bxor(h, k4))
        i = i + 8
    end
    local keys = { k1, k2, k3, k4 }
    while i <= n do
        j = j + 1
        out[j] = char(bxor(byte(payload, i), keys[(i - 1) % 4 + 1]))
        i = i + 1
    end
    return concat(out)
end

-- A control frame's payload is at most 125 bytes: the reason is cut to fit.
local function close_payload(code, reason)
    return char(rshift(code, 8), band(code, 0xFF)) .. sub(reason or "", 1, 123)
end

-- A protocol error: tell the client why (a close frame), then disconnect.
local function fail(conn, code, reason)
    mix_log(mix_DEBUG, "websocket: closing with " .. code .. ": " .. reason)
    conn:send(build_frame(OP_CLOSE, close_payload(code, reason)))
    return -1
end

local function refuse(conn, status, reason, extra)
    mix_log(mix_DEBUG, "websocket: handshake refused: " .. reason)
    conn:send("HTTP/1.1 " .. status .. "\r\nConnection: close\r\n" .. (extra or "")
        .. "Content-Type: text/plain\r\nContent-Length: " .. (#reason + 1) .. "\r\n\r\n" .. reason .. "\n")
    return -1
end

-- headers: CONNMIX's shape, Method/RequestUri/ServerProtocol and every header
-- by the name the client sent; lowered: the same by lower-case name.
local function parse_head(head)
    local method, target, version = match(head, "^(%S+) (%S+) (HTTP/%d%.%d)\r\n")
    if method == nil then
        return nil
    end
    local headers, lowered = { Method = method, RequestUri = target, ServerProtocol = version }, {}
    for line in gmatch(sub(head, find(head, "\r\n", 1, true) + 2), "([^\r\n]+)\r\n") do
        local name, value = match(line, "^([^:%s]+):%s*(.-)%s*$")
        if name then
            headers[name] = value
            lowered[lower(name)] = value
        end
    end
    return headers, lowered
end

local function has_token(value, token)
    for item in gmatch(lower(value or ""), "[^,]+") do
        if match(item, "^%s*(.-)%s*$") == token then
            return true
        end
    end
    return false
end

local function handshake(buf, conn, uri, on_handshake, old_shape)
    local data = buf:tostring()
    local stop = find(data, "\r\n\r\n", 1, true)
    if stop == nil then
        return #data > M.max_head and refuse(conn, "431 Request Header Fields Too Large", "request head too long") or 0
    end
    local headers, lowered = parse_head(sub(data, 1, stop + 1))
    if headers == nil or headers.Method ~= "GET" or headers.ServerProtocol ~= "HTTP/1.1" then
        return refuse(conn, "400 Bad Request", "not an HTTP/1.1 GET request")
    end
    -- CONNMIX's rule: the request target starts with uri ("/" takes any path).
    if sub(headers.RequestUri, 1, #uri) ~= uri then
        return refuse(conn, "404 Not Found", "no websocket at " .. headers.RequestUri)
    end
    local key = lowered["sec-websocket-key"]
    if lower(lowered["upgrade"] or "") ~= "websocket" or not has_token(lowered["connection"], "upgrade")
        or key == nil or #(mix.base64_decode(key) or "") ~= 16 then
        return refuse(conn, "400 Bad Request", "not a websocket upgrade request")
    end
    if lowered["sec-websocket-version"] ~= "13" then
        return refuse(conn, "426 Upgrade Required", "websocket version 13 only", "Sec-WebSocket-Version: 13\r\n")
    end
    conn:set_context_value("headers", headers)
    if on_handshake ~= nil then
        local verdict
        if old_shape then
            verdict = on_handshake(headers, conn)
        else
            verdict = on_handshake(conn:client_id(), headers)
        end
        if verdict == false then
            return refuse(conn, "403 Forbidden", "refused by on_handshake")
        end
    end
    local accept = mix.base64_encode(mix.sha1_bin(key .. GUID))
    local err = conn:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Accept: " .. accept .. "\r\n\r\n")
    if err then
        return -1
    end
    conn:set_context_value("__handshake", true)  -- as CONNMIX: survives a hot update
    states[conn] = {}
    return stop + 3  -- the head is a packet of its own; decode gives nil for it
end

local function close_code_allowed(code)
    return (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1011) or (code >= 3000 and code <= 4999)
end

-- The client's close: answer with the same code and disconnect.
local function on_close_frame(conn, payload)
    if #payload == 1 then
        return fail(conn, 1002, "close frame with a 1-byte body")
    end
    local reply = ""
    if #payload >= 2 then
        local code = byte(payload, 1) * 256 + byte(payload, 2)
        if not close_code_allowed(code) then
            return fail(conn, 1002, "close code " .. code .. " not allowed")
        end
        if not valid_utf8(sub(payload, 3)) then
            return fail(conn, 1007, "close reason not UTF-8")
        end
        reply = close_payload(code)
    end
    conn:send(build_frame(OP_CLOSE, reply))
    conn:close()
    return nil
end

-- A whole message for decode, or nil (a fragment, a control frame);
-- a number to return from input instead (a protocol error: -1).
local function take_frame(conn, state, fin, opcode, payload)
    if opcode == OP_PING then
        conn:send(build_frame(OP_PONG, payload))
        return nil
    elseif opcode == OP_PONG then
        return nil
    elseif opcode == OP_CLOSE then
        return on_close_frame(conn, payload)
    end
    if opcode == OP_CONTINUATION then
        if state.parts == nil then
            return fail(conn, 1002, "continuation frame without a message to continue")
        end
    elseif state.parts ~= nil then
        return fail(conn, 1002, "new message inside a fragmented one")
    else
        state.parts, state.kind, state.size = {}, KINDS[opcode], 0
    end
    state.size = state.size + #payload
    if state.size > M.max_message then
        return fail(conn, 1009, "message over " .. M.max_message .. " bytes")
    end
    local parts = state.parts
    parts[#parts + 1] = payload
    if not fin then
        return nil
    end
    local data, kind = concat(parts), state.kind
    state.parts, state.kind, state.size = nil, nil, nil
    if kind == "text" and not valid_utf8(data) then
        return fail(conn, 1007, "text message not UTF-8")
    end
    return { type = kind, data = data, finish = true }
end

-- One frame (RFC 6455 5.2): its length, 0 until all of it is buffered.
local function read_frame(buf, conn, state)
    local head = buf:read(2)
    if head == nil then
        return 0
    end
    local b1, b2 = byte(head, 1, 2)
    local fin, opcode, len = band(b1, 0x80) ~= 0, band(b1, 0x0F), band(b2, 0x7F)
    if band(b1, 0x70) ~= 0 then
        return fail(conn, 1002, "reserved bits set")
    end
    if opcode ~= OP_CONTINUATION and KINDS[opcode] == nil and opcode ~= OP_CLOSE
        and opcode ~= OP_PING and opcode ~= OP_PONG then
        return fail(conn, 1002, "reserved opcode " .. opcode)
    end
    if band(b2, 0x80) == 0 then
        return fail(conn, 1002, "client frame not masked")
    end
    if opcode >= OP_CLOSE and (not fin or len > 125) then
        return fail(conn, 1002, "control frame fragmented or over 125 bytes")
    end
    if len == 126 then
        local ext = buf:read(2)
        if ext == nil then
            return 0
        end
        len = byte(ext, 1) * 256 + byte(ext, 2)
    elseif len == 127 then
        local ext = buf:read(8)
        if ext == nil then
            return 0
        end
        len = 0
        for i = 1, 8 do
            len = len * 256 + byte(ext, i)
        end
    end
    if len > M.max_payload then
        return fail(conn, 1009, "frame over " .. M.max_payload .. " bytes")
    end
    local key, payload = buf:read(4), ""
    if key == nil then
        return 0
    end
    if len > 0 then
        payload = buf:read(len)
        if payload == nil then
            return 0
        end
    end
    local frame = take_frame(conn, state, fin, opcode, unmask(payload, key))
    if type(frame) == "number" then
        return frame
    end
    state.frame = frame
    return buf:position()
end

-- input(buf, conn, uri, on_handshake) or input(buf, on_handshake).
function M.input(buf, conn, uri, on_handshake)
    local old_shape = type(conn) == "table"
    if not old_shape then
        conn, uri, on_handshake = current_conn(nil), "/", conn
    end
    local state = states[conn]
    if state == nil then
        if not conn:context_value("__handshake") then
            return handshake(buf, conn, uri or "/", on_handshake, old_shape)
        end
        state = {}  -- upgraded before a hot update
        states[conn] = state
    end
    return read_frame(buf, conn, state)
end

-- decode(conn) or decode(str): the message input framed, nil for anything else.
function M.decode(conn)
    local state = states[current_conn(conn)]
    if state == nil then
        return nil
    end
    local frame = state.frame
    state.frame = nil
    return frame
end

-- What the engine sends for the script (publishes, mesh.send, the APIs):
-- a text frame, or a binary one for bytes that are not UTF-8 (a text frame
-- must be UTF-8; protocol_encode is not told the payload's type).
function M.encode(str)
    return build_frame(valid_utf8(str) and OP_TEXT or OP_BINARY, str)
end

local function send_frame(opcode, conn, data)
    if type(conn) ~= "table" then  -- send_text(data)
        conn, data = nil, conn
    end
    conn = current_conn(conn)
    data = data == nil and "" or tostring(data)
    if opcode == OP_TEXT and not valid_utf8(data) then
        return nil, "text is not UTF-8 (send it as binary)"
    end
    local err = conn:send(build_frame(opcode, data))
    if err then
        return nil, err
    end
    return true, nil
end

-- ok, err = send_text(conn, data) or send_text(data)
function M.send_text(conn, data)
    return send_frame(OP_TEXT, conn, data)
end

function M.send_binary(conn, data)
    return send_frame(OP_BINARY, conn, data)
end

-- ours: close(conn[, code[, reason]]): a close frame, then disconnect.
function M.close(conn, code, reason)
    conn = current_conn(conn)
    conn:send(build_frame(OP_CLOSE, close_payload(code or 1000, reason)))
    return conn:close()
end

return M
