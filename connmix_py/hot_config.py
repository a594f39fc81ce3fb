"""Hot configuration: the yaml is watched while the engine runs.

Its mtime (with size and inode, so a rename-into-place counts) is polled every
``engine.configReloadInterval`` seconds. A changed file is loaded and
validated like at start-up; a file that does not load is logged with
file:line and the running settings keep serving. What applies at once
(``access``, ``logging.level``) is the engine's business; the rest needs a
restart, which is said once per key until the key changes back.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

from .config import ConfigError, Settings, load_settings

log = logging.getLogger("connmix.config")

Signature = tuple[int, int, int] | None


def signature(path: str) -> Signature:
    """What tells a rewritten file apart; None while it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def watchable(settings: Settings) -> bool:
    """Settings read from a file, with the watch on."""
    return settings.config_reload_interval > 0 and os.path.isfile(settings.source)


def restart_keys(running: Settings, new: Settings) -> set[str]:
    """The yaml keys whose new value only a restart applies."""
    differ = {
        "logging.filename": running.logging.filename != new.logging.filename,
        "logging.maxFiles": running.logging.max_files != new.logging.max_files,
        "engine.apiServer": running.api_server != new.api_server,
        "engine.servers": running.servers != new.servers,
        "engine.luavm": running.luavm != new.luavm,
        "engine.maxOutboundMessageSize": running.max_outbound_message_size != new.max_outbound_message_size,
        "engine.configReloadInterval": running.config_reload_interval != new.config_reload_interval,
        "engine.broker": running.broker != new.broker,
    }
    return {key for key, changed in differ.items() if changed}


class RestartNotes:
    """Says each key that needs a restart once, not at every later edit."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def new(self, changed: set[str]) -> list[str]:
        fresh = sorted(changed - self.said)
        self.said = set(changed)  # a key changed back may be said again later
        return fresh


class ConfigWatcher:
    """Polls one yaml file; each new version that loads goes to ``apply``."""

    def __init__(self, path: str, every: float, apply: Callable[[Settings], Awaitable[None]]) -> None:
        self.path = path
        self.every = every
        self.apply = apply
        self.seen = signature(path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.check()

    async def check(self) -> None:
        now = signature(self.path)
        if now == self.seen:
            return
        self.seen = now
        try:
            new = load_settings(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                where = "" if problem.startswith(self.path) else f"{self.path}: "
                log.error("%s%s (not reloaded: the running configuration keeps serving)", where, problem)
            return
        await self.apply(new)
