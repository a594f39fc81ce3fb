"""mix.redis.connection(name) and r:command(...): Redis from Lua, waiting
without blocking the event loop. Replies map to Lua values: strings, numbers,
arrays -> tables, nil -> nil; a Redis error or an unreachable server is nil, err."""
from __future__ import annotations

from ...redis_pools import RedisError
from .values import bad_argument, fail, lua_string


def _reply(value):
    if isinstance(value, list):
        return [_reply(v) for v in value]
    return value


def bridge(vm) -> dict:
    pools, to_lua = vm.redis, vm.to_lua

    def redis_check(name=None):
        key = lua_string(name)
        if key is None:
            return bad_argument(1, "connection", "string", name)
        if not pools.has(key.decode("utf-8", "replace")):
            return fail(f"redis connection {key.decode('utf-8', 'replace')!r} is not configured (engine.luavm.redis)")
        return True, None

    def redis_command(name, *args):
        pool = name.decode("utf-8", "replace")
        if not args:
            return fail("command: no command given")
        parts = []
        for i, arg in enumerate(args, 1):
            part = lua_string(arg)
            if part is None and type(arg) is not bool:
                return bad_argument(i, "command", "string or number", arg)
            parts.append(part if part is not None else (b"1" if arg else b"0"))

        async def run():
            try:
                reply = await pools.command(pool, parts)
            except RedisError as exc:
                return fail(f"redis: {exc}")
            except OSError as exc:
                return fail(f"redis: {exc}")
            return to_lua(_reply(reply)), None
        return run, None

    return {"redis_check": redis_check, "redis_command": redis_command}
