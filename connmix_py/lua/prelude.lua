-- The Lua side of the engine: builds the `mix` module, the connection objects
-- and the callback dispatcher from the Python bridge `py`. Runs once per VM
-- before the entry script; returns the functions the Python driver calls.
local py = ...

local create, resume, status, yield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local traceback, rawget, type, setmetatable = debug.traceback, rawget, type, setmetatable

-- A waiting call yields this marker and a Python handle; the driver awaits
-- the handle on the event loop and resumes the coroutine with its results.
local AWAIT = {}

local function await(handle, err)
    if handle == nil then
        return nil, err
    end
    return yield(AWAIT, handle)
end

-- connection objects ---------------------------------------------------------

local Conn = {}
Conn.__index = Conn

function Conn:client_id() return self.id end
function Conn:remote_addr() return py.remote_addr(self.id) end
function Conn:context() return py.context(self.id) end
function Conn:context_value(key) return py.context_value(self.id, key) end
function Conn:set_context(tb) return py.set_context(self.id, tb) end
function Conn:set_context_value(key, value) return py.set_context_value(self.id, key, value) end
function Conn:wait_context_value(key, timeout) return await(py.wait_context_value(self.id, key, timeout)) end
function Conn:subscribe(...) return py.subscribe(self.id, ...) end
function Conn:unsubscribe(...) return py.unsubscribe(self.id, ...) end
function Conn:send(data, kind) return py.send(self.id, data, kind) end
function Conn:close() return py.close(self.id) end

local conns = {}
local current = nil

local function conn_object(id)
    local c = conns[id]
    if c == nil then
        c = setmetatable({ id = id }, Conn)
        conns[id] = c
    end
    return c
end

-- the mix module ---------------------------------------------------------------

mix = {
    DEBUG = "debug", INFO = "info", WARN = "warn", ERROR = "error",
    log = py.log,
    json_encode = py.json_encode,
    json_decode = py.json_decode,
    str_split = py.str_split,
    base64_encode = py.base64_encode,
    base64_decode = py.base64_decode,
    md5 = py.md5,
    sha1 = py.sha1,
    md5_bin = py.md5_bin,
    sha1_bin = py.sha1_bin,
    bytes_tostring = py.bytes_tostring,
    php_pack = py.php_pack,
    php_unpack = py.php_unpack,
    parse_str = py.parse_str,
    parse_url = py.parse_url,
    http = {
        request = function(method, url, opts) return await(py.http_request(method, url, opts)) end,
    },
    mesh = {
        publish = py.mesh_publish,
        send = py.mesh_send,
    },
    server = {
        option = py.server_option,
    },
    queue = {
        push = py.queue_push,
    },
    redis = {},
}

local Redis = {}
Redis.__index = Redis

function Redis:command(...) return await(py.redis_command(self.name, ...)) end

function mix.redis.connection(name)
    local ok, err = py.redis_check(name)
    if not ok then
        return nil, err
    end
    return setmetatable({ name = name }, Redis)
end

function mix.websocket()
    if current == nil then
        return nil, "no current connection (called outside a callback)"
    end
    return conn_object(current)
end

-- CONNMIX's default script declares these as locals; the article's script
-- uses them without declaring them, so they are globals too.
mix_log, mix_DEBUG, mix_INFO, mix_WARN, mix_ERROR = mix.log, mix.DEBUG, mix.INFO, mix.WARN, mix.ERROR

-- budgets ------------------------------------------------------------------------
-- A count hook stops a callback that runs too long or grows Lua memory past
-- its budget. Hooks do not fire inside JIT traces, so the VM runs with the
-- JIT off (the Python side calls jit.off()). Once over budget the hook fires
-- on every instruction, so a script's own pcall cannot swallow the error.

local clock, sethook, collect, running = os.clock, debug.sethook, collectgarbage, coroutine.running
local HOOK_EVERY = 10000
local cpu_budget, memory_budget_kb = 1.0, 0
local active, deadline, tripped = nil, nil, false

local function check_budget()
    if active == nil or running() ~= active then
        return
    end
    if not deadline then
        -- The slice's first check starts its clock: a short callback, which
        -- never gets here, never pays for reading the clock (a system call).
        deadline = clock() + cpu_budget
        return
    end
    local message
    if clock() > deadline then
        message = "callback exceeded its Lua CPU budget of " .. cpu_budget .. "s"
    elseif memory_budget_kb > 0 and collect("count") > memory_budget_kb then
        collect()
        if collect("count") > memory_budget_kb then
            message = "Lua memory exceeded its budget of " .. math.floor(memory_budget_kb / 1024) .. " MB"
        end
    end
    if message then
        tripped = true
        sethook(check_budget, "", 1)
        error(message, 2)
    end
end

local function set_budgets(cpu_seconds, memory_mb)
    cpu_budget, memory_budget_kb = cpu_seconds, memory_mb * 1024
    sethook(check_budget, "", HOOK_EVERY)
end

-- Runs one slice of a callback (up to its end or its next wait) under the budgets.
local function run_slice(co, ...)
    active, deadline = co, false
    local ok, a, b = resume(co, ...)
    active, deadline = nil, nil
    if tripped then
        tripped = false
        sethook(check_budget, "", HOOK_EVERY)
    end
    return ok, a, b
end

-- the dispatcher ---------------------------------------------------------------

local function enter(id)
    current = id
    conn = id and conn_object(id) or nil
end

-- Turns one slice into what the driver needs: ("done", value),
-- ("error", message) or ("wait", coroutine, handle).
local function step(co, ok, a, b)
    if status(co) == "dead" then
        enter(nil)
        if not ok then return "error", a end
        if a then return "done", b end
        return "error", b
    end
    if a ~= AWAIT then
        enter(nil)
        return "error", "coroutine.yield called outside a coroutine of the script"
    end
    return "wait", co, b
end

local function run(fn, ...)
    return xpcall(fn, traceback, ...)
end

local function dispatch(id, name, ...)
    local fn = rawget(_G, name)
    if type(fn) ~= "function" then
        return "missing"
    end
    enter(id)
    local co = create(run)
    return step(co, run_slice(co, fn, ...))
end

local function dispatch_message(id, kind, data)
    local fn = rawget(_G, "on_message")
    if type(fn) ~= "function" then
        return "missing"
    end
    enter(id)
    local co = create(run)
    return step(co, run_slice(co, fn, { type = kind, data = data, finish = true }, conn))
end

local function continue(co, id, ...)
    enter(id)
    return step(co, run_slice(co, ...))
end

-- Loads and runs a chunk (the entry script) as a callback, under the budgets.
local function load_chunk(chunk)
    local co = create(run)
    return step(co, run_slice(co, chunk))
end

local function forget(id)
    conns[id] = nil
end

return dispatch, dispatch_message, continue, forget, load_chunk, set_budgets
