-- Newline-delimited packets: text lines ending in "\n" (a "\r" before it is
-- dropped too), like telnet, Redis inline commands or many serial devices.
--
--   local line = require("protocols.line")
--   function protocol_input(buf) return line.input(buf) end
--   function protocol_decode(str) return line.decode(str) end
--   function protocol_encode(str) return line.encode(str) end
local text = require("protocols.text")

local M = {}

-- A line still unfinished after this many bytes disconnects the client.
M.max_line = 64 * 1024

-- The length of the first line including its "\n"; 0 until one is complete.
function M.input(buf)
    return text.frame(buf, M.max_line)
end

function M.decode(str)
    if str:sub(-2) == "\r\n" then
        return str:sub(1, -3)
    end
    return str:sub(1, -2)
end

M.encode = text.encode

return M
