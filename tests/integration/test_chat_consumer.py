"""examples/chat-consumer end to end: real websocket users send frames, the
Lua script queues them, the example's worker consumes them and answers each
sender through send."""
from __future__ import annotations

import asyncio
import os

import pytest

from connmix_py import Engine, load_settings
from tests.conftest import ROOT, load_example_module
from tests.waiting import until

EXAMPLE = os.path.join(ROOT, "examples", "chat-consumer")


@pytest.fixture
async def engine():
    settings = load_settings(os.path.join(EXAMPLE, "connmix.yaml"))
    settings.api_server.port = 0  # free ports instead of the example's own
    settings.servers[0].port = 0
    engine = Engine(settings)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
def worker():
    return load_example_module("worker", EXAMPLE)


async def test_each_user_gets_the_answers_to_their_own_frames(engine, worker, session):
    api = f"http://127.0.0.1:{engine.api_port}"
    consuming = asyncio.create_task(worker.main(api))
    try:
        url = f"http://127.0.0.1:{engine.server_port()}/chat"
        users = [await session.ws_connect(url) for _ in range(3)]
        for n in range(5):
            for u, ws in enumerate(users):
                await ws.send_str(f"user{u} message{n}")
        for u, ws in enumerate(users):
            answers = [(await ws.receive(timeout=10)).data for _ in range(5)]
            assert answers == [f"you said: user{u} message{n}" for n in range(5)]
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)


async def test_frames_sent_while_no_worker_runs_are_answered_when_one_starts(engine, worker, session):
    ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/chat")
    await ws.send_str("anyone there?")
    # the frame reaches the queue a moment after it is sent
    await until(lambda: engine.queues.size("chat"), "the frame was queued")
    assert engine.queues.size("chat") == 1
    consuming = asyncio.create_task(worker.main(f"http://127.0.0.1:{engine.api_port}"))
    try:
        assert (await ws.receive(timeout=10)).data == "you said: anyone there?"
        await ws.send_str("and now?")
        assert (await ws.receive(timeout=10)).data == "you said: and now?"
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)


async def test_a_user_who_left_does_not_stop_the_worker(engine, worker, session):
    url = f"http://127.0.0.1:{engine.server_port()}/chat"
    leaver = await session.ws_connect(url)
    await leaver.send_str("bye")
    await leaver.close()
    consuming = asyncio.create_task(worker.main(f"http://127.0.0.1:{engine.api_port}"))
    try:
        ws = await session.ws_connect(url)
        await ws.send_str("still working?")
        assert (await ws.receive(timeout=10)).data == "you said: still working?"
        assert not consuming.done()
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
