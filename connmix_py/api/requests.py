"""The API's request shapes, shared by HTTP and the WebSocket API:
validation of params and CONNMIX's error codes."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from ..codes import (  # noqa: F401  (re-exported)
    ALREADY_CONSUMED, CALL_FAILED, CONSUME_FAILED, INVALID_ARGUMENT, SEND_FAILED, UNPOP_FAILED)
from ..conn import PayloadError
from . import schema


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


def checked(shape: dict, params: Any) -> dict:
    """params checked against a schema.py request shape: each property's
    value (its default when absent), or 101 naming the first field wrong."""
    params = params_object(params)
    values = {}
    for name, rule in shape["properties"].items():
        if name not in params and name not in shape["required"]:
            values[name] = rule.get("default")
            continue
        value = params.get(name)
        if not schema.matches(rule, value):
            raise invalid(f"{name} must be {rule['description']}")
        values[name] = value
    return values


def channel_param(value: Any) -> str:
    """A channel name alone (the console's inspector), checked as publish's ``c``."""
    if not schema.matches(schema.CHANNEL, value):
        raise invalid(f"c must be {schema.CHANNEL['description']}")
    return value


def client_id(value: str | int) -> str:
    """A checked client id as the hub keys it: CONNMIX's PHP client sends a
    JSON integer (orjson reads it exactly, a float could not hold 19 digits)."""
    return str(value)


def delivery(shape: dict, params: Any) -> tuple[str, bytes, bool]:
    """Validate {c, d, t} of publish/send: (target, payload bytes, binary)."""
    if type(params) is dict:  # the usual text message, valid for both shapes: no schema walk
        name, data, kind = params.get("c"), params.get("d"), params.get("t")
        if type(name) is str and name and type(data) is str and (kind is None or kind == "text" or kind == ""):
            return name, data.encode(), False
    values = checked(shape, params)
    name, data = client_id(values["c"]), values["d"]
    if values["t"] != "binary":
        return name, data.encode(), False
    try:
        return name, base64.b64decode(data, validate=True), True
    except (binascii.Error, ValueError):
        raise invalid("d must be base64 when t is \"binary\"") from None


async def publish(mesh, params: Any) -> dict[str, int]:
    channel, payload, binary = delivery(schema.PUBLISH, params)
    try:
        delivered, failed = await mesh.publish(channel, payload, binary)
    except PayloadError as exc:  # too big, or text that is not UTF-8: nobody got it
        raise invalid(str(exc)) from None
    return {"s": delivered, "f": failed}


async def send(mesh, params: Any) -> dict[str, bool]:
    target, payload, binary = delivery(schema.SEND, params)
    try:
        sent = await mesh.send(target, payload, binary)
    except PayloadError as exc:
        raise invalid(str(exc)) from None
    if not sent:
        raise ApiError(SEND_FAILED, f"send failed: client {target} not found or closed")
    return {"s": True}
