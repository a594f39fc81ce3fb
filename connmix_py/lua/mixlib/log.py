"""mix.log(level, msg): the scripts' log, filtered by logging.level."""
from __future__ import annotations

import logging

LEVELS = {b"debug": logging.DEBUG, b"info": logging.INFO, b"warn": logging.WARNING,
          b"warning": logging.WARNING, b"error": logging.ERROR}


def bridge(vm) -> dict:
    logger = logging.getLogger("connmix.lua")
    name = vm.name

    def log(level=None, msg=None):
        lvl = LEVELS.get(level.lower() if type(level) is bytes else level)
        if lvl is None:
            lvl = logging.INFO
        if logger.isEnabledFor(lvl):
            text = msg.decode("utf-8", "replace") if type(msg) is bytes else str(msg)
            logger.log(lvl, "[%s] %s", name, text)
        return True

    return {"log": log}
