"""A VM's Lua memory: the hard cap lupa enforces, and the room checks that
keep values made in Python under it.

An allocation that fails while lupa converts a Python value does not raise a
clean Lua error: outside a Lua call LuaJIT panics (the process aborts), inside
one lupa hangs or raises out of the VM. So every value handed to Lua is
checked first: bridge functions return ``nil, err`` instead, the driver
refuses the event (the connection is closed with 1011).
"""
from __future__ import annotations

from typing import Any, Callable

MB = 1024 * 1024
# Values smaller than this need no check against the budget; the cap keeps
# at least this much free for them.
HEADROOM = 1 * MB
# What lupa adds to a value it converts (a string header, a table and its slot).
VALUE_OVERHEAD = 64


def hard_cap_mb(budget_mb: int) -> int:
    """The cap: the budget plus half of it (at least 32 MB), room for the
    garbage and the growth a callback makes between two budget checks."""
    return budget_mb + max(budget_mb // 2, 32)


_STRINGS = frozenset({bytes, str})


def value_size(value: Any) -> int:
    """About what a Python value takes once converted to Lua (at least)."""
    kind = type(value)
    if kind is bytes or kind is str:
        return len(value) + VALUE_OVERHEAD
    if kind is dict:
        size = VALUE_OVERHEAD
        for k, v in value.items():  # strings inline: most values are flat
            size += (len(k) + VALUE_OVERHEAD if type(k) in _STRINGS else value_size(k)) + (
                len(v) + VALUE_OVERHEAD if type(v) in _STRINGS else value_size(v))
        return size
    if kind is list or kind is tuple:
        size = VALUE_OVERHEAD
        for v in value:
            size += len(v) + VALUE_OVERHEAD if type(v) in _STRINGS else value_size(v)
        return size
    return 0  # numbers, booleans, nil, Lua objects: nothing new


class LuaMemoryFull(Exception):
    """No room left under the hard cap for a value from Python."""


class LuaMemory:
    def __init__(self, budget_mb: int) -> None:
        self.runtime: Any = None
        self._collect: Callable[[], Any] = lambda: None
        self.budget = budget_mb * MB
        self.cap = hard_cap_mb(budget_mb) * MB

    def bind(self, runtime: Any) -> None:
        self.runtime = runtime
        # fetched once: running a chunk later would itself allocate
        self._collect = runtime.globals().collectgarbage

    def _used_after(self, size: int, limit: int) -> int | None:
        """Bytes in use if `size` more fit under `limit` (garbage collected
        first when needed), else None."""
        used = self.runtime.get_memory_used()
        if used + size <= limit:
            return used
        self._collect()
        used = self.runtime.get_memory_used()
        return used if used + size <= limit else None

    def fits(self, size: int) -> bool:
        """Can `size` bytes from Python go into Lua without touching the cap's headroom?"""
        return self._used_after(size + HEADROOM, self.cap) is not None

    def make_room(self, value: Any) -> None:
        """Raises LuaMemoryFull when `value` cannot go into Lua safely."""
        if not self.fits(value_size(value)):
            raise LuaMemoryFull("Lua memory budget used up: no room for a value from Python")

    def refusal(self, size: int, what: str) -> str | None:
        """The error for a result of `size` bytes that would pass the budget; None if it fits."""
        limit = self.budget if size >= HEADROOM else self.cap - HEADROOM
        if self._used_after(size, limit) is not None:
            return None
        used = self.runtime.get_memory_used() // MB
        return (f"{what}: a result of {size} bytes would pass the Lua memory budget of "
                f"{self.budget // MB} MB ({used} MB in use)")

    def used_up(self) -> bool:
        """No room even for a small result (the headroom is in use): what a
        bridge function checks before it runs."""
        return self.runtime.get_memory_used() > self.cap - HEADROOM and not self.fits(0)

    def guard(self, name: str, function: Callable) -> Callable:
        """A bridge function that returns (nil, err) rather than a result that does not fit."""
        used_up = self.used_up

        def guarded(*args):
            # A result smaller than HEADROOM / 2 always fits in the headroom
            # checked first; only larger strings (the first result) are measured.
            if used_up():
                return None, f"{name}: the Lua memory budget is used up".encode()
            try:
                result = function(*args)
            except LuaMemoryFull as exc:
                return None, f"{name}: {exc}".encode()
            value = result[0] if type(result) is tuple and result else result
            if type(value) is bytes and len(value) >= HEADROOM // 2:
                error = self.refusal(len(value), name)
                if error:
                    return None, error.encode()
            return result
        return guarded
