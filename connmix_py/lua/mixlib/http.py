"""mix.http.request(method, url[, opts]): an HTTP client that never blocks
the event loop (the calling coroutine waits; other connections go on)."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from ..convert import lua_type
from .values import bad_argument, fail, lua_string

DEFAULT_TIMEOUT = 30.0
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


def canonical_header(name: str) -> str:
    """Go's textproto canonical form: content-type -> Content-Type."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


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


def bridge(vm) -> dict:
    to_lua = vm.to_lua

    def http_request(method=None, url=None, opts=None):
        verb, target = lua_string(method), lua_string(url)
        if not verb:
            return bad_argument(1, "request", "method string", method)
        if not target:
            return bad_argument(2, "request", "url string", url)
        if opts is not None and lua_type(opts) != "table":
            return bad_argument(3, "request", "table", opts)
        get = (lambda key: opts[key]) if opts is not None else (lambda key: None)
        parts = {}
        for name in ("query", "cookies", "headers"):
            parts[name] = _string_table(get(name.encode()), name)
            if isinstance(parts[name], str):
                return fail(parts[name])
        body = get(b"body")
        if body is not None and lua_string(body) is None:
            return fail("opts.body must be a string")
        timeout = DEFAULT_TIMEOUT
        if get(b"timeout") is not None:
            timeout = parse_timeout(get(b"timeout"))
            if timeout is None:
                return fail("opts.timeout must be seconds or a duration like \"30s\"")
        auth = None
        raw_auth = get(b"auth")
        if raw_auth is not None:
            if lua_type(raw_auth) != "table":
                return fail("opts.auth must be {username=..., password=...}")
            user, password = lua_string(raw_auth[b"username"]), lua_string(raw_auth[b"password"])
            auth = aiohttp.BasicAuth((user or b"").decode(), (password or b"").decode())
        verb_text = verb.decode("ascii", "replace").upper()
        url_text = target.decode("utf-8", "replace")

        async def perform():
            session = vm.http_session()
            try:
                async with session.request(
                    verb_text, url_text, params=parts["query"] or None,
                    cookies=parts["cookies"] or None, headers=parts["headers"] or None,
                    data=lua_string(body) if body is not None else None, auth=auth,
                    timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=True,
                ) as resp:
                    content = await resp.read()
                    headers: dict[str, str] = {}
                    for key, value in resp.headers.items():
                        headers.setdefault(canonical_header(key), value)
                    result = {
                        "status_code": resp.status,
                        "body": content,
                        "body_size": len(content),
                        "headers": headers,
                        "cookies": {name: morsel.value for name, morsel in resp.cookies.items()},
                        "url": str(resp.url),
                    }
            except asyncio.TimeoutError:
                return fail(f'{verb_text} "{url_text}": timeout after {timeout:g}s')
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return fail(f'{verb_text} "{url_text}": {exc or type(exc).__name__}')
            return to_lua(result), None

        return perform, None

    return {"http_request": http_request}
