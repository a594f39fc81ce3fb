"""mix.http.request against a real local HTTP server (SPEC section 4)."""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket

import aiohttp
import pytest
from aiohttp import web

from connmix_py.config import ConfigError, parse_settings
from tests.luahelp import EVAL_SCRIPT, NIL, ask

BOMB_SIZE = 64 * 1024 * 1024


class Backend:
    """A small HTTP server the Lua script calls; /held answers only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held_arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/echo", self.echo)
        self.app.router.add_get("/status/{code}", self.status)
        self.app.router.add_get("/cookies", self.cookies)
        self.app.router.add_get("/redirect", self.redirect)
        self.app.router.add_get("/held", self.held)
        self.app.router.add_get("/sized/{size}", self.sized)
        self.app.router.add_get("/chunked/{size}", self.chunked)
        self.app.router.add_get("/gzip/{size}", self.gzipped)
        self.app.router.add_get("/bomb", self.bomb)
        self.bomb_body = b""  # set by the bomb fixture
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        await self.runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "query": dict(request.query),
            "cookies": dict(request.cookies),
            "body": body.decode("latin-1"),
            "headers": {k: request.headers[k] for k in ("X-Custom", "Authorization") if k in request.headers},
        })

    async def status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def cookies(self, request: web.Request) -> web.Response:
        resp = web.Response(status=201, text="cookie body", headers={"X-Reply": "yes"})
        resp.set_cookie("session", "abc")
        resp.set_cookie("lang", "en")
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo?from=redirect")

    async def held(self, request: web.Request) -> web.Response:
        self.held_arrived.set()
        await self.release.wait()
        return web.Response(text="released")

    async def sized(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["size"]))

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        """No Content-Length: the size shows only while reading."""
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        left = int(request.match_info["size"])
        while left > 0:
            await resp.write(b"y" * min(left, 100_000))
            left -= 100_000
        await resp.write_eof()
        return resp

    async def gzipped(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"z" * int(request.match_info["size"]))
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def bomb(self, request: web.Request) -> web.Response:
        return web.Response(body=self.bomb_body, headers={"Content-Encoding": "gzip"})


@pytest.fixture
async def backend():
    server = Backend()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def ws(start_engine):
    engine = await start_engine(EVAL_SCRIPT)
    return await engine.connect()


def echo_call(url: str, method: str, opts: str) -> str:
    return (f'local r, err = mix.http.request("{method}", "{url}", {opts}) '
            'if not r then return "error", err end '
            'return r.status_code, (mix.json_decode(r.body))')


# -- request options ---------------------------------------------------------------

OPTIONS = [
    # (method, path, Lua opts, the part of /echo's reply it must show)
    ("GET", "/echo", "nil", {"method": "GET", "query": {}, "cookies": {}, "body": ""}),
    ("get", "/echo", "{}", {"method": "GET"}),
    ("PUT", "/echo", "{}", {"method": "PUT"}),
    ("DELETE", "/echo", "{}", {"method": "DELETE"}),
    ("patch", "/echo", '{body = "p"}', {"method": "PATCH", "body": "p"}),
    ("GET", "/echo", '{query = {a = "1", b = "x y&z", n = 5}}', {"query": {"a": "1", "b": "x y&z", "n": "5"}}),
    ("GET", "/echo?z=0", '{query = {a = "1"}}', {"query": {"z": "0", "a": "1"}}),
    ("GET", "/echo", '{cookies = {sid = "abc", theme = "dark"}}', {"cookies": {"sid": "abc", "theme": "dark"}}),
    ("GET", "/echo", '{headers = {Cookie = "a=1"}, cookies = {b = "2"}}', {"cookies": {"a": "1", "b": "2"}}),
    ("POST", "/echo", '{body = "raw body"}', {"method": "POST", "body": "raw body"}),
    ("POST", "/echo", '{body = "\\0\\255"}', {"body": "\x00\xff"}),
    ("POST", "/echo", '{body = mix.json_encode({uid = 1001})}', {"body": '{"uid":1001}'}),
    ("GET", "/echo", '{headers = {["X-Custom"] = "v1"}}', {"headers": {"X-Custom": "v1"}}),
    ("GET", "/echo", '{auth = {username = "user", password = "pa:ss"}}',
     {"headers": {"Authorization": "Basic " + base64.b64encode(b"user:pa:ss").decode()}}),
    ("GET", "/echo", '{auth = {username = "user"}}',
     {"headers": {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}}),
    ("GET", "/echo", '{headers = {Authorization = "Bearer t"}, auth = {username = "u", password = "p"}}',
     {"headers": {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}}),  # auth wins, as in Go
    ("GET", "/echo", "{timeout = 5}", {"method": "GET"}),
    ("GET", "/echo", "{timeout = 0.5}", {"method": "GET"}),
    ("GET", "/echo", '{timeout = "1s"}', {"method": "GET"}),
    ("GET", "/echo", '{timeout = "500ms"}', {"method": "GET"}),
    ("GET", "/echo", '{timeout = "1m30s"}', {"method": "GET"}),
    ("GET", "/echo", '{timeout = "1h"}', {"method": "GET"}),
]


@pytest.mark.parametrize("method, path, opts, expected", OPTIONS)
async def test_request_options(ws, backend, method, path, opts, expected):
    status, echo = await ask(ws, echo_call(backend.url(path), method, opts))
    assert status == 200
    assert {key: echo[key] for key in expected} == expected


# -- response fields -------------------------------------------------------------------

async def test_response_fields(ws, backend):
    url = backend.url("/cookies")
    result = await ask(ws, f'local r, err = mix.http.request("GET", "{url}") '
                           'return err, r.status_code, r.body, r.body_size, r.headers["X-Reply"], '
                           'r.headers["Content-Type"], r.cookies, r.url')
    assert result == [NIL, 201, "cookie body", 11, "yes", "text/plain; charset=utf-8",
                      {"session": "abc", "lang": "en"}, url]


async def test_body_size_counts_bytes(ws, backend):
    result = await ask(ws, f'local r = mix.http.request("POST", "{backend.url("/echo")}", '
                           '{body = "h\\195\\169"}) return r.body_size == #r.body, #r.body')
    assert result[0] is True and result[1] > 0


async def test_url_is_the_final_url_after_redirects(ws, backend):
    result = await ask(ws, f'local r = mix.http.request("GET", "{backend.url("/redirect")}") '
                           'return r.status_code, r.url, mix.json_decode(r.body).query')
    assert result == [200, backend.url("/echo?from=redirect"), {"from": "redirect"}]


@pytest.mark.parametrize("code", [204, 301, 404, 418, 500, 503])
async def test_non_2xx_is_not_an_error(ws, backend, code):
    # /status/301 carries no Location, so it is not followed
    result = await ask(ws, f'local r, err = mix.http.request("GET", "{backend.url(f"/status/{code}")}") '
                           'return err, r.status_code, r.body')
    assert result == [NIL, code, "" if code == 204 else f"status {code}"]


async def test_cookies_do_not_carry_over_between_requests(ws, backend):
    # Each request stands alone, as with Go's http.Client without a jar: a
    # cookie one user's request got must never go out with another's.
    set_url, echo_url = backend.url("/cookies", "localhost"), backend.url("/echo", "localhost")
    result = await ask(ws, f'local first = mix.http.request("GET", "{set_url}") '
                           f'local second = mix.http.request("GET", "{echo_url}") '
                           'return first.cookies.session, mix.json_decode(second.body).cookies')
    assert result == ["abc", {}]


# -- failures --------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_is_nil_err(ws):
    url = f"http://127.0.0.1:{closed_port()}/"
    value, err = await ask(ws, f'return mix.http.request("GET", "{url}")')
    assert value == NIL and isinstance(err, str) and url in err


@pytest.mark.parametrize("timeout", ["0.2", '"200ms"', '"0.2s"'])
async def test_timeout_is_nil_err(ws, backend, timeout):
    value, err = await ask(ws, f'return mix.http.request("GET", "{backend.url("/held")}", {{timeout = {timeout}}})')
    assert value == NIL and "timeout" in err


BAD_ARGUMENTS = [
    ("nil, URL", "bad argument #1"),
    ("{}, URL", "bad argument #1"),
    ('"GET", nil', "bad argument #2"),
    ('"GET", {}', "bad argument #2"),
    ('"GET", URL, "opts"', "bad argument #3"),
    ('"GET", URL, {query = {a = {}}}', "opts.query"),
    ('"GET", URL, {headers = {["X-A"] = true}}', "opts.headers"),
    ('"GET", URL, {cookies = 5}', "opts.cookies"),
    ('"GET", URL, {body = {}}', "opts.body"),
    ('"GET", URL, {timeout = "soon"}', "opts.timeout"),
    ('"GET", URL, {timeout = -1}', "opts.timeout"),
    ('"GET", URL, {timeout = 0}', "opts.timeout"),
    ('"GET", URL, {timeout = "5"}', "opts.timeout"),
    ('"GET", URL, {auth = "user:pass"}', "opts.auth"),
    ('"GET", URL, {auth = {password = "p"}}', "opts.auth"),
    ('"GET", URL, {auth = {username = "a:b", password = "p"}}', "opts.auth"),
    ('"GET", "not a url"', "not a url"),
    ('"GET", "ftp://127.0.0.1/x"', "ftp://127.0.0.1/x"),
    ('"BAD METHOD", URL', "BAD METHOD"),
]


@pytest.mark.parametrize("args, words", BAD_ARGUMENTS)
async def test_bad_arguments_are_nil_err_and_the_connection_goes_on(ws, backend, args, words):
    args = args.replace("URL", f'"{backend.url("/echo")}"')
    value, err = await ask(ws, f"return mix.http.request({args})")
    assert value == NIL and isinstance(err, str) and words in err
    assert await ask(ws, "return 'still served'") == ["still served"]


# -- never blocking others ----------------------------------------------------------------

async def test_a_waiting_request_does_not_block_other_connections(start_engine, backend):
    engine = await start_engine(EVAL_SCRIPT)
    waiting, other = await engine.connect(), await engine.connect()
    await waiting.send_str(f'return mix.http.request("GET", "{backend.url("/held")}").body')
    await asyncio.wait_for(backend.held_arrived.wait(), 5)
    # The held request is answered only after the other connection has been
    # served several times: the order of arrival proves nothing blocked.
    for i in range(3):
        assert await ask(other, f"return {i}") == [i]
    backend.release.set()
    msg = await waiting.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data) == ["released"]


async def test_many_connections_wait_at_once(start_engine, backend):
    engine = await start_engine(EVAL_SCRIPT)
    clients = [await engine.connect() for _ in range(5)]
    for ws in clients:
        await ws.send_str(f'return mix.http.request("GET", "{backend.url("/held")}").body')
    await asyncio.wait_for(backend.held_arrived.wait(), 5)
    backend.release.set()
    for ws in clients:
        msg = await ws.receive(timeout=5)
        assert json.loads(msg.data) == ["released"]


# -- response body limit (luavm.http.maxBodySize) -------------------------------------------

MAX_BODY = 1024 * 1024


@pytest.fixture
async def capped(start_engine):
    engine = await start_engine(EVAL_SCRIPT, luavm={"http": {"maxBodySize": MAX_BODY}})
    return await engine.connect()


def fetch_size(url: str) -> str:
    return (f'local r, err = mix.http.request("GET", "{url}") '
            'if not r then return "error", err end return r.body_size, #r.body')


@pytest.mark.parametrize("path", ["/sized", "/chunked", "/gzip"])
async def test_a_body_of_exactly_max_body_size_is_read(capped, backend, path):
    assert await ask(capped, fetch_size(backend.url(f"{path}/{MAX_BODY}"))) == [MAX_BODY, MAX_BODY]


@pytest.mark.parametrize("path", ["/sized", "/chunked", "/gzip"])
async def test_one_byte_over_max_body_size_is_nil_err(capped, backend, path):
    value, err = await ask(capped, fetch_size(backend.url(f"{path}/{MAX_BODY + 1}")))
    assert value == "error" and "maxBodySize" in err and str(MAX_BODY) in err
    assert await ask(capped, "return 'still served'") == ["still served"]


async def test_the_default_max_body_size_is_16_mb(ws, backend):
    limit = 16 * 1024 * 1024
    assert await ask(ws, fetch_size(backend.url(f"/sized/{limit}")), timeout=30) == [limit, limit]
    value, err = await ask(ws, fetch_size(backend.url(f"/chunked/{limit + 1}")), timeout=30)
    assert value == "error" and "maxBodySize" in err


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.fixture(scope="module")
def bomb_body() -> bytes:
    return gzip.compress(bytes(BOMB_SIZE), compresslevel=9)


async def test_a_gzip_bomb_stops_at_max_body_size(capped, backend, bomb_body):
    """64 MB of zeros in ~64 KB of gzip: inflating stops at the limit, so the
    engine's memory never grows by anything like the bomb's size."""
    backend.bomb_body = bomb_body
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the peak RSS count (Linux)
    before = peak_rss_kb()
    value, err = await ask(capped, fetch_size(backend.url("/bomb")), timeout=30)
    grown_mb = (peak_rss_kb() - before) / 1024
    assert value == "error" and "maxBodySize" in err
    assert grown_mb < BOMB_SIZE / (1024 * 1024) / 4, f"peak RSS grew {grown_mb:.0f} MB"
    assert await ask(capped, "return 'still served'") == ["still served"]


@pytest.mark.parametrize("value", [0, -1, "16MB", 1.5, True, None])
def test_a_bad_max_body_size_is_a_config_error(value):
    conf = {"engine": {"luavm": {"http": {"maxBodySize": value}}}}
    with pytest.raises(ConfigError, match=r"engine\.luavm\.http\.maxBodySize"):
        parse_settings(conf)


def test_max_body_size_is_read_from_the_yaml():
    settings = parse_settings({"engine": {"luavm": {"http": {"maxBodySize": 4096}}}})
    assert settings.luavm.http_max_body_size == 4096


async def test_head_of_a_large_resource_is_not_refused(capped, backend):
    # Content-Length names the GET body's size; a HEAD reply has no body.
    url = backend.url(f"/sized/{MAX_BODY * 2}")
    result = await ask(capped, f'local r, err = mix.http.request("HEAD", "{url}") '
                               'return err, r.status_code, r.body_size, r.headers["Content-Length"]')
    assert result == [NIL, 200, 0, str(MAX_BODY * 2)]
