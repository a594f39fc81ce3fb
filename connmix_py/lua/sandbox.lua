-- The sandbox (luavm.sandbox: true), applied to each new state after the
-- prelude and before the entry script. A sandboxed script reaches no
-- processes, files, C code, bytecode or debug machinery: only pure Lua, the
-- mix module, os.time/clock/date, and require of .lua files under the entry
-- script's folder (those modules run in this same sandbox, the same _G).
local folder = ...

-- Captured: the loader must not call string functions a script replaced.
local open_file, load_source, type, error, tostring = io.open, load, type, error, tostring
local collect, gmatch, gsub, find, ipairs = collectgarbage, string.gmatch, string.gsub, string.find, ipairs
local loaded = package.loaded

-- Module names are dotted or slashed paths of plain names: no "..", no
-- absolute paths, nothing outside the folder.
local function module_path(name)
    if type(name) ~= "string" then
        return nil
    end
    local path, parts = gsub(name, "%.", "/"), 0
    for part in gmatch(path .. "/", "([^/]*)/") do
        if not find(part, "^[%w_%-]+$") then
            return nil
        end
        parts = parts + 1
    end
    return parts > 0 and path or nil
end

-- The only loader: source text only (no bytecode), found under the folder.
local function find_lua_module(name)
    local path = module_path(name)
    if path == nil then
        return "\n\tmodule name " .. tostring(name) .. " is not allowed in the sandbox "
            .. "(plain names separated by . or /, found under the entry script's folder)"
    end
    local tried = ""
    -- The same places as outside the sandbox (vm.py MODULE_PATHS).
    for _, candidate in ipairs({ folder .. "/" .. path .. ".lua", folder .. "/" .. path .. "/init.lua",
                                 folder .. "/utils/" .. path .. ".lua" }) do
        local file = open_file(candidate, "rb")
        if file then
            local source = file:read("*a")
            file:close()
            local chunk, err = load_source(source, "@" .. candidate, "t")
            if chunk == nil then
                error("error loading module '" .. name .. "' from file '" .. candidate .. "':\n\t" .. err, 3)
            end
            return chunk
        end
        tried = tried .. "\n\tno file '" .. candidate .. "'"
    end
    return tried
end

-- Some garbage collector calls keep memory reclaimed as usual; none stops it.
local GC_ALLOWED = { count = true, collect = true, step = true }

function collectgarbage(option, ...)
    option = option or "collect"
    if not GC_ALLOWED[option] then
        error("collectgarbage(\"" .. tostring(option) .. "\") is not allowed in the sandbox", 2)
    end
    return collect(option, ...)
end

os = { time = os.time, clock = os.clock, date = os.date }
debug = { traceback = debug.traceback }
string.dump = nil
io, jit, python, newproxy = nil, nil, nil, nil  -- newproxy: __gc code runs unhooked
load, loadstring, loadfile, dofile, getfenv, setfenv = nil, nil, nil, nil, nil, nil

-- require keeps its own reference to the package table: edit it in place.
package.loaders = { find_lua_module }
package.preload = {}
package.loadlib = nil
package.cpath = ""
package.path = folder .. "/?.lua;" .. folder .. "/?/init.lua;" .. folder .. "/utils/?.lua"
for name in pairs(loaded) do
    if name ~= "_G" and name ~= "package" and name ~= "string" and name ~= "table"
        and name ~= "math" and name ~= "coroutine" and name ~= "bit" then
        loaded[name] = nil
    end
end
loaded.os, loaded.debug = os, debug
