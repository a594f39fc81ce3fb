"""The tests' deadline helpers fail a stuck wait with what it waited for."""
from __future__ import annotations

import asyncio

import pytest

from tests.waiting import until, within


async def test_until_returns_once_the_condition_holds():
    fired: list[bool] = []
    asyncio.get_running_loop().call_later(0.05, fired.append, True)
    await until(lambda: fired, "the timer fired")
    assert fired == [True]


async def test_until_fails_naming_what_never_happened():
    with pytest.raises(pytest.fail.Exception, match="not within 0.1 s: the impossible"):
        await until(lambda: False, "the impossible", timeout=0.1)


async def test_within_fails_a_block_that_does_not_end():
    with pytest.raises(pytest.fail.Exception, match="not within 0.1 s: a reply"):
        async with within(0.1, "a reply"):
            await asyncio.Event().wait()


async def test_within_leaves_a_shorter_inner_timeout_its_own_error():
    with pytest.raises(TimeoutError):
        async with within(10, "the block"):
            await asyncio.wait_for(asyncio.Event().wait(), 0.05)
