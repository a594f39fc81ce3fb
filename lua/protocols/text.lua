-- Newline-terminated text packets, with the functions of CONNMIX's
-- protocols/text.lua (input, decode, encode), written for connmix-py.
-- Only "\n" ends a packet and only it is removed (protocols.line drops a
-- "\r" too).
--
--   local text = require("protocols.text")
--   function protocol_input(buf) return text.input(buf) end
--   function protocol_decode(str) return text.decode(str) end
--   function protocol_encode(str) return text.encode(str) end
local M = {}

local find = string.find

-- More than this buffered without a "\n" disconnects the client.
M.max_length = 65535

-- The length of the first packet with its "\n"; 0 until one is complete,
-- -1 when more than `limit` bytes hold none.
function M.frame(buf, limit)
    local stop = find(buf:tostring(), "\n", 1, true)
    if stop then
        return stop
    end
    if buf:length() > limit then
        mix.log(mix.DEBUG, "over " .. limit .. " bytes without a newline")
        return -1
    end
    return 0
end

function M.input(buf)
    return M.frame(buf, M.max_length)
end

function M.decode(str)
    return str:sub(1, -2)
end

function M.encode(str)
    return str .. "\n"
end

return M
