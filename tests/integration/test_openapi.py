"""GET /v1/openapi.json (issue 13, OpenAPI): the document is built from the
same schemas the handlers validate with, and schemathesis, run against a
real engine, finds no 5xx and no response outside the document."""
from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
import textwrap

import pytest

from connmix_py import Engine, parse_settings
from connmix_py.api import schema
from tests.conftest import engine_config

SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    conn:subscribe(msg.data)
    conn:send(conn:client_id())
end
"""
USERS = [{"username": "admin", "password": "admin-Secret1", "roles": ["read", "write"]},
         {"username": "writer", "password": "writer-Secret1", "roles": ["write"]}]
# The checks about our answers; the ones that expect HTTP 4xx for bad input
# do not apply: CONNMIX's API answers bad params with HTTP 200 and {"E": {"c": 101}}.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-Secret1").decode()}
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")


async def start(tmp_path, users: list | None = None) -> Engine:
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT))
    conf = engine_config(str(entry))
    if users:
        conf["access"] = {"users": users}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    return engine


async def schemathesis(engine: Engine, session, tmp_path, *options: str) -> tuple[int, str]:
    """The schemathesis CLI against the engine, with the document the engine
    serves (read as admin: a write-only user may not read it), bounded: 25
    examples per operation."""
    url = f"http://127.0.0.1:{engine.api_port}"
    async with session.get(url + "/v1/openapi.json", headers=ADMIN) as resp:
        assert resp.status == 200
        document = tmp_path / "openapi.json"
        document.write_bytes(await resp.read())
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "run", str(document), "--url", url, "--checks", CHECKS, "--max-examples", "25", "--seed", "1",
        "--no-color", "--request-timeout", "10", *options,
        cwd=tmp_path,  # its .schemathesis cache stays out of the checkout
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=50)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize("users, auth", [
    (None, ()),
    (USERS, ("--auth", "admin:admin-Secret1")),
    (USERS, ("--auth", "writer:writer-Secret1")),  # GETs answer 403 (no read role)
    (USERS, ()),  # everything but the probes answers 401
], ids=["open", "admin", "writer-only", "no-credentials"])
async def test_schemathesis_finds_no_server_error_and_no_undocumented_response(tmp_path, session, users, auth):
    engine = await start(tmp_path, users)
    try:
        # A connected, subscribed client, so that some publishes and sends deliver.
        ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/ws")
        await ws.send_str("news")
        assert (await ws.receive(timeout=5)).data
        code, output = await schemathesis(engine, session, tmp_path, *auth)
        await ws.close()
    finally:
        await engine.stop()
    # Exit 1 on any failed check; a warning (a write-only user's GETs all 403) is expected here.
    assert code == 0, output
    assert re.search(r"\d+ generated, \d+ passed\n", output), output


async def test_served_document_is_the_one_validation_uses(tmp_path, session):
    engine = await start(tmp_path)
    try:
        base = f"http://127.0.0.1:{engine.api_port}"
        async with session.get(base + "/v1/openapi.json") as resp:
            assert resp.status == 200
            document = await resp.json()
        paths = document["paths"]
        assert set(paths) >= {"/v1/mesh/publish", "/v1/mesh/send", "/v1/conn/call", "/v1/stats", "/version",
                              "/v1/nodes", "/metrics", "/healthz", "/readyz"}
        # Every field of every request body: a wrong value gets 101 with the document's description.
        for path in ("/v1/mesh/publish", "/v1/mesh/send", "/v1/conn/call"):
            body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            valid = {"c": "1", "d": "x", "t": "text", "f": "subscribe", "a": ["x"]}
            for name, rule in body["properties"].items():
                params = {key: valid[key] for key in body["properties"]} | {name: {"wrong": True}}
                async with session.post(base + path, json=params) as resp:
                    reply = await resp.json()
                assert reply == {"E": {"c": 101, "m": f"{name} must be {rule['description']}"}}, (path, name)
    finally:
        await engine.stop()


def test_shapes_check_what_they_describe():
    assert schema.matches(schema.CLIENT_ID, 7) and schema.matches(schema.CLIENT_ID, "7")
    for wrong in (-1, 2 ** 63, 5.0, True, "", None):
        assert not schema.matches(schema.CLIENT_ID, wrong), wrong
    assert schema.matches(schema.FRAME_TYPE, None) and not schema.matches(schema.FRAME_TYPE, 0)
