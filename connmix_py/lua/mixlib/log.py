"""mix.log(level, msg): the scripts' log, filtered by logging.level; each line
names the script file and line that called it (found by mix.log's Lua side
in prelude.lua)."""
from __future__ import annotations

import logging
import os

from .values import lua_text

LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"warning": logging.WARNING, b"error": logging.ERROR}


def bridge(vm) -> dict:
    logger = logging.getLogger("connmix.lua")
    name = vm.name
    folder = os.path.dirname(vm.settings.entry)
    scripts: dict[bytes, str] = {}  # a chunk's source -> the name its lines show

    def script_of(source: bytes) -> str:
        """Files beside the entry by their path from its folder, others in full."""
        shown = scripts.get(source)
        if shown is None:
            path = source[1:].decode("utf-8", "replace")
            shown = os.path.relpath(path, folder) if folder and path.startswith(folder + os.sep) else path
            scripts[source] = shown
        return shown

    def level_of(level) -> int:
        return LEVELS.get(level.lower(), logging.INFO) if type(level) is bytes else logging.INFO

    def log_enabled(level=None):
        return logger.isEnabledFor(level_of(level))

    def log(level=None, msg=None, source=None, line=None):
        lvl = level_of(level)
        if not logger.isEnabledFor(lvl):
            return True
        if type(source) is bytes and source.startswith(b"@"):  # a file, not a string chunk
            script = script_of(source)
            logger.log(lvl, "[%s:%d] %s", script, line, lua_text(msg), extra={"script": script, "line": line})
        else:
            logger.log(lvl, "[%s] %s", name, lua_text(msg), extra={"script": name})
        return True

    return {"log": log, "log_enabled": log_enabled}
