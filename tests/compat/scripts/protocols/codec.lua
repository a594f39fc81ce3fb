-- A module required with the "protocols/codec" spelling.
local M = {}
function M.frame(s) return "<" .. s .. ">" end
return M
