"""GET /metrics (issue 11, metrics): Prometheus text that moves as clients
connect, send, subscribe, get publishes, fail in Lua, read too slowly and
close; behind access control like every GET of the API."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_access import basic, start_guarded
from tests.raw_websocket import RawWebSocket
from tests.tcp_client import TcpClient
from tests.waiting import until

SCRIPT = """
function on_message(msg)
    local c = mix.websocket()
    if msg.data:sub(1, 4) == "sub:" then
        c:subscribe(msg.data:sub(5))
        c:send("subscribed")
    elseif msg.data == "boom" then
        error("boom")
    elseif msg.data == "spin" then
        while true do end
    elseif msg.data == "push" then
        mix.queue.push("jobs", "job")
        c:send("pushed")
    else
        c:send(msg.data)
    end
end
"""

Samples = dict[tuple[str, frozenset], float]


async def scrape(running, headers=None) -> Samples:
    async with running.session.get(running.api_url + "/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample of that name whose labels include these (0 when absent)."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(found) <= 1, f"{name} {labels} matches several samples"
    return found[0] if found else 0.0


async def test_the_numbers_move_as_a_scenario_runs(start_engine):
    running = await start_engine(SCRIPT, luavm={"cpuBudget": 0.2}, maxSendQueue=256 * 1024, writeTimeout=30)
    port = str(running.engine.server_port())
    server = {"protocol": "websocket", "port": port}
    before = await scrape(running)
    assert value(before, "connmix_engine_servers_clients", **server) == 0
    assert value(before, "connmix_connections_accepted_total", **server) == 0

    # connect and message: one client echoes, one subscribes
    echo = await running.connect()
    await echo.send_str("hello")
    assert (await echo.receive(timeout=5)).data == "hello"
    member = await running.connect()
    await member.send_str("sub:room")
    assert (await member.receive(timeout=5)).data == "subscribed"
    samples = await scrape(running)
    assert value(samples, "connmix_engine_servers_clients", **server) == 2
    assert value(samples, "connmix_connections_accepted_total", **server) == 2
    assert value(samples, "connmix_engine_servers_read_messages_total", protocol="websocket") == 2
    read_bytes = value(samples, "connmix_engine_servers_read_bytes_total", protocol="websocket")
    assert read_bytes == len("hello") + len("sub:room")
    assert value(samples, "connmix_engine_servers_send_messages_total", protocol="websocket") == 2
    # wire bytes: a 2-byte header before each short payload
    assert value(samples, "connmix_engine_servers_send_bytes_total", protocol="websocket") == 2 + 5 + 2 + 10
    assert value(samples, "connmix_channels") == 1
    assert value(samples, "connmix_subscriptions") == 1
    # two on_handshake runs (the script has none: still a call into Lua) and two on_message
    assert value(samples, "connmix_lua_callback_duration_seconds_count", script="entry0.lua") == 4

    # publish: counted once, delivered once
    assert await running.engine.publish("room", "news") == (1, 0)
    assert (await member.receive(timeout=5)).data == "news"
    assert await running.engine.publish("nobody-listens", "x") == (0, 0)
    samples = await scrape(running)
    assert value(samples, "connmix_publishes_total") == 2
    assert value(samples, "connmix_deliveries_total") == 1
    assert value(samples, "connmix_engine_servers_send_messages_total", protocol="websocket") == 3

    # a queued item waits in its topic
    await echo.send_str("push")
    assert (await echo.receive(timeout=5)).data == "pushed"
    samples = await scrape(running)
    assert value(samples, "connmix_queue_items", topic="jobs") == 1
    assert value(samples, "connmix_queue_pushes_total") == 1

    # a Lua error and a budget stop close their clients, by reason lua_error
    for bad in ("boom", "spin"):
        ws = await running.connect()
        await ws.send_str(bad)
        assert (await ws.receive(timeout=10)).data == 1011
        await ws.close()
    await until(lambda: running.engine.stats()["connections"] == 2, "the failed clients are gone")
    samples = await scrape(running)
    assert value(samples, "connmix_lua_errors_total", script="entry0.lua") == 1
    assert value(samples, "connmix_lua_budget_stops_total", script="entry0.lua") == 1
    assert value(samples, "connmix_connections_closed_total", reason="lua_error", **server) == 2

    # a slow client: subscribed, reads nothing, its send queue overflows
    slow = await RawWebSocket.connect(running.engine.server_port(), running.path, rcvbuf=4096)
    await slow.send_text("sub:slow")
    assert await slow.read_frame() == (0x1, b"subscribed")
    big = "x" * 64 * 1024
    for _ in range(512):  # 32 MB: far beyond what the kernel's buffers hold
        await running.engine.publish("slow", big)
        if running.engine.stats()["connections"] == 2:
            break
    await until(lambda: running.engine.stats()["connections"] == 2, "the slow client is dropped")
    slow.drop()
    samples = await scrape(running)
    assert value(samples, "connmix_connections_closed_total", reason="slow_client", **server) == 1
    assert value(samples, "connmix_delivery_failures_total") >= 1
    assert value(samples, "connmix_engine_servers_send_errors_total", protocol="websocket") >= 1

    # close: the client's own close, and the gauges come back down
    await echo.close()
    await member.close()
    await until(lambda: running.engine.stats()["connections"] == 0, "every client is gone")
    samples = await scrape(running)
    assert value(samples, "connmix_engine_servers_clients", **server) == 0
    assert value(samples, "connmix_connections_closed_total", reason="client", **server) == 2
    assert value(samples, "connmix_channels") == 0
    assert value(samples, "connmix_subscriptions") == 0
    accepted = value(samples, "connmix_connections_accepted_total", **server)
    closed = sum(v for (n, _), v in samples.items() if n == "connmix_connections_closed_total")
    assert accepted == closed == 5
    # bytes written to closed connections are kept
    assert value(samples, "connmix_engine_servers_send_bytes_total", protocol="websocket") > 64 * 1024


async def test_a_refused_handshake_is_counted_as_refused(start_engine):
    running = await start_engine("function on_handshake() return false end")
    port = str(running.engine.server_port())
    async with running.session.get(running.ws_url, headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 403
    samples = await scrape(running)
    assert value(samples, "connmix_connections_closed_total", protocol="websocket", port=port, reason="refused") == 1


async def test_metrics_need_the_read_role(tmp_path, session):
    guarded = await start_guarded(tmp_path, session)
    try:
        async with session.get(guarded.api_url + "/metrics") as resp:
            assert resp.status == 401
        async with session.get(guarded.api_url + "/metrics", headers=basic("writer")) as resp:
            assert resp.status == 403
        async with session.get(guarded.api_url + "/metrics", headers=basic("viewer")) as resp:
            assert resp.status == 200
            assert "connmix_engine_servers_clients" in await resp.text()
    finally:
        await guarded.engine.stop()


async def test_two_engines_in_one_process_count_apart(start_engine):
    first = await start_engine(SCRIPT)
    second = await start_engine(SCRIPT)
    ws = await first.connect()
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "hello"
    assert value(await scrape(first), "connmix_engine_servers_read_messages_total") == 1
    assert value(await scrape(second), "connmix_engine_servers_read_messages_total") == 0
    await ws.close()


SOCKET_LINES = r"""
function protocol_input(buf)
    local stop = buf:tostring():find("\n", 1, true)
    return stop or 0
end

function protocol_encode(data)
    if data == "unencodable" then error("cannot encode that") end
    return data .. "\n"
end

local commands = {
    ["sub\n"] = function(c) c:subscribe("room"); c:send("ok\n") end,
    ["bye\n"] = function(c) c:close() end,
}

function on_message(msg)
    local c = mix.socket.tcp()
    local command = commands[msg]
    if command then command(c) else c:send(msg) end
end
"""


async def test_socket_servers_count_by_their_protocol(start_engine):
    running = await start_engine(SOCKET_LINES, protocol="socket")
    server = {"protocol": "socket", "port": str(running.engine.server_port())}
    client = await TcpClient.connect(running.engine.server_port())
    await client.send_line("sub")
    assert await client.recv_line() == "ok"
    assert await running.engine.publish("room", "news") == (1, 0)
    assert await client.recv_line() == "news"
    samples = await scrape(running)
    assert value(samples, "connmix_engine_servers_clients", **server) == 1
    assert value(samples, "connmix_engine_servers_read_bytes_total", protocol="socket") == len("sub\n")
    # conn:send and the publish (through protocol_encode)
    assert value(samples, "connmix_engine_servers_send_messages_total", protocol="socket") == 2
    assert value(samples, "connmix_engine_servers_send_bytes_total", protocol="socket") == len("ok\nnews\n")
    assert value(samples, "connmix_engine_servers_read_messages_total", protocol="websocket") == 0
    assert value(samples, "connmix_engine_servers_send_errors_total", protocol="socket") == 0

    # protocol_encode fails for a publish: a send error and a Lua error, nothing written
    assert await running.engine.publish("room", "unencodable") == (0, 1)
    samples = await scrape(running)
    assert value(samples, "connmix_engine_servers_send_errors_total", protocol="socket") == 1
    assert value(samples, "connmix_lua_errors_total", script="entry0.lua") == 1
    assert value(samples, "connmix_engine_servers_send_messages_total", protocol="socket") == 2

    closer = await TcpClient.connect(running.engine.server_port())
    await closer.send_line("bye")  # closed by the script
    await closer.assert_closed()
    await client.close()  # EOF: the client's own close
    await until(lambda: running.engine.stats()["connections"] == 0, "both clients are gone")
    samples = await scrape(running)
    assert value(samples, "connmix_connections_closed_total", reason="server", **server) == 1
    assert value(samples, "connmix_connections_closed_total", reason="client", **server) == 1
    assert value(samples, "connmix_engine_servers_send_bytes_total", protocol="socket") == len("ok\nnews\n")


async def test_a_broker_reports_its_state_through_the_hook(start_engine):
    running = await start_engine(SCRIPT)
    assert "connmix_broker_connected" not in await (await running.session.get(running.api_url + "/metrics")).text()
    state = {"connected": 1.0}
    running.engine.metrics.broker_state = lambda: state["connected"]
    assert value(await scrape(running), "connmix_broker_connected") == 1
    state["connected"] = 0.0
    assert value(await scrape(running), "connmix_broker_connected") == 0


async def test_a_scripts_own_error_about_a_budget_is_an_error_not_a_budget_stop(start_engine):
    running = await start_engine('function on_message() error("the monthly budget is spent") end')
    ws = await running.connect()
    await ws.send_str("pay")
    assert (await ws.receive(timeout=5)).data == 1011
    samples = await scrape(running)
    assert value(samples, "connmix_lua_errors_total", script="entry0.lua") == 1
    assert value(samples, "connmix_lua_budget_stops_total", script="entry0.lua") == 0
    await ws.close()


async def test_a_send_to_a_closing_connection_is_a_send_error(start_engine):
    running = await start_engine("""
        function on_message()
            local c = mix.websocket()
            c:close()
            c:send("too late")
        end
    """)
    ws = await running.connect()
    await ws.send_str("close me")
    assert (await ws.receive(timeout=5)).data == 1000
    await until(lambda: running.engine.stats()["connections"] == 0, "the client is gone")
    samples = await scrape(running)
    assert value(samples, "connmix_engine_servers_send_errors_total", protocol="websocket") == 1
    assert value(samples, "connmix_engine_servers_send_messages_total", protocol="websocket") == 0
    port = str(running.engine.server_port())
    assert value(samples, "connmix_connections_closed_total", protocol="websocket", port=port, reason="server") == 1


async def test_protocol_errors_and_lost_clients_have_their_reasons(start_engine):
    running = await start_engine(SCRIPT)
    port = running.engine.server_port()
    bad = await RawWebSocket.connect(port, running.path)
    await bad.send_frame(b"\xff\xfe")  # a text frame that is not UTF-8: closed with 1007
    assert (await bad.read_frame())[0] == 0x8
    bad.drop()
    gone = await RawWebSocket.connect(port, running.path)
    gone.drop()  # no close frame
    await until(lambda: running.engine.stats()["connections"] == 0, "both clients are gone")
    samples = await scrape(running)
    server = {"protocol": "websocket", "port": str(port)}
    assert value(samples, "connmix_connections_closed_total", reason="protocol_error", **server) == 1
    assert value(samples, "connmix_connections_closed_total", reason="lost", **server) == 1
