"""The client's errors: one base class, and the engine's answer codes."""
from __future__ import annotations

from ..codes import (  # noqa: F401  (re-exported)
    ALREADY_CONSUMED, CALL_FAILED, CONSUME_FAILED, INVALID_ARGUMENT, SEND_FAILED, UNPOP_FAILED)


class ConnmixError(Exception):
    """Every error this client raises."""


class ApiError(ConnmixError):
    """The engine answered with an error: ``code`` is the API's code
    (101 invalid argument, 201/202/203 queue, 301 conn.call, 401 send)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransportError(ConnmixError):
    """No answer from the engine: it cannot be reached, the connection was
    lost before the reply (the request may or may not have run), the
    request timed out, or an HTTP status came back instead of an API reply
    (``status``; 401 and 403 are AccessDenied)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AccessDenied(TransportError):
    """access.users refused the request (``status`` 401: no or wrong
    credentials; 403: the user lacks the role or may not connect from this
    host). The request did not run; retrying with the same credentials
    cannot help."""


ACCESS_STATUSES = (401, 403)


def refused(message: str, status: int | None) -> TransportError:
    """The error for an HTTP status (or None) where a reply was expected."""
    if status in ACCESS_STATUSES:
        return AccessDenied(message, status)
    return TransportError(message, status)


def result_of(reply: dict) -> dict:
    """The ``r`` of an API reply; raises ApiError for an ``E``."""
    error = reply.get("E")
    if error:
        raise ApiError(error.get("c", 0), error.get("m", ""))
    return reply.get("r")
