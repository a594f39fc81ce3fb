"""mix.php_pack / mix.php_unpack: PHP's pack() and unpack().

The pure layer (``pack``, ``unpack``) follows PHP 8 on a 64-bit
little-endian machine (x86-64, arm64), read from ext/standard/pack.c and
checked against php-cli. Where PHP throws a ValueError or returns false we
raise ``PackError``; where PHP only warns (unused arguments, ``*`` on x/X/@,
an illegal hex digit, X or @ outside the string) we do what PHP does next,
silently.

Lua numbers are doubles: a q/Q/J/P value above 2^53 in magnitude loses
precision on its way to or from Lua (pack itself is exact for Python ints).
As in PHP, unpack returns Q/J/P values of 2^63 and above as negative numbers.
"""
from __future__ import annotations

import math
import re
import struct
from typing import Any, Iterator, Sequence

from ..convert import lua_type
from .values import bad_argument, fail, lua_string

INT_MAX = 2**31 - 1
LONG_MIN, LONG_MAX = -2**63, 2**63 - 1
# ours: PHP is bounded only by memory_limit; a script should not allocate more.
MAX_PACK_SIZE = 64 * 1024 * 1024
MAX_NAME_LENGTH = 200  # PHP truncates unpack names to 200 bytes
UNPACKED_VALUE_COST = 48  # bytes of Lua table an unpacked value takes at most (key and value)

# code -> (size in bytes, byte order, signed when unpacked)
INTEGER_CODES = {
    "c": (1, "little", True), "C": (1, "little", False),
    "s": (2, "little", True), "S": (2, "little", False),
    "n": (2, "big", False), "v": (2, "little", False),
    "i": (4, "little", True), "I": (4, "little", False),
    "l": (4, "little", True), "L": (4, "little", False),
    "N": (4, "big", False), "V": (4, "little", False),
    "q": (8, "little", True), "Q": (8, "little", True),
    "J": (8, "big", True), "P": (8, "little", True),
}
FLOAT_CODES = {"f": "<f", "g": "<f", "G": ">f", "d": "<d", "e": "<d", "E": ">d"}
STRING_CODES = "aAZhH"
POSITION_CODES = "xX@"

_NUMERIC_PREFIX = re.compile(
    rb"[ \t\n\r\v\f]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_CANONICAL_INT = re.compile(rb"-?[1-9][0-9]*|0")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEX_OR_ZERO = bytes(c if c in _HEX_DIGITS else 0x30 for c in range(256))
_SWAP_NIBBLES = bytes((b & 0xF) << 4 | b >> 4 for b in range(256))


class PackError(ValueError):
    """The format or the values cannot be packed/unpacked (PHP would throw or return false)."""


# -- PHP's conversions of a value ---------------------------------------------------


def _string_number(text: bytes) -> int | float:
    """The leading number of a PHP string ("12abc" -> 12, "1.5e3" -> 1500.0, "x" -> 0)."""
    match = _NUMERIC_PREFIX.match(text)
    if not match:
        return 0
    number = match.group(1)
    if b"." in number or b"e" in number or b"E" in number:
        return float(number)
    value = int(number)
    return value if LONG_MIN <= value <= LONG_MAX else float(number)


def _capped_long(value: float) -> int:
    """zend_dval_to_lval_cap: numeric strings saturate instead of wrapping."""
    if not math.isfinite(value):
        return 0
    if value >= 2.0**63:
        return LONG_MAX
    if value < -2.0**63:
        return LONG_MIN
    return int(value)


def to_long(value: Any) -> int:
    """zval_get_long; the result may exceed 64 bits and is wrapped when packed."""
    if value is None:
        return 0
    kind = type(value)
    if kind is bool or kind is int:
        return int(value)
    if kind is float:
        # Floats wrap modulo 2^64 like PHP 8 on 64-bit; infinities and NaN give 0.
        return int(value) if math.isfinite(value) else 0
    if kind is bytes:
        number = _string_number(value)
        return number if type(number) is int else _capped_long(number)
    raise PackError(f"cannot pack a {kind.__name__}")


def to_double(value: Any) -> float:
    """zval_get_double."""
    if value is None:
        return 0.0
    kind = type(value)
    if kind is bool or kind is int or kind is float:
        return float(value)
    if kind is bytes:
        return float(_string_number(value))
    raise PackError(f"cannot pack a {kind.__name__}")


def php_float_text(value: float) -> bytes:
    """A float as PHP prints it (precision 14): 1.5, 1.0E+25, 1.0E-5, -0, INF, NAN."""
    if math.isnan(value):
        return b"NAN"
    if math.isinf(value):
        return b"INF" if value > 0 else b"-INF"
    text = "%.14G" % value
    if "E" not in text:
        return text.encode()
    mantissa, exponent = text.split("E")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{exponent[0]}{int(exponent[1:])}".encode()


def to_php_string(value: Any) -> bytes:
    """zval_get_string."""
    if value is None or value is False:
        return b""
    if value is True:
        return b"1"
    kind = type(value)
    if kind is bytes:
        return value
    if kind is int:
        return str(value).encode()
    if kind is float:
        return php_float_text(value)
    raise PackError(f"cannot pack a {kind.__name__}")


# -- pack ---------------------------------------------------------------------------------


def _read_count(fmt: bytes, i: int) -> tuple[int, int]:
    """The repeat count after a code: (count, next index); -1 is '*', 1 when absent."""
    if i < len(fmt):
        if fmt[i] == 0x2A:  # '*'
            return -1, i + 1
        start = i
        while i < len(fmt) and 0x30 <= fmt[i] <= 0x39:
            i += 1
        if i > start:
            return int(fmt[start:i]), i
    return 1, i


def _plan(fmt: bytes, args: Sequence[Any]) -> list[tuple[str, int]]:
    """PHP's first pass: resolve '*' counts and check that the values suffice."""
    steps: list[tuple[str, int]] = []
    current, i = 0, 0
    while i < len(fmt):
        code = chr(fmt[i])
        count, i = _read_count(fmt, i + 1)
        if count > INT_MAX:
            raise PackError(f"Type {code}: integer overflow in format string")
        if code in POSITION_CODES:
            count = 1 if count < 0 else count
        elif code in STRING_CODES:
            if current >= len(args):
                raise PackError(f"Type {code}: not enough arguments")
            if count < 0:
                count = len(to_php_string(args[current])) + (code == "Z")
            current += 1
        elif code in INTEGER_CODES or code in FLOAT_CODES:
            if count < 0:
                count = len(args) - current
            current += count
            if current > len(args):
                raise PackError(f"Type {code}: too few arguments")
        else:
            raise PackError(f"Type {code}: unknown format code")
        steps.append((code, count))
    return steps


def _hex_nibbles(text: bytes, count: int, low_first: bool) -> bytes:
    """h/H: `count` hex digits into bytes; an illegal digit counts as 0 (PHP warns)."""
    digits = text[:count].translate(_HEX_OR_ZERO) + b"0" * (count % 2)
    packed = bytes.fromhex(digits.decode("ascii"))
    return packed.translate(_SWAP_NIBBLES) if low_first else packed


def _pack_float(layout: str, value: float) -> bytes:
    try:
        return struct.pack(layout, value)
    except OverflowError:  # a double beyond float range becomes infinity, as in C
        return struct.pack(layout, math.copysign(math.inf, value))


def pack(fmt: bytes, args: Sequence[Any]) -> bytes:
    """PHP pack(fmt, ...args). Values: None, bool, int, float, bytes."""
    steps = _plan(fmt, args)
    out = bytearray()
    pos, current = 0, 0

    def put(data: bytes) -> None:
        nonlocal pos
        out[pos:pos + len(data)] = data
        pos += len(data)

    def room(code: str, size: int) -> None:
        if pos + size > MAX_PACK_SIZE:
            raise PackError(f"Type {code}: result larger than {MAX_PACK_SIZE} bytes")

    for code, count in steps:
        if code in "aAZ":
            room(code, count)
            text = to_php_string(args[current])
            current += 1
            copied = text[:count - 1 if code == "Z" else count] if count else b""
            put(copied + (b" " if code == "A" else b"\0") * (count - len(copied)))
        elif code in "hH":
            text = to_php_string(args[current])
            current += 1
            digits = min(count, len(text))
            room(code, (digits + 1) // 2)
            put(_hex_nibbles(text, digits, low_first=code == "h"))
        elif code in INTEGER_CODES:
            size, order, _ = INTEGER_CODES[code]
            room(code, size * count)
            mask = (1 << (8 * size)) - 1
            for value in args[current:current + count]:
                put((to_long(value) & mask).to_bytes(size, order))
            current += count
        elif code in FLOAT_CODES:
            layout = FLOAT_CODES[code]
            room(code, struct.calcsize(layout) * count)
            for value in args[current:current + count]:
                put(_pack_float(layout, to_double(value)))
            current += count
        elif code == "x":
            room(code, count)
            put(bytes(count))
        elif code == "X":
            pos = max(0, pos - count)
        else:  # '@': NUL-fill forward, or move back
            room(code, count - pos)
            if count > pos:
                put(bytes(count - pos))
            pos = count
    return bytes(out[:pos])


# -- unpack -------------------------------------------------------------------------------


def array_key(name: bytes) -> int | bytes:
    """PHP array keys: a canonical decimal integer string becomes an integer."""
    if _CANONICAL_INT.fullmatch(name) and name != b"-0":
        value = int(name)
        if LONG_MIN <= value <= LONG_MAX:
            return value
    return name


def _parse_unpack_format(fmt: bytes) -> Iterator[tuple[str, int, bytes]]:
    """"Nlen/a*body" -> ("N", 1, b"len"), ("a", -1, b"body"); lazily, as PHP
    reports the first problem in format order, bad counts included."""
    i = 0
    while i < len(fmt):
        code = chr(fmt[i])
        count, i = _read_count(fmt, i + 1)
        if count > INT_MAX:
            raise PackError(f"Type {code}: integer overflow")
        end = fmt.find(b"/", i)
        end = len(fmt) if end < 0 else end
        yield code, count, fmt[i:end][:MAX_NAME_LENGTH]
        i = end + 1


def _unhex(chunk: bytes, digits: int, low_first: bool) -> bytes:
    if low_first:
        chunk = chunk.translate(_SWAP_NIBBLES)
    return chunk.hex()[:digits].encode()


def _decode(code: str, chunk: bytes) -> int | float:
    if code in INTEGER_CODES:
        _, order, signed = INTEGER_CODES[code]
        return int.from_bytes(chunk, order, signed=signed)
    return struct.unpack(FLOAT_CODES[code], chunk)[0]


def unpack(fmt: bytes, data: bytes) -> dict[int | bytes, int | float | bytes]:
    """PHP unpack(fmt, data): an ordered map of PHP array keys to values."""
    result: dict[int | bytes, int | float | bytes] = {}
    pos, end = 0, len(data)

    def short(code: str, size: int) -> PackError:
        return PackError(f"Type {code}: not enough input, need {size}, have {end - pos}")

    for code, count, name in _parse_unpack_format(fmt):
        if code == "X":  # moves back; never below the start
            pos = max(0, pos - (1 if count < 0 else count))
            continue
        if code == "@":  # absolute position; "@0" is a no-op in PHP
            if count and count <= end:
                pos = max(0, count)
            continue
        if code == "x":
            if count < 0:
                pos = end
            elif pos + count > end:
                pos = end  # PHP skips byte by byte and fails on the first missing one
                raise short(code, 1)
            else:
                pos += count
            continue
        if code in STRING_CODES:
            size = count if code in "aAZ" or count <= 0 else (count + 1) // 2
            if size >= 0 and pos + size > end:
                raise short(code, size)
            available = end - pos if size < 0 else min(end - pos, size)
            chunk = data[pos:pos + available]
            key = array_key(name if name else b"1")
            if code == "a":
                result[key] = chunk
            elif code == "A":
                result[key] = chunk.rstrip(b"\0 \t\r\n")
            elif code == "Z":
                result[key] = chunk.split(b"\0", 1)[0]
            else:
                digits = 2 * available - (count % 2 if count > 0 and available else 0)
                result[key] = _unhex(chunk, digits, low_first=code == "h")
            # PHP advances by the bytes read, except h/H with '*' which step back one.
            pos = max(0, pos + (available if code in "aAZ" else size))
            continue
        if code in INTEGER_CODES:
            size = INTEGER_CODES[code][0]
        elif code in FLOAT_CODES:
            size = struct.calcsize(FLOAT_CODES[code])
        else:
            raise PackError(f"Invalid format type {code}")
        i = 0
        while i != count:
            if pos + size > end:
                if count < 0:
                    break
                raise short(code, size)
            key = name if count == 1 and name else name + str(i + 1).encode()
            result[array_key(key)] = _decode(code, data[pos:pos + size])
            pos += size
            i += 1
    return result


# -- the Lua bridge -------------------------------------------------------------------------


def bridge(vm) -> dict:
    to_lua = vm.to_lua

    def php_pack(fmt=None, *values):
        format_bytes = lua_string(fmt)
        if format_bytes is None:
            return bad_argument(1, "php_pack", "format string", fmt)
        for n, value in enumerate(values, 2):
            if lua_type(value) is not None:
                return bad_argument(n, "php_pack", "number, string, boolean or nil", value)
        try:
            return pack(format_bytes, values), None
        except PackError as exc:
            return fail(f"php_pack: {exc}")

    def php_unpack(fmt=None, data=None, *_ignored):
        format_bytes, payload = lua_string(fmt), lua_string(data)
        if format_bytes is None:
            return bad_argument(1, "php_unpack", "format string", fmt)
        if payload is None:
            return bad_argument(2, "php_unpack", "string", data)
        # Each value read takes at least one byte of data or one format code.
        refusal = vm.memory.refusal((len(payload) + len(format_bytes)) * UNPACKED_VALUE_COST, "php_unpack")
        if refusal:
            return fail(refusal)
        try:
            return to_lua(unpack(format_bytes, payload)), None
        except PackError as exc:
            return fail(f"php_unpack: {exc}")

    return {"php_pack": php_pack, "php_unpack": php_unpack}
