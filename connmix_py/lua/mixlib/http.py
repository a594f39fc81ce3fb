"""mix.http.request(method, url[, opts]): an HTTP client that never blocks
the event loop (the calling coroutine waits; other connections go on).

Like Go's http.Client without a cookie jar: each request stands alone,
redirects are followed, a non-2xx status is a response, not an error.
"""
from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from ...textproto import first_values
from ..convert import lua_type
from .values import bad_argument, fail, lua_string

DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_timeout(value: Any) -> float | None:
    """Seconds as a number, or a Go duration string like "1h", "1m30s", "500ms"."""
    if type(value) in (int, float) and value > 0:
        return float(value)
    if type(value) is bytes:
        text = value.decode("utf-8", "replace").strip()
        pos, total = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                return None
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos == len(text) and pos > 0 and total > 0:
            return total
    return None


def basic_auth(user: bytes, password: bytes) -> str:
    """The Authorization header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


def _without(headers: dict[str, str], name: str) -> tuple[dict[str, str], list[str]]:
    """headers without `name` (any case), and the values it had."""
    kept = {k: v for k, v in headers.items() if k.lower() != name}
    return kept, [v for k, v in headers.items() if k.lower() == name]


def _string_table(value: Any, what: str) -> dict[str, str] | str:
    """A Lua table of string -> string/number, or an error message."""
    if value is None:
        return {}
    if lua_type(value) != "table":
        return f"opts.{what} must be a table"
    out = {}
    for k, v in value.items():
        key, val = lua_string(k), lua_string(v)
        if key is None or val is None:
            return f"opts.{what} must map strings to strings"
        out[key.decode("utf-8", "replace")] = val.decode("utf-8", "replace")
    return out


# What stays as it is in a query string given as text: everything printable
# but space and "#" (which would end the query); "%" keeps escapes escaped.
_QUERY_KEPT = "!$%&'()*+,-./:;=?@[]^_`{|}~"


def with_raw_query(url: str, query: bytes) -> URL:
    """The url with its query replaced by `query`, sent as given (Go's
    URL.RawQuery = query, as CONNMIX does): no escape is decoded or redone."""
    base = URL(url).with_query(None).with_fragment(None)
    return URL(f"{base}?{quote(query, safe=_QUERY_KEPT)}", encoded=True)


@dataclass
class Request:
    method: str
    url: str | URL
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes | None
    timeout: float


def parse_request(method: Any, url: Any, opts: Any) -> Request | tuple[None, bytes]:
    """The Lua arguments as a Request, or the `nil, err` for a bad one."""
    verb, target = lua_string(method), lua_string(url)
    if not verb:
        return bad_argument(1, "request", "method string", method)
    if not target:
        return bad_argument(2, "request", "url string", url)
    if opts is not None and lua_type(opts) != "table":
        return bad_argument(3, "request", "table", opts)

    def get(key: bytes) -> Any:
        return opts[key] if opts is not None else None

    target_url: str | URL = target.decode("utf-8", "replace")
    raw_query = get(b"query")
    if type(raw_query) is bytes:  # the documented type: a URL-encoded string (a table is ours)
        try:
            target_url = with_raw_query(target_url, raw_query)
        except ValueError as exc:
            return fail(f"opts.query cannot be added to url {target_url!r}: {exc}")
        raw_query = None
    tables = {}
    for name, value in (("query", raw_query), ("cookies", get(b"cookies")), ("headers", get(b"headers"))):
        tables[name] = _string_table(value, name)
        if isinstance(tables[name], str):
            return fail(tables[name])
    body = get(b"body")
    if body is not None and lua_string(body) is None:
        return fail("opts.body must be a string")
    timeout = DEFAULT_TIMEOUT
    if get(b"timeout") is not None:
        timeout = parse_timeout(get(b"timeout"))
        if timeout is None:
            return fail('opts.timeout must be seconds or a duration like "30s"')
    headers = tables["headers"]
    if tables["cookies"]:
        # A Cookie header, not aiohttp's cookie jar: a jar keeps cookies
        # between the requests of different connections.
        headers, given = _without(headers, "cookie")
        pairs = "; ".join(f"{name}={value}" for name, value in tables["cookies"].items())
        headers["Cookie"] = "; ".join(given + [pairs])
    raw_auth = get(b"auth")
    if raw_auth is not None:
        if lua_type(raw_auth) != "table":
            return fail("opts.auth must be {username=..., password=...}")
        user, password = lua_string(raw_auth[b"username"]), lua_string(raw_auth[b"password"])
        if user is None or b":" in user:
            return fail("opts.auth.username must be a string without ':'")
        headers, _ = _without(headers, "authorization")  # like Go's SetBasicAuth, auth wins
        headers["Authorization"] = basic_auth(user, password or b"")
    return Request(verb.decode("ascii", "replace").upper(), target_url, tables["query"],
                   headers, lua_string(body) if body is not None else None, timeout)


class BodyTooLarge(Exception):
    """The response body (as sent, or decompressed) is over the limit."""


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decompressed, or BodyTooLarge once either count passes
    `limit`: refused up front by Content-Length, else stopped mid-stream
    (aiohttp inflates piece by piece as we read, so a gzip bomb stops here)."""
    has_body = resp.method != "HEAD" and resp.status not in (204, 304)  # else Content-Length is only a size
    if has_body and resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLarge
    parts, size = [], 0
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit or resp.content.total_raw_bytes > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


async def perform(session: aiohttp.ClientSession, req: Request,
                  max_body_size: int) -> tuple[dict | None, bytes | None]:
    """Send the request; (response table contents, None) or (None, err)."""
    try:
        async with session.request(
            req.method, req.url, params=req.query or None, headers=req.headers or None,
            data=req.body, timeout=aiohttp.ClientTimeout(total=req.timeout), allow_redirects=True,
        ) as resp:
            try:
                content = await read_body(resp, max_body_size)
            except BodyTooLarge:
                resp.close()  # drop the connection rather than drain the rest
                return fail(f'{req.method} "{req.url}": response body over luavm.http.maxBodySize '
                            f'({max_body_size} bytes)')
            return {
                "status_code": resp.status,
                "body": content,
                "body_size": len(content),
                "headers": first_values(resp.headers.items()),
                "cookies": {name: morsel.value for name, morsel in resp.cookies.items()},
                "url": str(resp.url),
            }, None
    except asyncio.TimeoutError:
        return fail(f'{req.method} "{req.url}": timeout after {req.timeout:g}s')
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return fail(f'{req.method} "{req.url}": {exc or type(exc).__name__}')


def bridge(vm) -> dict:
    to_lua = vm.to_lua
    max_body_size = vm.luavm.http_max_body_size

    def http_request(method=None, url=None, opts=None, *_):  # extra Lua arguments are ignored
        req = parse_request(method, url, opts)
        if type(req) is tuple:
            return req

        async def wait():
            result, err = await perform(vm.http_session(), req, max_body_size)
            return to_lua(result), err

        return wait, None

    return {"http_request": http_request}
