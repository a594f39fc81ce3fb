"""The HTTP API's contract in one place: the request shapes as JSON-Schema
dicts, which requests.py validates with (``matches``), and the OpenAPI
document built from them (``openapi``, served at /v1/openapi.json). A rule
changed here changes both, so the document cannot drift from the checks.

Each field's ``description`` is also its error message: a value that does
not match gives 101 ``"<field> must be <description>"``.
"""
from __future__ import annotations

from typing import Any

from ..ids import MAX_ID

CHANNEL = {"type": "string", "minLength": 1, "description": "a non-empty string (channel)"}
CLIENT_ID = {
    "anyOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0, "maximum": MAX_ID}],
    "description": "a client id: a non-empty string or a non-negative JSON integer below 2^63",
}
DATA = {"type": "string", "description": "a string"}
# Absent, null and "" mean text, as CONNMIX's clients send them.
FRAME_TYPE = {"enum": ["text", "binary", "", None], "default": "text", "description": "\"text\" or \"binary\""}
CALL_FUNCTION = {"enum": ["subscribe", "unsubscribe", "set_context", "set_context_value"],
                 "description": "one of subscribe, unsubscribe, set_context, set_context_value"}
# The arguments' shape depends on f: conn_call.py checks it (101 with the reason).
CALL_ARGUMENTS = {"type": "array", "default": [], "description": (
    "an array of arguments: channels for subscribe/unsubscribe, [object] for set_context, "
    "[key, value] for set_context_value")}


def _params(required: list[str], **properties: dict) -> dict:
    return {"type": "object", "required": required, "properties": properties,
            "description": "a JSON object"}


PUBLISH = _params(["c", "d"], c=CHANNEL, d=DATA, t=FRAME_TYPE)
SEND = _params(["c", "d"], c=CLIENT_ID, d=DATA, t=FRAME_TYPE)
CONN_CALL = _params(["c", "f"], c=CLIENT_ID, f=CALL_FUNCTION, a=CALL_ARGUMENTS)


# -- checking a value against a schema (the subset used above) -----------------------

_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    # JSON integers only: orjson reads 5.0 as a float and true as a bool, both refused.
    "integer": lambda v: type(v) is int,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def matches(schema: dict, value: Any) -> bool:
    """The value's own shape (an object's properties are checked one by one by the caller)."""
    if "anyOf" in schema and not any(matches(option, value) for option in schema["anyOf"]):
        return False
    if "enum" in schema and not any(value == allowed and type(value) is type(allowed)
                                    for allowed in schema["enum"]):
        return False
    if "type" in schema and not _TYPES[schema["type"]](value):
        return False
    if "minLength" in schema and len(value) < schema["minLength"]:
        return False
    if "minimum" in schema and value < schema["minimum"]:
        return False
    return not ("maximum" in schema and value > schema["maximum"])


# -- the OpenAPI document -------------------------------------------------------------

def _json_content(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _object(**properties: dict) -> dict:
    return {"type": "object", "required": list(properties), "properties": properties}


ERROR = _object(c={"type": "integer", "description": "CONNMIX error code (101 invalid argument, 401, 301...)"},
                m={"type": "string"})
STRING = {"type": "string"}
REFUSAL = _json_content(_object(error=STRING))
ACCESS_RESPONSES = {
    "401": {"description": "access.users is set and the credentials are missing or wrong", **REFUSAL},
    "403": {"description": "the user may not connect from this host or lacks the role", **REFUSAL},
}


def _api_reply(result: dict) -> dict:
    """CONNMIX's envelope, always HTTP 200: {"E": null, "r": result} or {"E": {"c", "m"}}."""
    ok = {"type": "object", "required": ["E", "r"], "properties": {"E": {"type": "null"}, "r": result}}
    failed = {"type": "object", "required": ["E"], "properties": {"E": ERROR}}
    return {"200": {"description": "the result, or the error with its CONNMIX code",
                    **_json_content({"oneOf": [ok, failed]})}, **ACCESS_RESPONSES}


def _call(summary: str, params: dict, result: dict) -> dict:
    return {"post": {"summary": summary, "requestBody": {"required": True, **_json_content(params)},
                     "responses": _api_reply(result)}}


def _get(summary: str, responses: dict, guarded: bool = True) -> dict:
    return {"get": {"summary": summary, "responses": {**responses, **(ACCESS_RESPONSES if guarded else {})},
                    **({} if guarded else {"security": []})}}


def _ok(description: str, schema: dict) -> dict:
    return {"200": {"description": description, **_json_content(schema)}}


def openapi(version: str) -> dict:
    counts = {"type": "integer", "minimum": 0}
    ready = _object(status={"enum": ["ready"]})
    not_ready = _object(status={"enum": ["not ready"]}, reasons={"type": "array", "items": STRING})
    return {
        "openapi": "3.1.0",
        "info": {"title": "connmix-py API", "version": version,
                 "description": "The apiServer's HTTP API (CONNMIX's, plus conn.call, health and metrics)."},
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                                     "description": "only when access.users is set"}}},
        "security": [{"basic": []}, {}],
        "paths": {
            "/v1/mesh/publish": _call("Publish to every subscriber of a channel", PUBLISH,
                                      _object(s=counts, f=counts)),
            "/v1/mesh/send": _call("Send to one client", SEND, _object(s={"enum": [True]})),
            "/v1/conn/call": _call("Run a connection method on one client", CONN_CALL, _object(s={"enum": [True]})),
            "/v1/stats": _get("Connections, channels, subscriptions of this node", _ok("the figures", {
                "type": "object", "required": ["E", "r"],
                "properties": {"E": {"type": "null"}, "r": _object(connections=counts, channels=counts,
                                                                    subscriptions=counts)}})),
            "/version": _get("The API versions (discovery)", _ok("versions", _object(
                apis={"type": "array", "items": STRING}))),
            "/v1/nodes": _get("Where each node's apiServer is (discovery): this node, or every node of the grid",
                              {**_ok("the nodes", _object(
                                  nodes={"type": "array", "items": _object(api_server=STRING, host=STRING)})),
                               "503": {"description": "a grid node whose broker cannot be read", **REFUSAL}}),
            "/metrics": _get("Prometheus metrics", {"200": {"description": "Prometheus text format",
                                                            "content": {"text/plain": {"schema": STRING}}}}),
            "/healthz": _get("Alive: the process answers", _ok("alive", _object(status={"enum": ["ok"]})),
                             guarded=False),
            "/readyz": _get("Ready for traffic", {**_ok("ready", ready), "503": {
                "description": "stopping, or a server not listening", **_json_content(not_ready)}}, guarded=False),
            "/v1/openapi.json": _get("This document", _ok("the OpenAPI document", {"type": "object"})),
        },
    }
