"""A VM's Lua memory: the hard cap lupa enforces, and the room checks that
keep values made in Python under it.

An allocation that fails while lupa converts a Python value (a bridge
function's result) does not raise a clean Lua error: lupa hangs or raises
out of the VM. So bridge functions check the room before they hand a value
to Lua, and refuse with ``nil, err`` instead.
"""
from __future__ import annotations

from typing import Any, Callable

MB = 1024 * 1024
# Python-made values smaller than this need no check against the budget;
# the cap keeps at least this much free for them.
HEADROOM = 1 * MB


def hard_cap_mb(budget_mb: int) -> int:
    """The cap: the budget plus half of it (at least 32 MB), room for the
    garbage and the growth a callback makes between two budget checks."""
    return budget_mb + max(budget_mb // 2, 32)


def lua_string_size(value: Any) -> int:
    return len(value) if type(value) is bytes else 0


class LuaMemory:
    def __init__(self, runtime: Any, budget_mb: int) -> None:
        self.runtime = runtime
        self.budget = budget_mb * MB
        self.cap = hard_cap_mb(budget_mb) * MB

    def _used_after(self, size: int, limit: int) -> int | None:
        """Bytes in use if `size` more fit under `limit` (garbage collected
        first when needed), else None."""
        used = self.runtime.get_memory_used()
        if used + size <= limit:
            return used
        self.runtime.execute(b"collectgarbage()")
        used = self.runtime.get_memory_used()
        return used if used + size <= limit else None

    def refusal(self, size: int, what: str) -> str | None:
        """The error for a result of `size` bytes that would pass the budget; None if it fits."""
        limit = self.budget if size >= HEADROOM else self.cap - HEADROOM
        if self._used_after(size, limit) is not None:
            return None
        used = self.runtime.get_memory_used() // MB
        return (f"{what}: a result of {size} bytes would pass the Lua memory budget of "
                f"{self.budget // MB} MB ({used} MB in use)")

    def guard(self, name: str, function: Callable) -> Callable:
        """A bridge function that returns (nil, err) rather than a result that does not fit."""
        def guarded(*args):
            if self._used_after(HEADROOM, self.cap) is None:
                return None, f"{name}: the Lua memory budget is used up".encode()
            result = function(*args)
            if type(result) is tuple:
                size = sum(lua_string_size(v) for v in result)
            else:
                size = lua_string_size(result)
            if size:
                error = self.refusal(size, name)
                if error:
                    return None, error.encode()
            return result
        return guarded
