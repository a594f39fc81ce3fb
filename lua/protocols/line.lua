-- Newline-delimited packets: text lines ending in "\n" (a "\r" before it is
-- dropped too), like telnet, Redis inline commands or many serial devices.
--
--   local line = require("protocols.line")
--   function protocol_input(buf) return line.input(buf) end
--   function protocol_decode(str) return line.decode(str) end
--   function protocol_encode(str) return line.encode(str) end
local M = {}

-- A line still unfinished after this many bytes disconnects the client.
M.max_line = 64 * 1024

-- The length of the first line including its "\n"; 0 until one is complete.
function M.input(buf)
    local data = buf:tostring()
    local stop = data:find("\n", 1, true)
    if stop then
        return stop
    end
    if #data > M.max_line then
        return -1
    end
    return 0
end

function M.decode(str)
    if str:sub(-2) == "\r\n" then
        return str:sub(1, -3)
    end
    return str:sub(1, -2)
end

function M.encode(str)
    return str .. "\n"
end

return M
