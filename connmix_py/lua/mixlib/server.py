"""mix.server.option(name)."""
from __future__ import annotations


def bridge(vm) -> dict:
    options = vm.settings.options

    def server_option(name=None):
        if type(name) is not bytes:
            return None
        return vm.to_lua(options.get(name.decode("utf-8", "replace")))

    return {"server_option": server_option}
