"""The article's business API, as a small aiohttp app on 127.0.0.1:8000.

POST /websocket_auth   {"token": "..."} -> {"uid": 1001}       (401 for an unknown token)
POST /send_message     {"uid": 1001, "msg": "Hello,World!"}    -> pushes to user:<uid>
                       through the engine's POST /v1/mesh/publish, like the article's curl
"""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

from aiohttp import ClientSession, web

# Demo users: a real system looks the token up in its session store.
TOKENS = {"***": 1001, "token-1001": 1001, "token-1002": 1002}
ENGINE_API = "http://127.0.0.1:6789"
# The article's Lua sends '{"token:"' .. token .. '"}', which is not JSON;
# accept that shape too so the article's script works unchanged.
CONFIG = web.AppKey("config", dict)
_ARTICLE_BODY = re.compile(r'^\{"token:"(.*)"\}$', re.S)


def token_of(body: bytes) -> str | None:
    """The token from a JSON body, a form body, or the article's literal body."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("token"), str):
            return data["token"]
    except ValueError:
        pass
    match = _ARTICLE_BODY.match(text)
    if match:
        return match.group(1)
    form = parse_qs(text)
    return form["token"][0] if "token" in form else None


async def websocket_auth(request: web.Request) -> web.Response:
    delay = request.app[CONFIG]["auth_delay"]
    if delay:  # tests use this to show a slow auth API does not reorder messages
        import asyncio
        await asyncio.sleep(delay)
    uid = TOKENS.get(token_of(await request.read()) or "")
    if uid is None:
        return web.json_response({"error": "invalid token"}, status=401)
    return web.json_response({"uid": uid})


async def send_message(request: web.Request) -> web.Response:
    try:
        data = await request.json()
        uid, msg = int(data["uid"]), str(data["msg"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": "expected {\"uid\": <int>, \"msg\": <string>}"}, status=400)
    event = json.dumps({"event": "@user", "data": {"uid": uid, "msg": msg}}, separators=(",", ":"))
    api = request.app[CONFIG]["engine_api"]
    async with ClientSession() as session:
        async with session.post(f"{api}/v1/mesh/publish", json={"c": f"user:{uid}", "d": event}) as resp:
            result = await resp.json()
    return web.json_response(result)


def make_app(auth_delay: float = 0, engine_api: str = ENGINE_API) -> web.Application:
    app = web.Application()
    app[CONFIG] = {"auth_delay": auth_delay, "engine_api": engine_api}
    app.router.add_post("/websocket_auth", websocket_auth)
    app.router.add_post("/send_message", send_message)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=8000)
