"""The API's request shapes, shared by HTTP and the WebSocket API:
validation of params and CONNMIX's error codes."""
from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from ..codes import (  # noqa: F401  (re-exported)
    ALREADY_CONSUMED, CALL_FAILED, CONSUME_FAILED, INVALID_ARGUMENT, SEND_FAILED, UNPOP_FAILED)
from ..conn import PayloadError
from ..ids import MAX_ID


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"c": self.code, "m": self.message}


def invalid(message: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, message)


def params_object(params: Any) -> dict:
    if not isinstance(params, dict):
        raise invalid("params must be a JSON object")
    return params


def channel_param(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("c must be a non-empty string (channel)")
    return value


def client_id_param(value: Any) -> str:
    """A client id in ``c``: a string, or a JSON integer as CONNMIX's PHP
    client sends it. orjson reads integers exactly (a float could not hold a
    19-digit id), so only a true int is taken: 1.5e18 or true is refused."""
    if type(value) is int and 0 <= value <= MAX_ID:
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise invalid("c must be a client id: a non-empty string or a non-negative JSON integer below 2^63")


def delivery(params: Any, target: Callable[[Any], str]) -> tuple[str, bytes, bool]:
    """Validate {c, d, t} of publish/send: (target, payload bytes, binary)."""
    if not isinstance(params, dict):
        raise invalid("params must be a JSON object")
    name = target(params.get("c"))
    data = params.get("d")
    if not isinstance(data, str):
        raise invalid("d must be a string")
    kind = params.get("t", "text")
    if kind in (None, "", "text"):
        return name, data.encode(), False
    if kind != "binary":
        raise invalid("t must be \"text\" or \"binary\"")
    try:
        return name, base64.b64decode(data, validate=True), True
    except (binascii.Error, ValueError):
        raise invalid("d must be base64 when t is \"binary\"") from None


async def publish(mesh, params: Any) -> dict[str, int]:
    channel, payload, binary = delivery(params, channel_param)
    try:
        delivered, failed = await mesh.publish(channel, payload, binary)
    except PayloadError as exc:  # too big, or text that is not UTF-8: nobody got it
        raise invalid(str(exc)) from None
    return {"s": delivered, "f": failed}


async def send(mesh, params: Any) -> dict[str, bool]:
    client_id, payload, binary = delivery(params, client_id_param)
    try:
        sent = await mesh.send(client_id, payload, binary)
    except PayloadError as exc:
        raise invalid(str(exc)) from None
    if not sent:
        raise ApiError(SEND_FAILED, f"send failed: client {client_id} not found or closed")
    return {"s": True}
