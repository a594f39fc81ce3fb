-- Length-prefixed packets: a 4-byte big-endian body length (PHP's pack("N")),
-- then the body. The usual framing of game and IoT clients.
--
--   local packet = require("protocols.length_prefixed")
--   function protocol_input(buf) return packet.input(buf) end
--   function protocol_decode(str) return packet.decode(str) end
--   function protocol_encode(str) return packet.encode(str) end
local M = {}

M.HEADER = 4
-- A client announcing a longer body is disconnected at once, before any of
-- it is buffered (the server's maxPacketSize bounds what is buffered anyway).
M.max_body = 1024 * 1024

-- The packet length (header + body), 0 until all of it is buffered, -1 for
-- a body over max_body.
function M.input(buf)
    if buf:length() < M.HEADER then
        return 0
    end
    local n = mix.php_unpack("Nlength", buf:read(M.HEADER)).length
    if n > M.max_body then
        return -1
    end
    if buf:length() < M.HEADER + n then
        return 0
    end
    return M.HEADER + n
end

function M.decode(str)
    return str:sub(M.HEADER + 1)
end

function M.encode(str)
    return mix.php_pack("N", #str) .. str
end

return M
