"""The three calling styles of connection callbacks, told apart per script
without a setting: the current one (on_close(client_id, err)), the current
one with the connection as an extra last argument (on_close(client_id, err,
conn)), and the old one of connmix/examples laravel-chat (on_connect(conn),
on_handshake(headers, conn), on_close(err, conn))."""
from __future__ import annotations

import pytest

from tests.tcp_client import TcpClient

# A line protocol without protocol_encode (conn:send writes the bytes as they
# are): "audit" subscribes to the close events, "id" answers the client id.
LINES = """
function protocol_input(buf{extra})
    local at = buf:tostring():find("\\n", 1, true)
    return at or 0
end

function protocol_decode(str{extra})
    return str:sub(1, -2)
end

function on_message(line{extra})
    if line == "audit" then
        conn:subscribe("audit")
        conn:send("auditing\\n")
    else
        conn:send("id " .. conn:client_id() .. "\\n")
    end
end
"""

STYLES = {
    "current": """
function on_connect(client_id)
    conn:send("connected " .. client_id .. "\\n")
end

function on_close(client_id, err)
    mix.mesh.publish("audit", "closed " .. client_id .. " " .. tostring(err) .. "\\n")
end
""" + LINES.format(extra=""),
    "conn last": """
function on_connect(client_id, c)
    c:send("connected " .. client_id .. "\\n")
end

function on_close(client_id, err, c)
    mix.mesh.publish("audit", "closed " .. c:client_id() .. " " .. tostring(err) .. "\\n")
end
""" + LINES.format(extra=", c"),
    "old": """
function on_connect(conn)
    conn:send("connected " .. conn:client_id() .. "\\n")
end

function on_close(err, conn)
    mix.mesh.publish("audit", "closed " .. conn:client_id() .. " " .. tostring(err) .. "\\n")
end
""" + LINES.format(extra=", conn"),
}


@pytest.mark.parametrize("style", sorted(STYLES))
async def test_socket_callbacks_get_their_style_s_arguments(start_engine, style):
    running = await start_engine(STYLES[style], protocol="socket")
    port = running.engine.server_port()
    auditor = await TcpClient.connect(port)
    assert (await auditor.recv_line()).startswith("connected ")
    await auditor.send_line("audit")
    assert await auditor.recv_line() == "auditing"

    client = await TcpClient.connect(port)
    connected = await client.recv_line()
    await client.send_line("id")
    client_id = (await client.recv_line()).removeprefix("id ")
    assert connected == f"connected {client_id}"
    await client.close()
    assert await auditor.recv_line() == f"closed {client_id} nil"


async def test_the_old_style_is_told_by_any_one_of_its_callbacks(start_engine):
    """on_connect(conn) alone has the current style's count (one parameter):
    the script's on_close(err, conn) says which style it is."""
    script = STYLES["old"].replace("conn:send(\"connected", "conn:send(\"connected via conn")
    running = await start_engine(script, protocol="socket")
    client = await TcpClient.connect(running.engine.server_port())
    assert (await client.recv_line()).startswith("connected via conn ")


OLD_STYLE_WEBSOCKET = """
function on_handshake(headers, conn)
    if headers["X-Token"] ~= "letmein" then
        return false
    end
    conn:set_context_value("agent", headers["X-Agent"])
end

function on_message(data, conn)
    if data.data == "audit" then
        conn:subscribe("audit")
    end
    conn:send(conn:client_id() .. " " .. conn:context_value("agent"))
end

function on_close(err, conn)
    mix.mesh.publish("audit", "closed " .. conn:client_id() .. " " .. tostring(err))
end
"""


async def test_websocket_old_style_handshake_and_close(start_engine):
    running = await start_engine(OLD_STYLE_WEBSOCKET)
    with pytest.raises(Exception, match="403"):
        await running.connect(headers={"X-Token": "wrong"})
    auditor = await running.connect(headers={"X-Token": "letmein", "X-Agent": "auditor"})
    await auditor.send_str("audit")
    assert (await auditor.receive_str(timeout=5)).endswith(" auditor")
    client = await running.connect(headers={"X-Token": "letmein", "X-Agent": "phone"})
    await client.send_str("hi")
    client_id, agent = (await client.receive_str(timeout=5)).split(" ")
    assert agent == "phone"
    await client.close()
    assert await auditor.receive_str(timeout=5) == f"closed {client_id} nil"


# Starts in the current style; "old" redefines on_close in the old style.
SWITCHING_STYLE = """
function on_connect(client_id)
    conn:send("connected\\n")
end

function on_close(client_id, err)
    mix.mesh.publish("audit", "closed current " .. client_id .. "\\n")
end
""" + LINES.format(extra="").replace('''    else
        conn:send("id''', '''    elseif line == "old" then
        on_close = function(err, conn)
            mix.mesh.publish("audit", "closed old " .. conn:client_id() .. "\\n")
        end
        conn:send("switched\\n")
    else
        conn:send("id''')


async def test_a_script_that_redefines_a_callback_is_called_in_its_new_style(start_engine):
    """The style is looked at again when the script replaces one of the
    three callbacks (the dispatcher remembers it per set of functions)."""
    running = await start_engine(SWITCHING_STYLE, protocol="socket")
    port = running.engine.server_port()
    auditor = await TcpClient.connect(port)
    await auditor.recv_line()
    await auditor.send_line("audit")
    assert await auditor.recv_line() == "auditing"

    async def closed_line(switch: bool) -> tuple[str, str]:
        client = await TcpClient.connect(port)
        await client.recv_line()
        await client.send_line("id")
        client_id = (await client.recv_line()).removeprefix("id ")
        if switch:
            await client.send_line("old")
            assert await client.recv_line() == "switched"
        await client.close()
        return client_id, await auditor.recv_line()

    client_id, line = await closed_line(switch=False)
    assert line == f"closed current {client_id}"
    client_id, line = await closed_line(switch=True)
    assert line == f"closed old {client_id}"
