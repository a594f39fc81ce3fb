"""mix.queue.push(topic, data): hand work to backend consumers.

Each item records the client id of the connection whose callback pushed it
(the ``c`` of the queue.pop event), so a consumer can answer that client."""
from __future__ import annotations

from ...queue import QueueFull
from ..convert import ConversionError, from_lua
from .values import bad_argument, fail, lua_string


def _item(value):
    """Strings travel as text; tables as the JSON values they convert to."""
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    converted = from_lua(value)
    if isinstance(converted, (dict, list)):
        return _texts(converted)
    return converted


def _texts(value):
    if isinstance(value, dict):
        return {k: _texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v) for v in value]
    return value.decode("utf-8", "replace") if type(value) is bytes else value


def bridge(vm) -> dict:
    queues = vm.queues

    def queue_push(topic=None, data=None):
        name = lua_string(topic)
        if not name:
            return bad_argument(1, "push", "topic string", topic)
        if data is None:
            return bad_argument(2, "push", "string or table", data)
        try:
            item = _item(data)
        except ConversionError as exc:
            return fail(f"push: {exc}")
        current = vm.current
        client_id = current.client_id if current is not None else None
        try:
            return queues.push(name.decode("utf-8", "replace"), item, client_id), None
        except QueueFull as exc:
            return fail(str(exc))

    return {"queue_push": queue_push}
