"""mix.log(level, msg): the scripts' log, filtered by logging.level; each line
names the script file and line that called it."""
from __future__ import annotations

import logging
import os

from .values import lua_text

LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"warning": logging.WARNING, b"error": logging.ERROR}

# (source, line) of the nearest Lua function on the stack, C frames skipped
# (level 1 is this helper, level 2 the call into Python). debug.getinfo is
# taken now: the sandbox removes it from the scripts' globals.
_CALLER = b"""
local getinfo = debug.getinfo
return function()
    local level = 2
    while true do
        local frame = getinfo(level, "Sl")
        if frame == nil then return nil end
        if frame.what ~= "C" then return frame.source, frame.currentline end
        level = level + 1
    end
end
"""


def bridge(vm) -> dict:
    logger = logging.getLogger("connmix.lua")
    name = vm.name
    folder = os.path.dirname(vm.settings.entry)
    caller = vm.runtime.execute(_CALLER)
    scripts: dict[bytes, str] = {}  # a chunk's source -> the name a line shows

    def script_of(source: bytes) -> str:
        shown = scripts.get(source)
        if shown is None:
            path = source[1:].decode("utf-8", "replace")
            shown = os.path.relpath(path, folder) if folder and path.startswith(folder + os.sep) else path
            scripts[source] = shown
        return shown

    # Lua passes as many arguments as the caller wrote: extras are ignored.
    def log(level=None, msg=None, *_):
        lvl = LEVELS.get(level.lower(), logging.INFO) if type(level) is bytes else logging.INFO
        if not logger.isEnabledFor(lvl):
            return True
        # Only for lines that are written: finding the caller costs a Lua call.
        found = caller()  # (source, line), or None
        if type(found) is tuple and type(found[0]) is bytes and found[0].startswith(b"@"):  # a file
            script, line = script_of(found[0]), found[1]
            logger.log(lvl, "[%s:%d] %s", script, line, lua_text(msg), extra={"script": script, "line": line})
        else:
            logger.log(lvl, "[%s] %s", name, lua_text(msg), extra={"script": name})
        return True

    return {"log": log}
