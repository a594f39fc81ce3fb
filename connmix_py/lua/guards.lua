-- Guards for the library functions the count hook cannot interrupt: a C
-- function runs to its end, however long it takes or however much it
-- builds. Builders (string.rep, string.format, table.concat, gsub's output)
-- are checked against the Lua memory left in the budget before the call;
-- matchers (find, match, gmatch, gsub) whose work could pass STEP_LIMIT run
-- in a Lua port of the Lua 5.1 matcher below, which the hook can stop.
-- Results are the C functions' results, errors their errors.
-- Loaded by vm.py right after the prelude, before the entry script (and
-- before the sandbox); returns its settings' setters.

local string, table = string, table
local byte, sub, char = string.byte, string.sub, string.char
local type, select, error, pcall, tostring, floor = type, select, error, pcall, tostring, math.floor
local collect, unpack, next = collectgarbage, unpack, next
local c_find, c_match, c_gmatch, c_gsub = string.find, string.match, string.gmatch, string.gsub
local c_rep, c_format, c_concat = string.rep, string.format, table.concat

-- Matcher steps a C call may take (about 50 ms of C on a slow core);
-- beyond that the Lua matcher runs instead.
local STEP_LIMIT = 1e7
-- Results smaller than this are not checked (the hard cap still holds).
local CHECKED_SIZE = 1024 * 1024

local budget_bytes = math.huge

-- The error for a result of `size` more bytes that would pass the budget.
local function refusal(size, what)
    if size < CHECKED_SIZE or collect("count") * 1024 + size <= budget_bytes then
        return nil
    end
    collect()  -- garbage does not count against a callback
    local used = collect("count") * 1024
    if used + size > budget_bytes then
        return what .. ": a result of " .. size .. " bytes would pass the Lua memory budget of "
            .. floor(budget_bytes / 1048576) .. " MB (" .. floor(used / 1048576) .. " MB in use)"
    end
end

-- Raises the builder's error (at the script's line) when `size` does not fit.
local function ensure_room(size, what)
    local message = refusal(size, what)
    if message then
        error(message, 3)
    end
end

-- the Lua matcher ---------------------------------------------------------------
-- A port of LuaJIT's lib_string.c matcher: same results, same errors, same
-- recursion limit. Positions are 1-based; a match returns the position
-- after its end.

local ESC, LBRACKET, RBRACKET, CARET, DASH = 37, 91, 93, 94, 45
local LPAREN, RPAREN, DOLLAR, DOT = 40, 41, 36, 46
local STAR, PLUS, QUESTION = 42, 43, 63
local B_LETTER, F_LETTER, ZERO, NINE = 98, 102, 48, 57
local MAXCAPTURES, MAXDEPTH = 32, 200
local CAP_UNFINISHED, CAP_POSITION = -1, -2

-- %a, %d, ...: the C library's own answer for every byte (C locale).
local CLASS = {}
for letter in ("acdglpsuwx"):gmatch(".") do
    local lower, upper = {}, {}
    for b = 0, 255 do
        local yes = c_find(char(b), "^%" .. letter) ~= nil
        lower[b], upper[b] = yes, not yes
    end
    CLASS[byte(letter)], CLASS[byte(letter:upper())] = lower, upper
end
do
    local z, nz = {}, {}
    for b = 0, 255 do z[b], nz[b] = b == 0, b ~= 0 end
    CLASS[byte("z")], CLASS[byte("Z")] = z, nz
end

local function pattern_error(message)
    error({ message }, 0)  -- turned into the caller's error by `guarded`
end

local function match_class(c, cl)
    local set = CLASS[cl]
    if set then
        return set[c]
    end
    return cl == c
end

local function class_end(ms, p)
    local pat = ms.pat
    local c = byte(pat, p)
    p = p + 1
    if c == ESC then
        if p > ms.plen then
            pattern_error("malformed pattern (ends with '%')")
        end
        return p + 1
    end
    if c == LBRACKET then
        if byte(pat, p) == CARET then
            p = p + 1
        end
        repeat
            if p > ms.plen then
                pattern_error("malformed pattern (missing ']')")
            end
            local cc = byte(pat, p)
            p = p + 1
            if cc == ESC and p <= ms.plen then
                p = p + 1
            end
        until byte(pat, p) == RBRACKET
        return p + 1
    end
    return p
end

-- [set] at p..ec (ec: the closing bracket)
local function match_bracket(pat, c, p, ec)
    local sig = true
    if byte(pat, p + 1) == CARET then
        sig = false
        p = p + 1
    end
    p = p + 1
    while p < ec do
        local pc = byte(pat, p)
        if pc == ESC then
            p = p + 1
            if match_class(c, byte(pat, p)) then
                return sig
            end
        elseif byte(pat, p + 1) == DASH and p + 2 < ec then
            p = p + 2
            if pc <= c and c <= byte(pat, p) then
                return sig
            end
        elseif pc == c then
            return sig
        end
        p = p + 1
    end
    return not sig
end

local function single_match(ms, c, p, ep)
    local pat = ms.pat
    local pc = byte(pat, p)
    if pc == DOT then
        return true
    elseif pc == ESC then
        return match_class(c, byte(pat, p + 1))
    elseif pc == LBRACKET then
        return match_bracket(pat, c, p, ep - 1)
    end
    return pc == c
end

local match

local function match_balance(ms, s, p)
    if p + 1 > ms.plen then
        pattern_error("unbalanced pattern")
    end
    local src = ms.src
    if byte(src, s) ~= byte(ms.pat, p) then
        return nil
    end
    local open, close, depth = byte(ms.pat, p), byte(ms.pat, p + 1), 1
    s = s + 1
    while s <= ms.slen do
        local c = byte(src, s)
        if c == close then
            depth = depth - 1
            if depth == 0 then
                return s + 1
            end
        elseif c == open then
            depth = depth + 1
        end
        s = s + 1
    end
    return nil
end

local function max_expand(ms, s, p, ep)
    local src, i = ms.src, 0
    while s + i <= ms.slen and single_match(ms, byte(src, s + i), p, ep) do
        i = i + 1
    end
    while i >= 0 do
        local res = match(ms, s + i, ep + 1)
        if res then
            return res
        end
        i = i - 1
    end
    return nil
end

local function min_expand(ms, s, p, ep)
    local src = ms.src
    while true do
        local res = match(ms, s, ep + 1)
        if res then
            return res
        elseif s <= ms.slen and single_match(ms, byte(src, s), p, ep) then
            s = s + 1
        else
            return nil
        end
    end
end

local function start_capture(ms, s, p, what)
    local level = ms.level
    if level >= MAXCAPTURES then
        pattern_error("too many captures")
    end
    ms.cinit[level + 1], ms.clen[level + 1] = s, what
    ms.level = level + 1
    local res = match(ms, s, p)
    if not res then
        ms.level = ms.level - 1
    end
    return res
end

local function end_capture(ms, s, p)
    local l = ms.level
    while l >= 1 and ms.clen[l] ~= CAP_UNFINISHED do
        l = l - 1
    end
    if l < 1 then
        pattern_error("invalid pattern capture")
    end
    ms.clen[l] = s - ms.cinit[l]
    local res = match(ms, s, p)
    if not res then
        ms.clen[l] = CAP_UNFINISHED
    end
    return res
end

local function match_capture(ms, s, digit)
    local l = digit - ZERO  -- %1 is capture 1
    if l < 1 or l > ms.level or ms.clen[l] == CAP_UNFINISHED then
        pattern_error("invalid capture index")
    end
    local len, init = ms.clen[l], ms.cinit[l]
    if len >= 0 and ms.slen - s + 1 >= len and sub(ms.src, s, s + len - 1) == sub(ms.src, init, init + len - 1) then
        return s + len
    end
    return nil
end

function match(ms, s, p)
    local depth = ms.depth + 1
    if depth > MAXDEPTH then
        pattern_error("pattern too complex")
    end
    ms.depth = depth
    local pat, plen, result = ms.pat, ms.plen, nil
    while true do
        if p > plen then
            result = s
            break
        end
        local pc = byte(pat, p)
        local next_pc = byte(pat, p + 1)
        if pc == LPAREN then
            if next_pc == RPAREN then
                result = start_capture(ms, s, p + 2, CAP_POSITION)
            else
                result = start_capture(ms, s, p + 1, CAP_UNFINISHED)
            end
            break
        elseif pc == RPAREN then
            result = end_capture(ms, s, p + 1)
            break
        elseif pc == DOLLAR and p == plen then
            if s == ms.slen + 1 then
                result = s
            end
            break
        elseif pc == ESC and next_pc == B_LETTER then
            s = match_balance(ms, s, p + 2)
            if not s then
                break
            end
            p = p + 4
        elseif pc == ESC and next_pc == F_LETTER then
            p = p + 2
            if byte(pat, p) ~= LBRACKET then
                pattern_error("missing '[' after '%f' in pattern")
            end
            local ep = class_end(ms, p)
            local previous = s == 1 and 0 or byte(ms.src, s - 1)
            local current = byte(ms.src, s) or 0
            if match_bracket(pat, previous, p, ep - 1) or not match_bracket(pat, current, p, ep - 1) then
                break
            end
            p = ep
        elseif pc == ESC and next_pc and next_pc >= ZERO and next_pc <= NINE then
            s = match_capture(ms, s, next_pc)
            if not s then
                break
            end
            p = p + 2
        else
            local ep = class_end(ms, p)
            local m = s <= ms.slen and single_match(ms, byte(ms.src, s), p, ep)
            local quantifier = byte(pat, ep)
            if quantifier == QUESTION then
                local res = m and match(ms, s + 1, ep + 1)
                if res then
                    result = res
                    break
                end
                p = ep + 1
            elseif quantifier == STAR then
                result = max_expand(ms, s, p, ep)
                break
            elseif quantifier == PLUS then
                result = m and max_expand(ms, s + 1, p, ep) or nil
                break
            elseif quantifier == DASH then
                result = min_expand(ms, s, p, ep)
                break
            else
                if not m then
                    break
                end
                s, p = s + 1, ep
            end
        end
    end
    ms.depth = ms.depth - 1
    return result
end

local function new_state(src, pat)
    return { src = src, slen = #src, pat = pat, plen = #pat, level = 0, depth = 0, cinit = {}, clen = {} }
end

local function get_capture(ms, i, s, e)
    if i >= ms.level then
        if i == 0 then
            return sub(ms.src, s, e - 1)
        end
        pattern_error("invalid capture index")
    end
    local len, init = ms.clen[i + 1], ms.cinit[i + 1]
    if len == CAP_UNFINISHED then
        pattern_error("unfinished capture")
    end
    if len == CAP_POSITION then
        return init
    end
    return sub(ms.src, init, init + len - 1)
end

local function get_captures(ms, s, e)
    local n = (ms.level == 0 and s) and 1 or ms.level
    local out = {}
    for i = 0, n - 1 do
        out[i + 1] = get_capture(ms, i, s, e)
    end
    return unpack(out, 1, n)
end

local function to_integer(n)
    return n >= 0 and floor(n) or -floor(-n)
end

local function lua_find_aux(find, src, pat, init)
    local slen = #src
    init = to_integer(init or 1)
    if init < 0 then
        init = init + slen + 1
    end
    init = init - 1
    if init < 0 then
        init = 0
    elseif init > slen then
        init = slen
    end
    local p, anchor = 1, byte(pat, 1) == CARET
    if anchor then
        p = 2
    end
    local ms = new_state(src, pat)
    local s1 = init + 1
    repeat
        ms.level, ms.depth = 0, 0
        local e = match(ms, s1, p)
        if e then
            if find then
                return s1, e - 1, get_captures(ms, nil, nil)
            end
            return get_captures(ms, s1, e)
        end
        s1 = s1 + 1
    until s1 > slen + 1 or anchor
    return nil
end

local function add_replacement(ms, out, s, e, repl, kind)
    local value
    if kind == "string" or kind == "number" then
        repl = tostring(repl)
        local i, n = 1, #repl
        while i <= n do
            local c = byte(repl, i)
            if c ~= ESC then
                out[#out + 1] = char(c)
            else
                i = i + 1
                local d = byte(repl, i) or 0
                if d < ZERO or d > NINE then
                    out[#out + 1] = char(d)
                elseif d == ZERO then
                    out[#out + 1] = sub(ms.src, s, e - 1)
                else
                    out[#out + 1] = tostring(get_capture(ms, d - ZERO - 1, s, e))
                end
            end
            i = i + 1
        end
        return
    elseif kind == "function" then
        value = repl(get_captures(ms, s, e))
    else
        value = repl[get_capture(ms, 0, s, e)]
    end
    if not value then
        value = sub(ms.src, s, e - 1)
    elseif type(value) ~= "string" and type(value) ~= "number" then
        pattern_error("invalid replacement value (a " .. type(value) .. ")")
    end
    out[#out + 1] = tostring(value)
end

local function lua_gsub(src, pat, repl, max_n)
    local slen, kind = #src, type(repl)
    max_n = max_n and to_integer(max_n) or slen + 1
    local p, anchor = 1, byte(pat, 1) == CARET
    if anchor then
        p = 2
    end
    local ms, out, n, s, copied = new_state(src, pat), {}, 0, 1, 1
    while n < max_n do
        ms.level, ms.depth = 0, 0
        local e = match(ms, s, p)
        if e then
            n = n + 1
            out[#out + 1] = sub(src, copied, s - 1)
            add_replacement(ms, out, s, e, repl, kind)
        end
        if e and e > s then
            s = e
            copied = s
        elseif s <= slen then
            if e then
                copied = s
            end
            s = s + 1
        else
            if e then
                copied = s
            end
            break
        end
        if anchor then
            break
        end
    end
    out[#out + 1] = sub(src, copied)
    return c_concat(out), n
end

local function lua_gmatch(src, pat)
    local ms, pos = new_state(src, pat), 0
    return function()
        for s = pos + 1, ms.slen + 1 do
            ms.level, ms.depth = 0, 0
            local e = match(ms, s, 1)
            if e then
                pos = e == s and e or e - 1
                return get_captures(ms, s, e)
            end
        end
    end
end

-- Runs a Lua matcher; its pattern errors become the caller's errors, as
-- the C functions raise them.
local function guarded(results)
    local ok = results[1]
    if ok then
        return unpack(results, 2, results.n)
    end
    local err = results[2]
    if type(err) == "table" then
        error(err[1], 2)  -- level 2: the script (guarded is tail-called)
    end
    error(err, 0)
end

local function pack(...)
    return { n = select("#", ...), ... }
end

-- how much work a match could be -------------------------------------------------

-- the characters that make C treat a find pattern as a pattern (lstrlib's SPECIALS)
local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"

-- pattern -> { factors, optionals, length + 1, has specials, anchored }:
-- factors counts the items whose backtracking can multiply the work by the
-- subject's length (*, +, - not at the pattern's end, %b); optionals counts
-- ? items (each doubles it).
local shapes, shape_count = {}, 0

local function shape_of(pat)
    local shape = shapes[pat]
    if shape then
        return shape
    end
    local factors, optionals, plen = 0, 0, #pat
    local p = byte(pat, 1) == CARET and 2 or 1
    while p <= plen do
        local c = byte(pat, p)
        if c == LPAREN or c == RPAREN then
            p = p + 1
        elseif c == ESC and byte(pat, p + 1) == B_LETTER then
            factors = factors + 1
            p = p + 4
        elseif c == ESC and byte(pat, p + 1) == F_LETTER then
            local ok, ep = pcall(class_end, { pat = pat, plen = plen }, p + 2)
            if not ok or byte(pat, p + 2) ~= LBRACKET then
                factors = math.huge  -- malformed: the Lua matcher raises C's error
                break
            end
            p = ep
        else
            local ok, ep = pcall(class_end, { pat = pat, plen = plen }, p)
            if not ok then
                factors = math.huge
                break
            end
            local q = byte(pat, ep)
            p = ep
            if q == QUESTION then
                optionals = optionals + 1
                p = p + 1
            elseif q == STAR or q == PLUS or q == DASH then
                p = p + 1
                local rest = p
                while byte(pat, rest) == RPAREN do
                    rest = rest + 1
                end
                if rest <= plen then  -- a trailing repetition only scans forward
                    factors = factors + 1
                end
            end
        end
    end
    shape = { factors, optionals, plen + 1, c_find(pat, SPECIALS) ~= nil, byte(pat, 1) == CARET }
    if shape_count >= 1000 then  -- bounded: patterns may be built from input
        shapes, shape_count = {}, 0
    end
    shapes[pat], shape_count = shape, shape_count + 1
    return shape
end

-- Could matching a pattern of this shape over `n` bytes pass STEP_LIMIT?
-- `anchors`: a leading ^ means one start (not so for gmatch).
local function costly(n, shape, anchors)
    local starts = (anchors and shape[5]) and 1 or n + 1
    local work = starts * shape[3]
    if shape[1] > 0 then
        work = work * (n + 1) ^ shape[1]
    end
    if shape[2] > 0 then
        work = work * 2 ^ shape[2]
    end
    return work > STEP_LIMIT
end

-- A plain find whose naive search could pass STEP_LIMIT: C searches windows
-- of the subject, one call each, so the hook runs between them.
local function windowed_find(src, needle, init)
    local slen, m = #src, #needle
    local width = floor(STEP_LIMIT / m)
    if width < 1 then
        width = 1
    end
    local start = init
    while start + m - 1 <= slen do
        local last = start + width + m - 2
        local a = c_find(sub(src, start, last), needle, 1, true)
        if a then
            return start + a - 1, start + a + m - 2
        end
        start = start + width
    end
    return nil
end

local function find_start(init, slen)
    init = to_integer(init or 1)
    if init < 0 then
        init = init + slen + 1
    end
    if init < 1 then
        return 1
    end
    return init > slen + 1 and slen + 1 or init
end


-- the wrappers ---------------------------------------------------------------------

function string.find(s, pat, init, plain)
    if type(s) ~= "string" or type(pat) ~= "string" or (init ~= nil and type(init) ~= "number") then
        return c_find(s, pat, init, plain)
    end
    local n = #s
    local shape = not plain and (shapes[pat] or shape_of(pat))
    if not shape or not shape[4] then  -- a plain search
        if n * #pat > STEP_LIMIT and #pat > 1 then
            return windowed_find(s, pat, find_start(init, n))
        end
        return c_find(s, pat, init, plain)
    end
    if costly(n, shape, true) then
        return guarded(pack(pcall(lua_find_aux, true, s, pat, init)))
    end
    return c_find(s, pat, init, plain)
end

function string.match(s, pat, init)
    if type(s) == "string" and type(pat) == "string" and (init == nil or type(init) == "number")
            and costly(#s, shapes[pat] or shape_of(pat), true) then
        return guarded(pack(pcall(lua_find_aux, false, s, pat, init)))
    end
    return c_match(s, pat, init)
end

function string.gmatch(s, pat)
    if type(s) == "string" and type(pat) == "string" and costly(#s, shapes[pat] or shape_of(pat), false) then
        local next_match = lua_gmatch(s, pat)
        return function()
            return guarded(pack(pcall(next_match)))
        end
    end
    return c_gmatch(s, pat)
end

-- The most a string replacement can write: the subject, its literal text
-- once per match, and each %0-%9 once per byte of the subject.
local function gsub_bound(n, repl)
    local refs = select(2, c_gsub(repl, "%%%d", ""))
    return n + (n + 1) * (#repl - 2 * refs) + refs * n
end

function string.gsub(s, pat, repl, max_n)
    if type(s) ~= "string" or type(pat) ~= "string" or (max_n ~= nil and type(max_n) ~= "number") then
        return c_gsub(s, pat, repl, max_n)
    end
    local kind = type(repl)
    if kind == "string" or kind == "number" then
        repl = tostring(repl)
        -- the bound is at most 2 (n + 1) (#repl + 1): only large ones are computed
        if 2 * (#s + 1) * (#repl + 1) >= CHECKED_SIZE then
            ensure_room(gsub_bound(#s, repl), "gsub")
        end
    elseif kind ~= "function" and kind ~= "table" then
        return c_gsub(s, pat, repl, max_n)
    end
    if costly(#s, shapes[pat] or shape_of(pat), true) then
        return guarded(pack(pcall(lua_gsub, s, pat, repl, max_n)))
    end
    return c_gsub(s, pat, repl, max_n)
end

function string.rep(s, n, sep)
    if type(n) == "number" and n > 1 and (type(s) == "string" or type(s) == "number") then
        local size = #tostring(s) * n
        if sep ~= nil and (type(sep) == "string" or type(sep) == "number") then
            size = size + #tostring(sep) * (n - 1)
        end
        if size >= CHECKED_SIZE then
            ensure_room(size, "rep")
        end
    end
    return c_rep(s, n, sep)
end

-- %s copies a string, %q at most quadruples it; any other item is short.
function string.format(fmt, ...)
    local count = select("#", ...)
    if count == 0 then
        return c_format(fmt)
    end
    local size = 0
    for i = 1, count do
        local value = select(i, ...)
        if type(value) == "string" then
            size = size + #value
        end
    end
    if size >= CHECKED_SIZE / 4 and type(fmt) == "string" then
        if c_find(fmt, "%q", 1, true) then
            size = size * 4
        end
        ensure_room(size + #fmt + 512 * count, "format")
    end
    return c_format(fmt, ...)
end

function table.concat(t, sep, i, j)
    if type(t) == "table" and (i == nil or type(i) == "number") and (j == nil or type(j) == "number") then
        i, j = i or 1, j or #t
        local size = 0
        for k = i, j do
            local item = t[k]
            if type(item) == "string" then
                size = size + #item
            end
        end
        if type(sep) == "string" and j > i then
            size = size + #sep * (j - i)
        end
        if size >= CHECKED_SIZE then
            ensure_room(size, "concat")
        end
    end
    return c_concat(t, sep, i, j)
end

-- mix.json_encode copies every string to Python and writes it out again:
-- their sizes are checked first, in Lua, where the hook can stop a long walk.
local py_json_encode = mix.json_encode

local function strings_size(value, seen, size)
    if type(value) == "string" then
        return size + #value
    end
    if type(value) ~= "table" or seen[value] then
        return size
    end
    seen[value] = true
    for k, v in next, value do
        size = strings_size(v, seen, strings_size(k, seen, size))
    end
    return size
end

function mix.json_encode(value, ...)
    if type(value) == "table" then
        local message = refusal(strings_size(value, {}, 0), "json_encode")
        if message then
            return nil, message
        end
    end
    return py_json_encode(value, ...)
end

return {
    -- The VM's memory budget in MB (0: no budget).
    set_memory_budget = function(mb)
        budget_bytes = mb > 0 and mb * 1048576 or math.huge
    end,
    -- Tests: 0 sends every pattern match through the Lua matcher.
    set_step_limit = function(steps)
        STEP_LIMIT = steps
    end,
}
