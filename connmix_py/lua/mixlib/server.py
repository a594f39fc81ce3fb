"""mix.server.option(name)."""
from __future__ import annotations

from .values import lua_string


def bridge(vm) -> dict:
    options = vm.settings.options

    def server_option(name=None, *_):  # extra Lua arguments are ignored
        key = lua_string(name)
        if key is None:
            return None
        return vm.to_lua(options.get(key.decode("utf-8", "replace")))

    return {"server_option": server_option}
