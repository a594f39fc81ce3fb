"""Request params of the API methods, from Python values."""
from __future__ import annotations

import base64
from typing import Any

import orjson
import yarl


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


def endpoint(url: str, username: str | None = None, password: str | None = None,
             auth: tuple[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(the API's base URL without credentials, the headers that carry them).
    Credentials for access.users come from ``username``/``password``, from
    ``auth=(user, password)``, or from ``http://user:pass@host:port`` (percent-
    encoded); giving them two ways is a ValueError."""
    parsed = yarl.URL(api_base(url))
    given = [pair for pair in ((username, password), auth or (None, None), (parsed.user, parsed.password))
             if pair != (None, None)]
    if len(given) > 1:
        raise ValueError("credentials given twice: use username/password, auth or the URL's user:pass@")
    base = str(parsed.with_user(None)).rstrip("/")
    if not given:
        return base, {}
    user, secret = given[0]
    if not user or ":" in user:
        raise ValueError("username must be a non-empty string without ':'")
    token = base64.b64encode(f"{user}:{secret or ''}".encode()).decode()
    return base, {"Authorization": "Basic " + token}


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
