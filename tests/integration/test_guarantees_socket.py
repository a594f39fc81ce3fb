"""Guarantees of the socket server that one-line mutations used to break
unnoticed (issue 14): input arriving while a callback waits is handled after
it, in order; a client leaving mid-wait ends the wait; reading pauses over
maxPacketSize behind a wait and resumes after it; a close that cannot flush
is aborted after writeTimeout. Order of events is the proof; waits on time
are hang guards or "nothing happens yet" checks."""
from __future__ import annotations

import asyncio
import socket
import struct

from tests.held_backend import GUARD, eventually, held_fixture  # noqa: F401 (the held fixture)
from tests.tcp_client import TcpClient

# Newline framing; on_message commands. "q ..." lines are counted, not answered.
SCRIPT = """
local backend = "%s"
waiting = 0  -- callbacks in a wait_context_value
quiet = 0

function protocol_input(buf, c)
    local stop = buf:tostring():find("\\n", 1, true)
    return stop or 0
end

function protocol_decode(str, c)
    return str:sub(1, -2)
end

function on_message(line, c)
    local hold = line:match("^hold:(.+)$")
    if hold then
        c:send("held:" .. mix.http.request("GET", backend .. hold).body .. "\\n")
    elseif line == "wait" then
        c:send("waiting\\n")
        waiting = waiting + 1
        local v = c:wait_context_value("never")
        waiting = waiting - 1
        mix.queue.push("ended", v == nil and "nil" or v)
    elseif line == "quiet" then
        c:send("quiet " .. quiet .. "\\n")
    elseif line:sub(1, 2) == "q " then
        quiet = quiet + 1
    elseif line == "flood-and-close" then
        for i = 1, 120 do
            c:send(string.rep("y", 100000) .. "\\n")
        end
        c:close()
    else
        c:send("echo " .. line .. "\\n")
    end
end

function on_close(client_id, err, c)
    mix.queue.push("waiting at on_close", tostring(waiting))  -- the waits end first
    mix.queue.push("closed", err or "clean")
end
"""


async def start(start_engine, held, **settings):
    return await start_engine(SCRIPT % f"http://127.0.0.1:{held.port}/hold/", protocol="socket",
                              **settings)


async def ask(client: TcpClient, line: str) -> str:
    await client.send_line(line)
    return await client.recv_line()


async def echo_round_trip(running) -> None:
    other = await TcpClient.connect(running.engine.server_port())
    assert await ask(other, "still served") == "echo still served"
    await other.close()


async def test_input_arriving_during_a_wait_is_handled_after_it_in_order(start_engine, held):
    running = await start(start_engine, held)
    client = await TcpClient.connect(running.engine.server_port())
    await client.send_line("hold:a")
    await held.arrived("a")
    for line in ("x1", "x2", "x3"):  # separate writes, each while the callback waits
        await client.send_line(line)
        await echo_round_trip(running)
    held.release("a")
    assert [await client.recv_line() for _ in range(4)] == ["held:a", "echo x1", "echo x2", "echo x3"]


async def test_a_client_leaving_while_on_message_waits_ends_the_wait(start_engine, held):
    running = await start(start_engine, held)
    queues = running.engine.queues
    client = await TcpClient.connect(running.engine.server_port())
    assert await ask(client, "wait") == "waiting"
    # Gone at once (a reset): a half-close would still let replies go out.
    client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                      struct.pack("ii", 1, 0))
    client.writer.transport.abort()
    await eventually(lambda: queues.size("closed"), "on_close after a client left mid-wait")
    assert queues.pop("waiting at on_close") == "0"
    assert queues.pop("ended") == "nil"
    await eventually(lambda: running.engine.stats()["connections"] == 0, "the connection leaves the hub")


async def test_reading_pauses_over_max_packet_size_behind_a_wait_and_resumes(start_engine, held):
    """Behind a waiting callback the server stops reading once more than
    maxPacketSize bytes are buffered: a client sending a lot cannot finish
    sending until the wait ends; then everything is handled, in order."""
    running = await start(start_engine, held, maxPacketSize=32 * 1024)
    client = await TcpClient.connect(running.engine.server_port())
    await client.send_line("hold:a")
    await held.arrived("a")
    lines = 1024  # 16 MB of packets: far beyond what the kernel buffers while nobody reads
    packet = b"q" + b" " * (16 * 1024 - 2) + b"\n"
    sending = asyncio.create_task(client.send(packet * lines + b"quiet\n"))
    done, _ = await asyncio.wait({sending}, timeout=1.0)
    assert not done, "the server kept reading behind a waiting callback"
    await echo_round_trip(running)
    held.release("a")
    await asyncio.wait_for(sending, GUARD)  # reading resumed
    assert await client.recv_line() == "held:a"
    assert await client.recv_line() == f"quiet {lines}"
    await client.close()


async def test_a_close_that_cannot_flush_is_aborted_after_write_timeout(start_engine, held):
    running = await start(start_engine, held, maxSendQueue=64 * 1024 * 1024, writeTimeout=1)
    queues = running.engine.queues
    stuck = await TcpClient.connect(running.engine.server_port())
    await stuck.send_line("flood-and-close")  # 12 MB, never read, then conn:close()
    await eventually(lambda: queues.size("closed"), "on_close of a close that cannot flush")
    assert queues.pop("closed").startswith("slow client: the close could not flush")
    await echo_round_trip(running)
    stuck.writer.transport.abort()


async def test_a_client_half_closing_while_on_message_waits_is_closed_after_read_timeout(start_engine, held):
    """After an EOF replies may still go out (a half-close), but a wait that
    nothing ends must not hold the connection forever: readTimeout after the
    EOF the connection closes, which ends the wait."""
    running = await start(start_engine, held, readTimeout=1)
    queues = running.engine.queues
    client = await TcpClient.connect(running.engine.server_port())
    assert await ask(client, "wait") == "waiting"
    client.writer.write_eof()
    await eventually(lambda: queues.size("closed"), "on_close after a half-close mid-wait")
    assert queues.pop("ended") == "nil"
    assert "read timeout" in queues.pop("closed")
    await eventually(lambda: running.engine.stats()["connections"] == 0, "the connection leaves the hub")
