"""Deadlines for the tests' waits: when a guarantee breaks, the test fails
saying what it waited for, instead of hanging until the per-test timeout.

    await until(lambda: engine.stats()["connections"] == 0, "the hub emptied")
    async with within(10, "the close event"):
        while ...: await read_next()
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

# Generous on purpose: a hang guard, never a timing goal.
TIMEOUT = 10.0


async def until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll until condition() is true; fail the test after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def within(timeout: float, what: str) -> AsyncIterator[None]:
    """A block (a loop of reads, say) that must end within timeout seconds."""
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            yield
    except TimeoutError:
        if not limit.expired():  # a shorter wait inside the block ran out: its own error
            raise
        pytest.fail(f"not within {timeout} s: {what}")


async def logged_running(proc: asyncio.subprocess.Process, timeout: float = 30) -> list[str]:
    """Read an engine process's stderr until it logs that it is running; the
    lines read (a process that exits first fails the test with its output)."""
    lines: list[str] = []
    assert proc.stderr is not None
    async with within(timeout, "the engine logged that it is running"):
        while not any("running" in line for line in lines):
            line = (await proc.stderr.readline()).decode()
            assert line, "".join(lines)
            lines.append(line)
    return lines
