-- The Lua side of the engine: builds the `mix` module, the connection objects
-- and the callback dispatcher from the Python bridge `py`. Runs once per VM
-- before the entry script; returns the functions the Python driver calls.
local py = ...

local create, resume, status, yield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local traceback, rawget, rawequal, type, setmetatable = debug.traceback, rawget, rawequal, type, setmetatable
-- The dispatcher runs outside any slice, where the budgets do not look: it
-- reaches the globals only raw, so no metamethod of the script's runs there.
local G, rawset, tostring = _G, rawset, tostring
local select, unpack, floor = select, unpack, math.floor

-- A waiting call yields this marker and a Python handle; the driver awaits
-- the handle on the event loop and resumes the coroutine with its results.
local AWAIT = {}
-- A runner's yield after each callback, the runner waiting there, and the
-- one kept for the next callback (see runner).
local DONE, parked, idle_runner = {}, nil, nil

-- The protocol_* callback running, if any: those frame bytes and must not
-- wait (protocol_encode runs inside a publish).
local in_protocol = nil

-- level: the script's line calling mix.http.request, redis, ...
local function refuse_in_protocol(level)
    if in_protocol then
        error(in_protocol .. " cannot wait (mix.http.request, mix.mesh.publish, mix.mesh.send, redis, "
            .. "wait_context_value); wait in on_message instead", level + 1)
    end
end

local function await(handle, err)
    if handle == nil then
        return nil, err
    end
    refuse_in_protocol(3)
    return yield(AWAIT, handle)
end

-- mix.mesh.publish / send: the bridge returns its results when the broker
-- finished at once (one node), else a handle to wait on. protocol_encode runs
-- inside a send or a publish: it may do neither. protocol_input and
-- protocol_decode get the results when no round trip is needed (one node, as
-- in CONNMIX, where a publish never waits); one that would wait is refused.
local function settled(first, ...)
    if type(first) == "userdata" then  -- a handle: the broker needs a round trip
        refuse_in_protocol(2)
        return yield(AWAIT, first)
    end
    return first, ...
end

local function waits_when_needed(bridge_function)
    return function(a, b, c)
        if in_protocol == "protocol_encode" then
            refuse_in_protocol(2)
        end
        return settled(bridge_function(a, b, c))
    end
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
local inputs = {}  -- client id -> a socket connection's unframed input (see feed)
local join_input  -- defined with mix.buffer

-- Socket connections: drop the buffered input, including the rest of what
-- the running feed has not framed yet.
function Conn:clear_buffer()
    local state = inputs[self.id]
    if state then
        join_input(state)
        state.base = #state.data
    end
    return py.clear_buffer(self.id)
end
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

-- mix.log(level, msg) hands Python the file and line that called it: the
-- nearest Lua frame (pcall and other C frames skipped), read here in the
-- caller's own coroutine; debug.getinfo is taken before the sandbox hides it.
-- Lines the level filters out cost one Python call, no frame lookup.
local getinfo, py_log, py_log_enabled = debug.getinfo, py.log, py.log_enabled
local function log(level, msg)
    if not py_log_enabled(level) then
        return true
    end
    local level_up = 2
    local frame = getinfo(level_up, "Sl")
    while frame ~= nil and frame.what == "C" do
        level_up = level_up + 1
        frame = getinfo(level_up, "Sl")
    end
    if frame == nil then
        return py_log(level, msg)
    end
    return py_log(level, msg, frame.source, frame.currentline)
end

-- py.json_decode returns (value, err), or an object's key count and its keys
-- and values (n, k1, v1, ...): a table handed over from Python costs more
-- than building it here.
local function json_decoded(n, ...)
    if select("#", ...) == 1 then
        return n, ...
    end
    local t = {}
    for i = 1, n + n, 2 do
        local k, v = select(i, ...)
        t[k] = v
    end
    return t, nil
end
local py_json_decode = py.json_decode

-- The usual client message is a small compact object of plain ASCII strings
-- ({"type":"auth","token":"..."}): read here with string.find, no call to
-- Python (0.8 us in-process against 1.85 through the bridge). Anything else (numbers,
-- nesting, spaces, escapes, control bytes, non-ASCII, Lua memory past half its
-- cap) is left to orjson: nil. What both read, they read alike (test_mix_json).
local find, memory_count = string.find, collectgarbage
local PLAIN_OBJECT_MAX_BYTES = 512
local plain_object_memory_kb = 0  -- half the hard cap (set_budgets)
-- A string's bytes: printable ASCII but '"' and '\' (the ranges ]-~, space, !, #-[).
local FIRST_PAIR = '^{"([]-~ !#-[]*)":"([]-~ !#-[]*)"([,}])'
local NEXT_PAIR = '^"([]-~ !#-[]*)":"([]-~ !#-[]*)"([,}])'
local function plain_object(text)
    if #text > PLAIN_OBJECT_MAX_BYTES or memory_count("count") > plain_object_memory_kb then
        return nil
    end
    local _, last, key, value, after = find(text, FIRST_PAIR)
    if last == nil then
        return nil
    end
    local t = {}
    repeat
        t[key] = value  -- a repeated key: the last one counts, as in orjson
        if after == "}" then
            return last == #text and t or nil  -- nothing may follow the object
        end
        _, last, key, value, after = find(text, NEXT_PAIR, last + 1)
    until last == nil
    return nil
end

mix = {
    DEBUG = "debug", INFO = "info", WARN = "warn", ERROR = "error",
    log = log,
    json_encode = py.json_encode,
    json_decode = function(text, ...)
        if type(text) == "string" then
            local t = plain_object(text)
            if t ~= nil then
                return t, nil
            end
        end
        return json_decoded(py_json_decode(text, ...))
    end,
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
        publish = waits_when_needed(py.mesh_publish),
        send = waits_when_needed(py.mesh_send),
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

mix.socket = { tcp = mix.websocket }

-- mix.buffer: the read-only view of a socket connection's buffered input
-- that protocol_input gets; mix.buffer.new(s) makes one from a string.
-- The input is `data` (its first `base` bytes already framed) followed by
-- `tail`, the pieces received since, joined onto data only when a read
-- reaches them: a packet trickled in small pieces is then copied once, not
-- once per piece. Positions count from the view's start, `base` bytes into data.

local Buffer = {}
Buffer.__index = Buffer
local concat = table.concat

local function new_input(data)
    return { data = data, base = 0, tail = {}, tail_len = 0 }
end

join_input = function(state)
    if state.tail_len > 0 then
        state.data = state.data .. concat(state.tail)
        state.tail, state.tail_len = {}, 0
    end
end

local function new_buffer(state)
    return setmetatable({ _input = state, _base = state.base, _pos = state.base }, Buffer)
end

function Buffer.new(data)
    if type(data) ~= "string" then
        return nil, "bad argument #1 to 'new' (string expected, got " .. type(data) .. ")"
    end
    return new_buffer(new_input(data))
end

function Buffer:tostring()
    local state = self._input
    join_input(state)
    if self._base == 0 then
        return state.data
    end
    return state.data:sub(self._base + 1)
end

function Buffer:length()
    local state = self._input
    return #state.data + state.tail_len - self._base
end

function Buffer:position() return self._pos - self._base end

-- s, err = buf:read(n): the next n bytes; nil, err (nothing read) when fewer remain.
function Buffer:read(n)
    if type(n) ~= "number" or n < 0 or n ~= floor(n) then
        return nil, "bad argument #1 to 'read' (non-negative integer expected, got " .. tostring(n) .. ")"
    end
    local state, pos = self._input, self._pos
    local left = #state.data + state.tail_len - pos
    if n > left then
        return nil, "buffer: " .. n .. " bytes asked, " .. left .. " left"
    end
    if pos + n > #state.data then
        join_input(state)
    end
    self._pos = pos + n
    return state.data:sub(pos + 1, pos + n)
end

Buffer.__tostring = Buffer.tostring
mix.buffer = Buffer

-- CONNMIX's default script declares these as locals; the article's script
-- uses them without declaring them, so they are globals too.
mix_log, mix_DEBUG, mix_INFO, mix_WARN, mix_ERROR = mix.log, mix.DEBUG, mix.INFO, mix.WARN, mix.ERROR

-- budgets ------------------------------------------------------------------------
-- A count hook stops a callback that runs too long or grows Lua memory past
-- its budget. Hooks do not fire inside JIT traces, so the VM runs with the
-- JIT off (the Python side calls jit.off()). Once over budget the hook fires
-- on every instruction, so a script's own pcall cannot swallow the error.
-- Everything the hook calls is a local captured here: a script that replaced
-- a global (error, math.floor ...) would otherwise run inside the hook, where
-- no hook fires.

local clock, sethook, collect, running, error = os.clock, debug.sethook, collectgarbage, coroutine.running, error
local max = math.max
local HOOK_EVERY = 10000
local cpu_budget, memory_budget_kb, memory_cap_kb = 1.0, 0, 0
local wall_clock = clock  -- set_budgets passes a monotonic clock
-- The slice running (its coroutine), the thread that resumed it, and its
-- CPU and wall-clock deadlines (false until its first hook check).
local active, resumer, deadline, wall_deadline, tripped = nil, nil, false, false, false

-- The memory budget judges the slice that grows memory: one is stopped when,
-- after a full collection, the total passes the budget and more is live than
-- when it started (see memory_verdict). A slice that only makes garbage, or
-- runs while others' data fills the budget, goes on. Collections are
-- rationed: one more only after `memory_margin_kb` more was allocated.
local memory_margin_kb = 0
local live_kb = 0                          -- live memory at the last full collection
local slice_start_kb, judge_at_kb = 0, 0   -- the running slice's

-- LuaJIT has no emergency collection: an allocation past the hard cap fails
-- even when most of the heap is garbage. Its collector lets garbage grow to
-- the live size again (pause 200%) before it starts; when that could reach
-- the cap, it starts at once and works faster. Paced by the memory in use,
-- garbage included (what a cycle must get through), as every slice starts
-- and at each full collection.
local collector_fast = false
local function pace_collector(used_kb)
    local fast = memory_cap_kb > 0 and used_kb * 3 >= memory_cap_kb  -- 2x, plus what a cycle lets through
    if fast ~= collector_fast then
        collector_fast = fast
        collect("setpause", fast and 100 or 200)
        collect("setstepmul", fast and 1000 or 200)
    end
end

local function full_collect()
    collect()
    live_kb = collect("count")
    pace_collector(live_kb)
    return live_kb
end

local function start_memory_slice()
    local used = collect("count")
    if used > memory_budget_kb and used > live_kb + memory_margin_kb then
        used = full_collect()  -- much garbage: measure what is live, else it hides growth
    else
        pace_collector(used)
    end
    slice_start_kb, judge_at_kb = used, max(memory_budget_kb, used)
end

-- `allowance_kb`: growth tolerated. A running slice may hold working memory
-- (budget/8); a finished one holds nothing, so what it added is kept data
-- (budget/64 tolerated: a new connection's objects, caches).
local function memory_verdict(allowance_kb)
    local now = full_collect()
    if now > memory_budget_kb and now > slice_start_kb + allowance_kb then
        return "Lua memory exceeded its budget of " .. floor(memory_budget_kb / 1024) .. " MB"
    end
    judge_at_kb = max(judge_at_kb, now + memory_margin_kb)
end

-- An allocation past the hard cap fails with LuaJIT's "not enough memory";
-- its garbage goes at once so the next callback has room.
local function with_memory_reason(message)
    if message == "not enough memory" then
        full_collect()
        return "Lua memory exceeded its budget of " .. floor(memory_budget_kb / 1024)
            .. " MB (an allocation passed the hard limit of " .. floor(memory_cap_kb / 1024) .. " MB)"
    end
    return message
end

local function check_budget()
    -- While a slice is active, all Lua but run_slice's own (in the resuming
    -- thread) belongs to its callback, coroutines the script started too.
    if active == nil or running() == resumer then
        return
    end
    if not deadline then
        -- The slice's first check starts its clocks: a short callback, which
        -- never gets here, never pays for reading them (system calls).
        deadline, wall_deadline = clock() + cpu_budget, wall_clock() + cpu_budget
        return
    end
    local message
    if clock() > deadline then
        message = "callback exceeded its Lua CPU budget of " .. cpu_budget .. "s"
    elseif wall_clock() > wall_deadline then
        -- A busy machine slows the CPU clock down; the stall is bounded anyway.
        message = "callback exceeded its Lua CPU budget of " .. cpu_budget .. "s (in wall-clock time)"
    elseif memory_budget_kb > 0 and collect("count") > judge_at_kb then
        message = memory_verdict(memory_margin_kb)
    end
    if message then
        tripped = true
        sethook(check_budget, "", 1)
        error(message, 2)
    end
end

local function set_budgets(cpu_seconds, memory_mb, cap_kb, monotonic)
    cpu_budget, memory_budget_kb, memory_cap_kb = cpu_seconds, memory_mb * 1024, cap_kb
    plain_object_memory_kb = cap_kb / 2
    memory_margin_kb = memory_budget_kb / 8
    wall_clock = monotonic
    sethook(check_budget, "", HOOK_EVERY)
end

-- Runs one slice of a callback (up to its end or its next wait) under the
-- budgets. Slices nest (protocol_encode runs inside conn:send inside a
-- callback): the outer slice's budget state comes back afterwards.
local function run_slice(co, ...)
    local outer_active, outer_resumer, outer_protocol = active, resumer, in_protocol
    local outer_deadline, outer_wall_deadline = deadline, wall_deadline
    local outer_start, outer_judge = slice_start_kb, judge_at_kb
    active, resumer, deadline, in_protocol = co, running(), false, nil
    start_memory_slice()
    local ok, a, b, c = resume(co, ...)
    local finished
    if a == DONE and ok then  -- a runner ended its callback (below)
        a, b, finished = b, c, true
    else
        finished = status(co) == "dead"
    end
    if ok and a and finished and memory_budget_kb > 0 and collect("count") > judge_at_kb then
        -- It grew memory faster than the hook looked: judged as it ends.
        local message = memory_verdict(memory_budget_kb / 64)
        if message then
            a, b = false, message
        end
    end
    active, resumer, in_protocol = outer_active, outer_resumer, outer_protocol
    deadline, wall_deadline = outer_deadline, outer_wall_deadline
    slice_start_kb, judge_at_kb = outer_start, outer_judge
    if tripped then
        tripped = false
        sethook(check_budget, "", HOOK_EVERY)
    end
    return ok, a, b, finished
end

-- Scripts keep debug and jit (without the sandbox), but not the hook: the
-- calls that would replace or reveal it refuse, the engine's functions (whose
-- upvalues hold the budgets' state) cannot be looked into, and the JIT, which
-- hooks do not see, stays off.
local getinfo = debug.getinfo
-- The engine's Lua files (this prelude, guards.lua, sandbox.lua) share a folder.
local ENGINE_FOLDER = getinfo(1, "S").source:match("^(@.*/)[^/]*$")

local function refusing(name, why)
    return function()
        error(name .. " is not available to scripts: " .. why, 2)
    end
end

local function guard_upvalue_access(name)
    local original = debug[name]
    debug[name] = function(...)
        for i = 1, select("#", ...) do
            local f = select(i, ...)
            if type(f) == "function" and getinfo(f, "S").source:sub(1, #ENGINE_FOLDER) == ENGINE_FOLDER then
                error("debug." .. name .. " cannot look into the engine's functions", 2)
            end
        end
        return original(...)
    end
end

-- Python objects (the bridge, the hook's wall clock) share one metatable:
-- a script's __call or __gc there would run inside the hook or the collector,
-- where no hook fires.
local python_metatable, debug_getmetatable = getmetatable(py.log), debug.getmetatable
python_metatable.__metatable = "protected"
function debug.getmetatable(value)
    local mt = debug_getmetatable(value)
    if mt == python_metatable then
        error("debug.getmetatable cannot look into the engine's Python objects", 2)
    end
    return mt
end

local HOOK_IN_USE = "the engine's CPU and memory budgets use the hook"
debug.sethook = refusing("debug.sethook", HOOK_IN_USE)
debug.gethook = refusing("debug.gethook", HOOK_IN_USE)
debug.getregistry = refusing("debug.getregistry", "it holds the engine's hook and functions")
for _, name in ipairs({ "getupvalue", "setupvalue", "upvalueid", "upvaluejoin" }) do
    guard_upvalue_access(name)
end
if jit then
    jit.on = refusing("jit.on", "the JIT stays off so that the budgets' hook sees every loop")
end

-- the dispatcher ---------------------------------------------------------------

local function enter(id)
    current = id
    local c = id and conn_object(id) or nil
    rawset(G, "conn", c)
    return c
end

-- The callback a socket feed is running, for error messages.
local stage_of = setmetatable({}, { __mode = "k" })

-- An error value that is no string becomes one in a slice of its own: its
-- __tostring is the script's code, so it runs under the budgets.
local function error_text(e)
    if type(e) == "string" then
        return e
    end
    local _, text = run_slice(create(function(value) return tostring(value) end), e)
    return type(text) == "string" and text or "(an error value that cannot be shown)"
end

-- Turns one slice into what the driver needs: ("done", value),
-- ("error", message[, callback name]) or ("wait", coroutine, handle).
local function step(co, ok, a, b, finished)
    if finished then
        enter(nil)
        if parked == co and status(co) == "suspended" then  -- a runner, ready for the next callback
            idle_runner = co
        end
        if not ok then return "error", with_memory_reason(error_text(a)), stage_of[co] end
        if a then return "done", b end
        return "error", with_memory_reason(error_text(b)), stage_of[co]
    end
    if a ~= AWAIT then
        enter(nil)
        return "error", "coroutine.yield called outside a coroutine of the script", stage_of[co]
    end
    return "wait", co, b
end

local function run(fn, ...)
    return xpcall(fn, traceback, ...)
end

-- Callbacks run in runners: coroutines that run one callback after another
-- (creating a coroutine costs more than a usual on_message). A runner yields
-- DONE and the callback's results after each; one whose callback waits
-- belongs to that callback until it ends. `parked` is the runner last seen
-- waiting at DONE: a script that resumed its runner elsewhere (it can reach
-- it with coroutine.running) leaves it somewhere else, and it is not reused.
local function unpark(...)
    parked = nil
    return ...
end

local function park(...)
    parked = running()
    return unpark(yield(DONE, ...))
end

local function runner(fn, ...)
    return runner(park(xpcall(fn, traceback, ...)))
end

local function take_runner()
    local co = idle_runner
    if co ~= nil then
        idle_runner = nil
        if parked == co then
            return co
        end
    end
    return create(runner)
end

-- Scripts for older CONNMIX releases take the connection as an extra last
-- argument of every callback (on_close(client_id, err, conn)).
local function with_conn(c, ...)
    local n = select("#", ...)
    if n == 1 then  -- on_connect(client_id), on_message(msg)
        return ..., c
    elseif n == 2 then  -- on_close(client_id, err): no table to append to
        local a, b = ...
        return a, b, c
    elseif n == 3 then  -- on_handshake(client_id, headers, server)
        local a, b, d = ...
        return a, b, d, c
    end
    local args = { ... }
    args[n + 1] = c
    return unpack(args, 1, n + 1)
end

-- The old calling style (connmix/examples laravel-chat/entry.lua): the
-- connection replaces the client id and comes last, and on_handshake gets
-- no server table: on_connect(conn), on_handshake(headers, conn),
-- on_close(err, conn). The other callbacks look the same in both styles.
-- A script is in the old style when one of these three declares exactly the
-- old style's parameters with the last one named like a connection: the
-- current style's on_close(client_id, err) has the same count but ends in
-- the error, so the count alone cannot tell them apart.
local getlocal = debug.getlocal  -- parameter names (before the sandbox removes debug)
local OLD_STYLE_CALLBACKS = { on_connect = true, on_handshake = true, on_close = true }
local CONN_PARAM_NAMES = { conn = true, c = true, connection = true }

local function declares_old_style(fn, count)
    if type(fn) ~= "function" or getinfo(fn, "u").nparams ~= count then
        return false
    end
    return CONN_PARAM_NAMES[getlocal(fn, count)] == true
end

-- Decided from the callbacks the script defines at each call; looked at
-- again only when one of them is another function than last time.
local seen_close, seen_connect, seen_handshake, seen_old_style = nil, nil, nil, false
local function old_calling_style()
    local close, connect, handshake = rawget(G, "on_close"), rawget(G, "on_connect"), rawget(G, "on_handshake")
    if not (rawequal(close, seen_close) and rawequal(connect, seen_connect) and rawequal(handshake, seen_handshake)) then
        seen_close, seen_connect, seen_handshake = close, connect, handshake
        seen_old_style = declares_old_style(close, 2) or declares_old_style(connect, 1)
            or declares_old_style(handshake, 2)
    end
    return seen_old_style
end

-- The old style's arguments from the current style's (client_id[, second, ...]).
local function old_style_args(name, c, _, second)
    if name == "on_connect" then
        return c
    end
    return second, c  -- on_close(err, conn), on_handshake(headers, conn)
end

local function dispatch(id, name, ...)
    local fn = rawget(G, name)
    if type(fn) ~= "function" then
        return "missing"
    end
    local c = enter(id)
    local co = take_runner()
    if OLD_STYLE_CALLBACKS[name] and old_calling_style() then
        return step(co, run_slice(co, fn, old_style_args(name, c, ...)))
    end
    return step(co, run_slice(co, fn, with_conn(c, ...)))
end

-- on_message's results are not used: a callback that ended returns "done"
-- alone (one value back to Python, no tuple made for it on every message).
local function message_outcome(state, ...)
    if state == "done" then
        return state
    end
    return state, ...
end

-- One message to on_message (looked up now): "missing" without one, else
-- what step makes of its slice.
local function run_message(id, kind, data)
    local fn = rawget(G, "on_message")
    if type(fn) ~= "function" then
        return "missing"
    end
    local c = enter(id)
    local co = take_runner()
    return step(co, run_slice(co, fn, { type = kind, data = data, finish = true }, c))
end

local function dispatch_message(id, kind, data)
    return message_outcome(run_message(id, kind, data))
end

-- Set (stop_batch, from Python) when the connection the running batch is for
-- starts closing: its later messages are not given to on_message.
local batch_stopped = false

local function stop_batch()
    batch_stopped = true
end

-- The messages of one read in one call from Python (one crossing instead of
-- one per message): kind, data, kind, data ... Each runs as dispatch_message
-- runs it (run_message: in a slice of its own, with its own budgets, and
-- on_message looked up for each), in order. `limit`: the bytes in use, the batch's own strings
-- counted, past which a message's data would not have fit (call_message's
-- first memory test); that message is left to Python, which decides.
-- Returns "done" when every message ended; else how many were given to
-- on_message and how the last one ended: (n, "done") when the connection
-- started closing, (n, "error", ...), (n, "wait", co, handle); or
-- (n, "room") when message n + 1 is left to Python.
local function dispatch_messages(id, limit, ...)
    local batch, count = { ... }, select("#", ...)
    batch_stopped = false
    for i = 1, count, 2 do
        local data = batch[i + 1]
        if i > 1 and collect("count") * 1024 + #data > limit then
            return (i - 1) / 2, "room"
        end
        local state, a, b = run_message(id, batch[i], data)
        if state ~= "done" and state ~= "missing" then
            return (i + 1) / 2, state, a, b
        end
        if batch_stopped and i + 1 < count then
            return (i + 1) / 2, "done"
        end
    end
    return "done"
end

-- on_handshake(client_id, headers, server): n header names and values, then
-- the server table's, in one flat list (cheaper than two tables from Python);
-- no table is built when the script has no on_handshake.
local function dispatch_handshake(id, n, ...)
    if type(rawget(G, "on_handshake")) ~= "function" then
        return "missing"
    end
    local strings, headers, server = { ... }, {}, {}
    for i = 1, n + n, 2 do
        headers[strings[i]] = strings[i + 1]
    end
    for i = n + n + 1, #strings, 2 do
        server[strings[i]] = strings[i + 1]
    end
    return dispatch(id, "on_handshake", id, headers, server)
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
    inputs[id] = nil
end

-- socket protocol ------------------------------------------------------------
-- The engine buffers a socket connection's input; the script frames it.
-- The Lua side keeps a copy of the unframed input (inputs[id]), so each feed
-- hands over only the bytes received since the last one. One feed (a
-- coroutine) frames what there is: protocol_input says how long the next
-- packet is, protocol_decode turns it into a message, on_message handles it
-- (and may wait); then the next packet, until protocol_input asks for more
-- bytes. The feed returns how many bytes it framed (-1: protocol_input asked
-- to disconnect); the driver drops them.
-- Missing callbacks: no protocol_input frames all there is as one packet,
-- no protocol_decode passes the packet on as it is.

local function protocol_call(name, fn, ...)
    in_protocol = name
    local value = fn(...)
    in_protocol = nil
    return value
end

local function packet_length(n, available)
    if type(n) ~= "number" or n ~= floor(n) then
        local shown = type(n) == "number" and tostring(n) or type(n)
        error("protocol_input must return an integer (packet length, 0 to wait for more, "
            .. "-1 to disconnect), got " .. shown, 0)
    end
    if n < -1 or n > available then
        error("protocol_input returned " .. n .. " with " .. available
            .. " bytes buffered (expected 0.." .. available .. " or -1)", 0)
    end
    return n
end

local function unframed(state)
    return #state.data - state.base + state.tail_len
end

local function feed(id, state)
    local c, co = conn_object(id), running()
    local input, decode = rawget(G, "protocol_input"), rawget(G, "protocol_decode")
    while unframed(state) > 0 do
        local base = state.base
        local n = unframed(state)
        if type(input) == "function" then
            stage_of[co], deadline = "protocol_input", false
            n = packet_length(protocol_call("protocol_input", input, new_buffer(state), c), n)
        end
        if n == 0 then
            break
        end
        if n == -1 then
            inputs[id] = nil
            return -1
        end
        if base + n > #state.data then
            join_input(state)
        end
        local data = state.data
        if state.base == base then  -- else clear_buffer dropped it all already
            state.base = base + n
        end
        local msg = data:sub(base + 1, base + n)
        if type(decode) == "function" then
            stage_of[co], deadline = "protocol_decode", false
            msg = protocol_call("protocol_decode", decode, msg, c)
        end
        local handle = rawget(G, "on_message")
        if msg ~= nil and type(handle) == "function" then
            stage_of[co], deadline = "on_message", false
            handle(msg, c)
        end
    end
    local framed = state.base
    if framed > 0 then  -- keep only the unframed rest
        state.data, state.base = state.data:sub(framed + 1), 0
    end
    return framed
end

-- data: the bytes received since the last feed; held: how many unframed
-- bytes the driver counts this side as holding (0: data is all there is).
-- "resync" when this side holds something else (a new state after a hot
-- update): the driver feeds again with everything and 0.
local function dispatch_input(id, data, held)
    local state = inputs[id]
    if held == 0 then
        state = new_input(data)
        inputs[id] = state
    elseif state == nil or unframed(state) ~= held then
        return "resync"
    elseif #data > 0 then
        state.tail[#state.tail + 1] = data
        state.tail_len = state.tail_len + #data
    end
    enter(id)
    local co = create(run)
    return step(co, run_slice(co, feed, id, state))
end

-- protocol_encode(data[, conn]) for a send (id given) or a publish (nil):
-- ("done", bytes), ("error", message) or "missing". Never waits: it runs
-- inside a publish, possibly inside another callback.
local function encode(id, data)
    local fn = rawget(G, "protocol_encode")
    if type(fn) ~= "function" then
        return "missing"
    end
    local co = create(run)
    local _, ok, wire = run_slice(co, protocol_call, "protocol_encode", fn, data, id and conn_object(id) or nil)
    if status(co) ~= "dead" then
        return "error", "protocol_encode cannot yield"
    end
    if not ok then
        return "error", error_text(wire)
    end
    if type(wire) ~= "string" then
        return "error", "protocol_encode must return a string, got " .. type(wire)
    end
    if wire == "" then
        return "error", "protocol_encode returned an empty string (nothing to send)"
    end
    return "done", wire
end

return dispatch, dispatch_message, dispatch_handshake, continue, forget, load_chunk, set_budgets, dispatch_input, encode,
    dispatch_messages, stop_batch
