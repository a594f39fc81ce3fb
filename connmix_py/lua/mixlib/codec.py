"""mix.base64_encode/decode, mix.md5/sha1 (hex and raw), mix.bytes_tostring."""
from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from ..convert import lua_type
from .values import bad_argument, fail, lua_string

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_NEWLINES = b"\r\n"


class Base64Error(ValueError):
    """Go's base64.CorruptInputError: the offset of the first bad input byte."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"illegal base64 data at input byte {offset}")


def _skip_newlines(src: bytes, i: int) -> int:
    while i < len(src) and src[i] in _NEWLINES:
        i += 1
    return i


def _go_decode(src: bytes) -> bytes:
    """base64.StdEncoding.DecodeString, ported quantum by quantum: padding is
    required, \\r and \\n are ignored anywhere, stray bits are allowed."""
    out = bytearray()
    i, n = 0, len(src)
    while True:
        quantum, count = [0, 0, 0, 0], 0
        while count < 4:
            if i == n:
                if count == 0:
                    return bytes(out)
                raise Base64Error(i - count)
            c = src[i]
            i += 1
            if c in _DECODE:
                quantum[count] = _DECODE[c]
                count += 1
                continue
            if c in _NEWLINES:
                continue
            if c != 0x3D or count < 2:  # not '=', or padding too early
                raise Base64Error(i - 1)
            if count == 2:  # "==" expected; the first '=' is read
                i = _skip_newlines(src, i)
                if i == n:
                    raise Base64Error(n)
                if src[i] != 0x3D:
                    raise Base64Error(i - 1)
                i += 1
            i = _skip_newlines(src, i)
            if i < n:
                raise Base64Error(i)
            break
        value = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += value.to_bytes(3, "big")[:count - 1]
        if count < 4:
            return bytes(out)


def base64_decode(text: bytes) -> bytes:
    """Standard alphabet, padded, like Go's StdEncoding. Raises Base64Error."""
    compact = text.translate(None, _NEWLINES)
    body = compact.rstrip(b"=")
    # Fast path in C for well-formed input: whole quanta, at most two trailing
    # '=' (binascii alone would accept "QUJD==", which Go rejects).
    if len(compact) % 4 == 0 and len(compact) - len(body) <= 2 and b"=" not in body:
        try:
            return binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            pass
    return _go_decode(text)


def bytes_from_table(table: Any) -> bytes:
    """{72, 105} -> b"Hi". Raises ValueError naming the first bad element."""
    items = list(table.items())
    data = bytearray(len(items))
    for key, value in items:
        if type(key) is not int or not 1 <= key <= len(items):
            raise ValueError("expects an array of byte values (keys 1..n)")
        if type(value) is not int or not 0 <= value <= 255:
            raise ValueError(f"element {key} is not a byte value (an integer 0..255)")
        data[key - 1] = value
    return bytes(data)


def bridge(vm) -> dict:
    # Extra arguments are ignored, as Lua does: mix.md5(mix.base64_decode(s))
    # passes decode's trailing nil err along.

    def string_function(name: str, apply):
        def call(data=None, *_ignored):
            payload = lua_string(data)
            if payload is None:
                return bad_argument(1, name, "string", data)
            return apply(payload), None
        return call

    def mix_base64_decode(text=None, *_ignored):
        payload = lua_string(text)
        if payload is None:
            return bad_argument(1, "base64_decode", "string", text)
        try:
            return base64_decode(payload), None
        except Base64Error as exc:
            return fail(f"base64_decode: {exc}")

    def mix_bytes_tostring(table=None, *_ignored):
        if lua_type(table) != "table":
            return bad_argument(1, "bytes_tostring", "table", table)
        try:
            return bytes_from_table(table), None
        except ValueError as exc:
            return fail(f"bytes_tostring: {exc}")

    return {
        "base64_encode": string_function("base64_encode", base64.b64encode),
        "base64_decode": mix_base64_decode,
        "md5": string_function("md5", lambda d: hashlib.md5(d).hexdigest().encode()),
        "sha1": string_function("sha1", lambda d: hashlib.sha1(d).hexdigest().encode()),
        "md5_bin": string_function("md5_bin", lambda d: hashlib.md5(d).digest()),
        "sha1_bin": string_function("sha1_bin", lambda d: hashlib.sha1(d).digest()),
        "bytes_tostring": mix_bytes_tostring,
    }
