"""Callbacks run in reused coroutines ("runners", lua/prelude.lua): one
coroutine runs one callback after another. A script can reach its runner
(coroutine.running) and resume it from another callback; a runner left
anywhere but between two callbacks is never given the next callback."""
from __future__ import annotations

from tests.held_backend import GUARD
from tests.integration.test_guarantees_waits import text

SCRIPT = """
function on_message(msg)
    local c, data = mix.websocket(), msg.data
    if data == "grab" then
        grabbed = coroutine.running()  -- the runner, kept for the next callback once this ends
        c:send("grabbed")
    elseif data == "wait" then
        c:send("waiting:" .. c:client_id())
        c:wait_context_value("go", %(guard)d)
        -- Runs in another runner than "grab"'s, which waits between two
        -- callbacks now: resumed with a function that stops halfway.
        local ok, value = coroutine.resume(grabbed, function() coroutine.yield("halfway") end)
        c:send("resumed:" .. tostring(ok) .. ":" .. tostring(value))
        c:wait_context_value("again", %(guard)d)  -- still holding its own runner
        c:send("waited again")
    else
        c:send("echo:" .. data)
    end
end
""" % {"guard": GUARD // 2}


async def test_a_runner_a_script_resumed_elsewhere_gets_no_more_callbacks(start_engine):
    running = await start_engine(SCRIPT)
    waiter, grabber = await running.connect(), await running.connect()
    await waiter.send_str("wait")  # its callback holds a runner while it waits
    cid = (await text(waiter)).split(":", 1)[1]
    await grabber.send_str("grab")  # a second runner, kept once this callback ends
    assert await text(grabber) == "grabbed"
    await running.api("/v1/conn/call", {"c": cid, "f": "set_context_value", "a": ["go", "yes"]})
    assert await text(waiter) == "resumed:true:halfway"
    # The kept runner now stops inside the script's function: the next
    # callbacks run, in order, in another one.
    for word in ("one", "two", "three"):
        await grabber.send_str(word)
    assert [await text(grabber) for _ in range(3)] == ["echo:one", "echo:two", "echo:three"]
    await running.api("/v1/conn/call", {"c": cid, "f": "set_context_value", "a": ["again", "yes"]})
    assert await text(waiter) == "waited again"
    await waiter.send_str("four")
    assert await text(waiter) == "echo:four"
