-- utils.prettyprint: readable text for any Lua value, tables included.
--   local pp = require("utils.prettyprint")
--   print(pp(msg))            --> { data = "hi", finish = true, type = "text" }
--   print(pp(t, { indent = "  " }))   -- one key per line
-- Keys are sorted (numbers first) so the output is stable; a table met again
-- on its own path prints as <cycle>.

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then return ta < tb end
        if ta == "number" or ta == "string" then return a < b end
        return tostring(a) < tostring(b)
    end)
    return keys
end

local function key_text(k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
    if type(k) == "string" then return "[" .. string.format("%q", k) .. "]" end
    return "[" .. tostring(k) .. "]"
end

local function is_array(t)
    local n = #t
    local count = 0
    for _ in pairs(t) do count = count + 1 end
    return count == n
end

local function render(value, indent, depth, seen)
    local kind = type(value)
    if kind == "string" then return string.format("%q", value) end
    if kind ~= "table" then return tostring(value) end
    if seen[value] then return "<cycle>" end
    if next(value) == nil then return "{}" end
    seen[value] = true
    local parts = {}
    if is_array(value) then
        for i = 1, #value do parts[#parts + 1] = render(value[i], indent, depth + 1, seen) end
    else
        for _, k in ipairs(sorted_keys(value)) do
            parts[#parts + 1] = key_text(k) .. " = " .. render(value[k], indent, depth + 1, seen)
        end
    end
    seen[value] = nil
    if indent then
        local pad = string.rep(indent, depth + 1)
        return "{\n" .. pad .. table.concat(parts, ",\n" .. pad) .. "\n" .. string.rep(indent, depth) .. "}"
    end
    return "{ " .. table.concat(parts, ", ") .. " }"
end

return function(value, opts)
    return render(value, opts and opts.indent, 0, {})
end
