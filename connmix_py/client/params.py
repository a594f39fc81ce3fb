"""Request params of the API methods, from Python values."""
from __future__ import annotations

import base64
from typing import Any

import orjson


def delivery(target: str, data: Any) -> dict[str, str]:
    """{c, d, t} of publish and send. str -> a text frame; bytes -> a binary
    frame (base64 on the wire); anything else -> its JSON as a text frame."""
    if isinstance(data, str):
        return {"c": target, "d": data, "t": "text"}
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {"c": target, "d": base64.b64encode(data).decode(), "t": "binary"}
    return {"c": target, "d": orjson.dumps(data).decode(), "t": "text"}


def conn_call(client_id: str, function: str, args: tuple) -> dict[str, Any]:
    return {"c": client_id, "f": function, "a": list(args)}


def auth_headers(auth: tuple[str, str] | None) -> dict[str, str]:
    """HTTP basic auth for access.users (on every request and the upgrade)."""
    if not auth:
        return {}
    user, password = auth
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def api_base(url: str) -> str:
    """The API's http(s) base URL from http://, https://, ws:// or wss://."""
    url = url.rstrip("/")
    if url.endswith("/ws/v1"):
        url = url[: -len("/ws/v1")]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://"):]
    if url.startswith("wss://"):
        return "https://" + url[len("wss://"):]
    if not url.startswith(("http://", "https://")):
        return "http://" + url
    return url
