"""Helpers for talking to an engine in tests."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> Any:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    return msg.json()


async def assert_silent(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> None:
    """Nothing arrives within `wait` seconds."""
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=wait)
        pytest.fail(f"unexpected frame {msg!r}")
