"""mix.log(level, msg): the scripts' log, filtered by logging.level."""
from __future__ import annotations

import logging

from .values import lua_text

LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"warning": logging.WARNING, b"error": logging.ERROR}


def bridge(vm) -> dict:
    logger = logging.getLogger("connmix.lua")
    name = vm.name

    # Lua passes as many arguments as the caller wrote: extras are ignored.
    def log(level=None, msg=None, *_):
        lvl = LEVELS.get(level.lower(), logging.INFO) if type(level) is bytes else logging.INFO
        if logger.isEnabledFor(lvl):
            logger.log(lvl, "[%s] %s", name, lua_text(msg))
        return True

    return {"log": log}
