"""`connmix check`: every problem of a configuration, one line each.

Compiles every .lua file beside each entry script (a syntax error in a module
not required yet is still reported), then loads each entry as the engine
would, and makes sure logging.filename can be written. Nothing listens,
nothing connects and no file is created.
"""
from __future__ import annotations

import os

from lupa import luajit21 as lupa_rt

from .config import ConfigError, Settings, check_entries
from .engine import Engine
from .lua.vm import LuaLoadError, LuaVM

SKIPPED_DIRS = {"node_modules", "__pycache__"}


def lua_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        found.extend(os.path.join(root, name) for name in sorted(files) if name.endswith(".lua"))
    return found


def syntax_errors(paths: list[str]) -> dict[str, str]:
    """path -> Lua's "file:line: message" for each file that does not compile."""
    runtime = lupa_rt.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
    compile_file = runtime.eval("function(path) local f, err = loadfile(path); return err end")
    problems = {}
    for path in paths:
        err = compile_file(path.encode())
        if err is not None:
            problems[path] = err.decode("utf-8", "replace")
    return problems


def log_file_problem(settings: Settings) -> str | None:
    """Why logging.filename could not be opened for appending, or None."""
    path = os.path.join(settings.base_dir, settings.logging.filename)
    if os.path.isdir(path):
        return f"logging.filename: {path} is a folder, not a file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"logging.filename: {path} is not writable"
    # The first existing folder above it is where the missing ones get created.
    existing = os.path.dirname(path)
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    existing = existing or "."
    if not os.path.isdir(existing):
        return f"logging.filename: cannot create {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"logging.filename: cannot create {path}: {existing} is not writable"
    return None


def find_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    log_problem = log_file_problem(settings)
    if log_problem is not None:
        problems.append(log_problem)
    try:
        check_entries(settings)
    except ConfigError as exc:
        return problems + exc.problems
    engine = Engine(settings)
    seen: set[str] = set()
    for server in settings.servers:
        folder = os.path.dirname(server.entry)
        files = [path for path in lua_files(folder) if path not in seen]
        seen.update(files)
        broken = syntax_errors(files)
        problems.extend(broken.values())
        if server.entry in broken:
            continue  # already reported; loading would say it again
        vm = LuaVM(server, engine.hub, engine.mesh, engine._http_session, settings.luavm,
                   engine.queues, engine.redis)
        try:
            vm.load()
        except LuaLoadError as exc:
            problems.append(str(exc).splitlines()[0])
    return problems
