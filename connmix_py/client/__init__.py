"""A Python client for backends: publish, send and conn.call over HTTP or the
WebSocket API, and a Consumer of the topics the Lua scripts push to.

    from connmix_py.client import AsyncClient, Client, Consumer, ApiError
"""
from .client import AsyncClient, Client, Published
from .consumer import Consumer, QueueEvent
from .errors import (ALREADY_CONSUMED, CALL_FAILED, CONSUME_FAILED, INVALID_ARGUMENT, SEND_FAILED,
                     UNPOP_FAILED, AccessDenied, ApiError, ConnmixError, TransportError)

__all__ = [
    "AsyncClient", "Client", "Published", "Consumer", "QueueEvent",
    "ConnmixError", "ApiError", "TransportError", "AccessDenied",
    "INVALID_ARGUMENT", "CONSUME_FAILED", "ALREADY_CONSUMED", "UNPOP_FAILED", "CALL_FAILED", "SEND_FAILED",
]
