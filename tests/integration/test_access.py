"""access.users against a running engine (issue 8, finding 1): every attack
of the finding as a real HTTP or WebSocket request, with and without the
right user, role and host; the start-up warning; passwords out of the logs."""
from __future__ import annotations

import base64
import dataclasses
import logging
import textwrap

import asyncio
from urllib.parse import quote

import aiohttp
import pytest

from connmix_py import Engine, parse_settings
from connmix_py.client import AccessDenied, AsyncClient, Client, Consumer, TransportError
from connmix_py.config import AccessSettings
from tests.api_helpers import SCRIPT, call, client_id, error_code, push, send_op
from tests.conftest import engine_config, stop_engine
from tests.helpers import assert_silent, receive_json

USERS = [
    {"username": "admin", "password": "s3cret-Admin", "roles": ["read", "write"], "host": "127.*.*.*"},
    {"username": "viewer", "password": "s3cret-Viewer", "roles": ["read"]},
    {"username": "writer", "password": "s3cret-Writer", "roles": ["write"], "host": "127.0.0.1"},
    {"username": "remote", "password": "s3cret-Remote", "roles": ["read", "write"], "host": "10.*.*.*"},
    {"username": "émile", "password": "p@ss:w/rd é%", "roles": ["write"]},  # needs escaping in a URL
]
PASSWORDS = {user["username"]: user["password"] for user in USERS}


def basic(username: str, password: str | None = None) -> dict[str, str]:
    secret = PASSWORDS[username] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()}


class Guarded:
    """An engine with USERS; requests as a given user (or as nobody)."""

    def __init__(self, engine: Engine, session: aiohttp.ClientSession) -> None:
        self.engine = engine
        self.session = session
        self.api_url = f"http://127.0.0.1:{engine.api_port}"
        self.ws_url = f"http://127.0.0.1:{engine.server_port()}/ws"

    async def post(self, path: str, body: dict, headers: dict | None = None) -> aiohttp.ClientResponse:
        async with self.session.post(self.api_url + path, json=body, headers=headers) as resp:
            await resp.read()
            return resp

    async def get(self, path: str, headers: dict | None = None) -> aiohttp.ClientResponse:
        async with self.session.get(self.api_url + path, headers=headers) as resp:
            await resp.read()
            return resp

    async def api_ws(self, headers: dict | None = None) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.api_url + "/ws/v1", headers=headers)

    async def victim(self, *channels: str) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        """A client of the websocket server, subscribed by the admin."""
        ws = await self.session.ws_connect(self.ws_url)
        cid = await client_id(ws)
        if channels:
            api = await self.api_ws(basic("admin"))
            assert (await call(api, "conn.call", {"c": cid, "f": "subscribe", "a": list(channels)}))["E"] is None
            await api.close()
        return ws, cid


async def start_guarded(tmp_path, session, users=USERS, bind="127.0.0.1") -> Guarded:
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT))
    conf = engine_config(str(entry))
    conf["engine"]["apiServer"]["bind"] = bind
    conf["access"] = {"users": users}
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    return Guarded(engine, session)


@pytest.fixture
async def guarded(tmp_path, session):
    running = await start_guarded(tmp_path, session)
    yield running
    await stop_engine(running.engine, session)


PUBLISH = ("/v1/mesh/publish", {"c": "news", "d": "forged"})


def send_to(cid: str) -> tuple[str, dict]:
    return "/v1/mesh/send", {"c": cid, "d": "forged"}


def hijack(cid: str) -> tuple[str, dict]:
    """conn.call that moves the victim's uid to the attacker's choosing."""
    return "/v1/conn/call", {"c": cid, "f": "set_context_value", "a": ["uid", "attacker"]}


async def assert_untouched(victim: aiohttp.ClientWebSocketResponse) -> None:
    """Nothing was delivered to the victim and its context is as it was."""
    await assert_silent(victim)
    await send_op(victim, "context")
    assert await receive_json(victim) == {"context": {}}


# -- 401: no or wrong credentials ------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    None,
    basic("admin", "wrong"),
    basic("admin", ""),
    basic("nobody", "s3cret-Admin"),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"admin").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"admin:\xff").decode()},
    {"Authorization": "Bearer s3cret-Admin"},
], ids=["none", "wrong-password", "empty-password", "unknown-user", "bad-base64", "no-colon", "not-utf8",
        "not-basic"])
async def test_without_valid_credentials_every_attack_is_401(guarded, headers):
    victim, cid = await guarded.victim("news")
    for path, body in (PUBLISH, send_to(cid), hijack(cid)):
        resp = await guarded.post(path, body, headers)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="connmix"'
    for path in ("/v1/stats", "/no/such/route"):  # a route added later is covered too
        assert (await guarded.get(path, headers)).status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await guarded.api_ws(headers)
    assert refused.value.status == 401
    await assert_untouched(victim)


# -- 403: the right user without the role, or from the wrong host ---------------------------------


async def test_a_read_only_user_cannot_publish_send_or_conn_call(guarded):
    victim, cid = await guarded.victim("news")
    for path, body in (PUBLISH, send_to(cid), hijack(cid)):
        resp = await guarded.post(path, body, basic("viewer"))
        assert resp.status == 403, path
        assert "WWW-Authenticate" not in resp.headers
    await assert_untouched(victim)


async def test_a_read_only_user_cannot_open_the_websocket_api(guarded):
    """/ws/v1 publishes, sends, calls and consumes: the upgrade needs write,
    so a read-only user cannot consume another service's queue."""
    victim, _ = await guarded.victim()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await guarded.api_ws(basic("viewer"))
    assert refused.value.status == 403
    # The item stays queued for the real consumer.
    assert (await push(victim, "orders", "order 1"))["err"] is False
    consumer = await guarded.api_ws(basic("writer"))
    assert (await call(consumer, "queue.pop", {"t": ["orders"]}, "pop"))["r"] == {"s": True}
    event = await receive_json(consumer)
    assert event["e"] == "queue.pop" and event["p"]["d"] == "order 1"


async def test_a_host_outside_the_users_pattern_is_403(guarded):
    victim, cid = await guarded.victim("news")
    for path, body in (PUBLISH, send_to(cid), hijack(cid)):
        assert (await guarded.post(path, body, basic("remote"))).status == 403, path
    assert (await guarded.get("/v1/stats", basic("remote"))).status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await guarded.api_ws(basic("remote"))
    assert refused.value.status == 403
    await assert_untouched(victim)


async def test_a_write_only_user_cannot_read(guarded):
    assert (await guarded.get("/v1/stats", basic("writer"))).status == 403


# -- allowed -----------------------------------------------------------------------------------------


async def test_the_read_role_may_get(guarded):
    resp = await guarded.get("/v1/stats", basic("viewer"))
    assert resp.status == 200


async def test_the_write_role_may_publish_send_and_conn_call(guarded):
    victim, cid = await guarded.victim("news")
    async with guarded.session.post(guarded.api_url + PUBLISH[0], json=PUBLISH[1], headers=basic("writer")) as resp:
        assert (await resp.json())["r"] == {"s": 1, "f": 0}
    assert (await victim.receive(timeout=5)).data == "forged"
    api = await guarded.api_ws(basic("admin"))
    assert (await call(api, "mesh.send", {"c": cid, "d": "to you"}))["E"] is None
    assert (await victim.receive(timeout=5)).data == "to you"
    assert (await call(api, "conn.call", {"c": cid, "f": "set_context_value", "a": ["uid", "1001"]}))["E"] is None
    await send_op(victim, "context")
    assert await receive_json(victim) == {"context": {"uid": "1001"}}


async def test_healthz_is_open_for_load_balancers(guarded):
    resp = await guarded.get("/healthz")
    assert resp.status == 200


async def test_replaced_access_settings_apply_to_the_next_request(guarded):
    """A reload replaces settings.access; the middleware reads it per request."""
    assert (await guarded.get("/v1/stats")).status == 401
    guarded.engine.settings.access = AccessSettings()
    assert (await guarded.get("/v1/stats")).status == 200
    viewer = next(u for u in parse_settings({"access": {"users": USERS}}).access.users if u.username == "viewer")
    guarded.engine.settings.access = AccessSettings((dataclasses.replace(viewer, roles=frozenset({"write"})),))
    assert (await guarded.get("/v1/stats", basic("viewer"))).status == 403
    assert (await guarded.post(*PUBLISH, basic("viewer"))).status == 200


# -- logs -----------------------------------------------------------------------------------------------


async def test_refusals_log_the_user_and_address_never_the_password(guarded, caplog):
    tried = "my-Guess-0042"
    with caplog.at_level(logging.DEBUG):
        await guarded.post(*PUBLISH, basic("admin", tried))
        await guarded.post(*PUBLISH, basic("viewer"))
        await guarded.post(*PUBLISH, basic("remote"))
        await guarded.post(*PUBLISH, basic("writer"))  # allowed
    text = caplog.text
    assert "'admin'" in text and "127.0.0.1" in text
    assert "'viewer'" in text and "'remote'" in text
    for secret in (tried, *PASSWORDS.values()):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode()[:12] not in text
    # The settings' repr (in a debugger, a crash report) leaves them out too.
    assert not any(secret in repr(guarded.engine.settings) for secret in PASSWORDS.values())


@pytest.mark.parametrize("bind, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_an_open_api_on_a_public_address_warns_at_start_up(tmp_path, session, caplog, bind, warned):
    with caplog.at_level(logging.WARNING, logger="connmix.engine"):
        running = await start_guarded(tmp_path, session, users=[], bind=bind)
    try:
        warnings = [r.getMessage() for r in caplog.records if "access.users" in r.getMessage()]
        assert len(warnings) == (1 if warned else 0), warnings
    finally:
        await running.engine.stop()


async def test_users_on_a_public_address_do_not_warn(tmp_path, session, caplog):
    with caplog.at_level(logging.WARNING, logger="connmix.engine"):
        running = await start_guarded(tmp_path, session, bind="0.0.0.0")
    try:
        assert not [r for r in caplog.records if "access.users" in r.getMessage()]
    finally:
        await running.engine.stop()


async def test_refused_callers_do_not_disturb_other_connections(guarded):
    victim, cid = await guarded.victim("news")
    api = await guarded.api_ws(basic("admin"))
    for _ in range(20):
        assert (await guarded.post(*PUBLISH, basic("admin", "nope"))).status == 401
    assert error_code(await call(api, "mesh.send", {"c": "1", "d": "x"})) == 401  # the API's own 401: no client
    assert (await call(api, "mesh.send", {"c": cid, "d": "still here"}))["E"] is None
    assert (await victim.receive(timeout=5)).data == "still here"


# -- the client library ------------------------------------------------------------------------------


def with_userinfo(url: str, username: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{quote(username, safe='')}:{quote(PASSWORDS[username], safe='')}@{rest}"


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("username", ["writer", "émile"])
async def test_client_credentials_as_options_or_in_the_url(guarded, transport, username):
    victim, _ = await guarded.victim("news")
    as_options = AsyncClient(guarded.api_url, transport=transport, username=username, password=PASSWORDS[username])
    in_url = AsyncClient(with_userinfo(guarded.api_url, username), transport=transport)
    for client in (as_options, in_url):
        async with client:
            assert (await client.publish("news", "hi")).delivered == 1
        assert (await victim.receive(timeout=5)).data == "hi"


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("credentials, status", [
    ({}, 401), ({"username": "writer", "password": "wrong"}, 401), ({"username": "viewer"}, 403),
    ({"username": "remote"}, 403),
])
async def test_client_refused_raises_access_denied_with_the_status(guarded, transport, credentials, status):
    if credentials and "password" not in credentials:
        credentials = {**credentials, "password": PASSWORDS[credentials["username"]]}
    async with AsyncClient(guarded.api_url, transport=transport, **credentials) as client:
        with pytest.raises(AccessDenied) as refused:
            await client.publish("news", "forged")
    assert refused.value.status == status and isinstance(refused.value, TransportError)
    assert str(status) in str(refused.value)
    assert "password" not in credentials or credentials["password"] not in str(refused.value)


async def test_sync_client_credentials_in_the_url(guarded):
    def backend_code():
        with Client(with_userinfo(guarded.api_url, "writer")) as client:
            published = client.publish("nobody", "x")
        with Client(guarded.api_url) as client:
            with pytest.raises(AccessDenied) as refused:
                client.publish("nobody", "x")
        return published.delivered, refused.value.status

    assert await asyncio.to_thread(backend_code) == (0, 401)  # outside this loop, where the engine runs


def test_client_credentials_given_twice_are_a_value_error():
    with pytest.raises(ValueError):
        AsyncClient("http://a:b@127.0.0.1:1", username="a", password="b")
    with pytest.raises(ValueError):
        Consumer("http://127.0.0.1:1", ["t"], username="a", password="b", auth=("a", "b"))


async def test_consumer_with_credentials_consumes_and_without_is_refused_at_once(guarded):
    victim, _ = await guarded.victim()
    refused = Consumer(guarded.api_url, ["orders"], username="viewer", password=PASSWORDS["viewer"])
    with pytest.raises(AccessDenied) as denied:
        async with asyncio.timeout(10):  # hang guard: a refusal must end the iteration, not retry forever
            async for _ in refused:
                pass
    await refused.close()
    assert denied.value.status == 403 and refused.reconnects == 0
    async with Consumer(with_userinfo(guarded.api_url, "writer"), ["orders"]) as consumer:
        await asyncio.wait_for(consumer.wait_attached(), 10)
        assert (await push(victim, "orders", "order 1"))["err"] is False
        event = await asyncio.wait_for(consumer.__anext__(), 10)
        assert event.data == "order 1"


async def test_ipv6_callers_match_exact_ipv6_hosts(tmp_path, session):
    users = [{"username": "v6", "password": "pw-v6", "roles": ["read"], "host": "0:0:0:0:0:0:0:1"},
             {"username": "v4", "password": "pw-v4", "roles": ["read"], "host": "127.0.0.1"}]
    try:
        running = await start_guarded(tmp_path, session, users=users, bind="::1")
    except Exception as exc:  # no IPv6 loopback on this machine
        pytest.skip(f"cannot listen on ::1: {exc}")
    try:
        url = f"http://[::1]:{running.engine.api_port}/v1/stats"
        for headers, status in ((basic("v6", "pw-v6"), 200), (basic("v4", "pw-v4"), 403), (basic("v6", "nope"), 401)):
            async with session.get(url, headers=headers) as resp:
                assert resp.status == status, headers
    finally:
        await running.engine.stop()
