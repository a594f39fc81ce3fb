-- utils.prettyprint: readable text for any Lua value, tables included.
--   local pp = require("utils.prettyprint")
--   print(pp(msg))            --> { data = "hi", finish = true, type = "text" }
--   print(pp(t, { indent = "  " }))   -- one key per line
-- Requiring it (also as require("prettyprint"), CONNMIX's layout) makes
-- print(t) show a table's contents in the layout of CONNMIX's faq:
--   {
--           "path" = "/chat"
--           "query" = [table: 0x...]
--           {
--                   "foo" = "bar"
--           }
--   }
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

-- print's layout (CONNMIX's faq): one "key" = value per line, indented by
-- tabs; a nested table shows its address, then its contents.
local function quoted(value)
    if type(value) == "string" then return '"' .. value .. '"' end
    return tostring(value)
end

local function print_lines(t, depth, seen, lines)
    local pad = string.rep("\t", depth)
    lines[#lines + 1] = pad .. "{"
    seen[t] = true
    for _, k in ipairs(sorted_keys(t)) do
        local v = t[k]
        if type(v) == "table" then
            lines[#lines + 1] = pad .. "\t" .. quoted(k) .. " = [" .. tostring(v) .. "]"
            if seen[v] then
                lines[#lines + 1] = pad .. "\t<cycle>"
            else
                print_lines(v, depth + 1, seen, lines)
            end
        else
            lines[#lines + 1] = pad .. "\t" .. quoted(k) .. " = " .. quoted(v)
        end
    end
    seen[t] = nil
    lines[#lines + 1] = pad .. "}"
    return lines
end

local plain_print = print

-- Tables on lines of their own, other values tab-separated as print does;
-- trailing nils are left out, as the faq's print(tb, err) shows only the table.
function print(...)
    local n = select("#", ...)
    while n > 0 and select(n, ...) == nil do n = n - 1 end
    local out, after_table = {}, false
    for i = 1, n do
        local value = select(i, ...)
        local is_table = type(value) == "table"
        if i > 1 then
            out[#out + 1] = (is_table or after_table) and "\n" or "\t"
        end
        out[#out + 1] = is_table and table.concat(print_lines(value, 0, {}, {}), "\n") or tostring(value)
        after_table = is_table
    end
    plain_print(table.concat(out))
end

return function(value, opts)
    return render(value, opts and opts.indent, 0, {})
end
