"""CONNMIX's API error codes (SPEC sections 5 and 6), shared by the engine's
API and the client library."""

INVALID_ARGUMENT = 101
CONSUME_FAILED = 201
ALREADY_CONSUMED = 202
UNPOP_FAILED = 203
CALL_FAILED = 301
SEND_FAILED = 401
