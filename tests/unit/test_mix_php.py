"""mix.php_pack / mix.php_unpack through Lua: PHP's documented examples,
every format code, repeat counts, names, errors and the limits of Lua numbers.
(tests/unit/test_php_vs_php.py compares thousands of generated cases with php.)"""
from __future__ import annotations

import struct

import pytest

from tests.luahelp import make_lua


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


# -- pack -------------------------------------------------------------------------

PACK = [
    # (format, Lua argument list, expected bytes as hex)
    ("nvc*", "0x1234, 0x5678, 65, 66", "123478564142"),  # php.net's pack example
    ("C4", "65, 66, 67, 68", "41424344"),
    ("CCxxCC", "65, 66, 67, 68", "414200004344"),
    ("a5", '"ab"', "6162000000"),
    ("A5", '"ab"', "6162202020"),
    ("Z5", '"ab"', "6162000000"),
    ("Z2", '"ab"', "6100"),  # Z always ends in NUL
    ("Z*", '"ab"', "616200"),
    ("a*", '"ab"', "6162"),
    ("a1", '"abc"', "61"),
    ("H*", '"5065726c"', "5065726c"),  # "Perl"
    ("H3", '"abc"', "abc0"),
    ("h3", '"abc"', "ba0c"),
    ("c", "-1", "ff"),
    ("C", "256", "00"),  # only the low byte
    ("s", "-2", "feff"),
    ("S", "65535", "ffff"),
    ("n", "0x1234", "1234"),
    ("v", "0x1234", "3412"),
    ("i", "-1", "ffffffff"),
    ("I", "1", "01000000"),
    ("l", "-2", "feffffff"),
    ("L", "1", "01000000"),
    ("N", "0x01020304", "01020304"),
    ("V", "0x01020304", "04030201"),
    ("q", "-2", "feffffffffffffff"),
    ("Q", "1", "0100000000000000"),
    ("J", "1", "0000000000000001"),
    ("P", "1", "0100000000000000"),
    ("f", "1.5", "0000c03f"),
    ("g", "1.5", "0000c03f"),
    ("G", "1.5", "3fc00000"),
    ("d", "1.5", "000000000000f83f"),
    ("e", "1.5", "000000000000f83f"),
    ("E", "1.5", "3ff8000000000000"),
    ("x2", "", "0000"),
    ("CCX", "1, 2", "01"),  # X backs up one byte
    ("C@4", "1", "01000000"),  # @ NUL-fills to an absolute position
    ("a4X2a1", '"abcd", "z"', "61627a"),
    ("C*", "", ""),
    ("", "", ""),
    # PHP's conversions of the values
    ("N", '"12abc"', "0000000c"),
    ("N", '"1e3"', "000003e8"),
    ("N", '"abc"', "00000000"),
    ("C", "3.7", "03"),
    ("C", "true", "01"),
    ("N", "nil", "00000000"),
    ("a*", "1.5", "312e35"),
    ("a*", "42", "3432"),
    ("a*", "true", "31"),
    ("a*", "false", ""),
]


@pytest.mark.parametrize("fmt, args, expected", PACK)
def test_pack(lua, fmt, args, expected):
    call = f'mix.php_pack("{fmt}"{", " if args else ""}{args})'
    assert lua.execute(f"return {call}") == (bytes.fromhex(expected), None)


@pytest.mark.parametrize("fmt, args, message", [
    ("y", "1", "Type y: unknown format code"),
    ("N/N", "1, 2", "Type /: unknown format code"),  # pack has no '/' separator
    ("N2", "1", "Type N: too few arguments"),
    ("a", "", "Type a: not enough arguments"),
    ("CN", "1", "Type N: too few arguments"),
])
def test_pack_error_is_nil_err(lua, fmt, args, message):
    call = f'mix.php_pack("{fmt}"{", " if args else ""}{args})'
    assert lua.execute(f"return {call}") == (None, f"php_pack: {message}".encode())


def test_pack_unused_arguments_are_ignored_like_php(lua):
    assert lua.execute('return mix.php_pack("C", 1, 2, 3)') == (b"\x01", None)


def test_pack_bounds_its_result(lua):
    assert lua.execute('return mix.php_pack("x999999999")') == (
        None, b"php_pack: Type x: result larger than 67108864 bytes")


@pytest.mark.parametrize("call, message", [
    ("mix.php_pack()", "bad argument #1 to 'php_pack' (format string expected, got nil)"),
    ('mix.php_pack("N", {})',
     "bad argument #2 to 'php_pack' (number, string, boolean or nil expected, got table)"),
    ('mix.php_pack("CC", 1, print)',
     "bad argument #3 to 'php_pack' (number, string, boolean or nil expected, got function)"),
    ('mix.php_unpack("N")', "bad argument #2 to 'php_unpack' (string expected, got nil)"),
    ('mix.php_unpack(nil, "abc")', "bad argument #1 to 'php_unpack' (format string expected, got nil)"),
])
def test_wrong_argument_type_is_nil_err(lua, call, message):
    assert lua.execute(f"return {call}") == (None, message.encode())


# -- unpack ---------------------------------------------------------------------------

UNPACK = [
    # (format, data, expected as convert.from_lua gives it: keys 1..n -> list)
    ("cchars/nint", b"\x04\x00\xa0\x00", {"chars": 4, "int": 160}),  # php.net's examples
    ("c2chars/nint", b"\x04\x00\xa0\x00", {"chars1": 4, "chars2": 0, "int": 40960}),
    ("c2/n", b"\x04\x00\xa0\x00", [40960, 0]),  # unnamed fields restart at 1 and overwrite
    ("Nlen/a*body", b"\0\0\0\x05hello", {"len": 5, "body": b"hello"}),
    ("C*", b"abc", [97, 98, 99]),
    ("C*c", b"ab", {"c1": 97, "c2": 98}),
    ("C2", b"ab", [97, 98]),
    ("C0", b"ab", {}),
    ("C*", b"", {}),
    ("a3x/A3y/Z*z", b"a\0 b  c\0d", {"x": b"a\0 ", "y": b"b", "z": b"c"}),
    ("a*", b"", [b""]),
    ("H*", b"\x12\x34", [b"1234"]),
    ("h*", b"\x12\x34", [b"2143"]),
    ("H3", b"\x12\x34", [b"123"]),
    ("csigned/Cunsigned", b"\xff\xff", {"signed": -1, "unsigned": 255}),
    ("ssigned/Sunsigned", b"\xfe\xff\xfe\xff", {"signed": -2, "unsigned": 65534}),
    ("nbig/vlittle", b"\x12\x34\x12\x34", {"big": 0x1234, "little": 0x3412}),
    ("isigned/Iunsigned", b"\xff" * 8, {"signed": -1, "unsigned": 2**32 - 1}),
    ("lsigned/Lunsigned/Nbig/Vlittle", b"\xff\xff\xff\xff" * 2 + b"\x01\x02\x03\x04" * 2,
     {"signed": -1, "unsigned": 2**32 - 1, "big": 0x01020304, "little": 0x04030201}),
    ("qbig/Jsmall", b"\xfe" + b"\xff" * 7 + b"\0" * 7 + b"\x01", {"big": -2, "small": 1}),
    ("Qall/Pone", b"\xff" * 8 + b"\x01" + b"\0" * 7, {"all": -1, "one": 1}),  # PHP ints are signed
    ("f/g/G", struct.pack("<ff", 1.5, -2.0) + struct.pack(">f", 0.25), [0.25]),  # unnamed: the last wins
    # a count of 1 keeps the bare name; more numbers it from 1
    ("d1x/ey/E2z", struct.pack("<dd", 1.5, -2.0) + struct.pack(">dd", 0.25, 8.0),
     {"x": 1.5, "y": -2.0, "z1": 0.25, "z2": 8.0}),
    ("C/X/C", b"ab", [97]),  # X steps back one byte
    ("x/C", b"ab", [98]),
    ("@2/C", b"abc", [99]),
    ("Cfirst/@0/Csecond", b"ab", {"first": 97, "second": 98}),  # "@0" moves nothing in PHP
    ("C/", b"a", [97]),
]


@pytest.mark.parametrize("fmt, data, expected", UNPACK)
def test_unpack(lua, fmt, data, expected):
    assert lua.run("return mix.php_unpack(...)", fmt.encode(), data) == (expected, None)


def test_unpack_mixes_names_and_numbers_like_php(lua):
    source = 'local t = mix.php_unpack("Cfoo/C/C", "\\1\\2\\3") return t.foo, t[1], t[2], t["1"]'
    assert lua.execute(source) == (1, 3, None, None)


def test_unpack_numeric_names_become_number_keys(lua):
    # PHP turns "-1" into the integer key -1 but keeps "01" a string.
    source = 'local t = mix.php_unpack("C-1/C01x/Cname", "abc") return t[-1], t.x, t.name'
    assert lua.execute(source) == (97, 98, 99)


@pytest.mark.parametrize("fmt, data, message", [
    ("N", b"ab", "Type N: not enough input, need 4, have 2"),
    ("C2", b"a", "Type C: not enough input, need 1, have 0"),
    ("a5", b"ab", "Type a: not enough input, need 5, have 2"),
    ("Nlen/a*body", b"\0\0", "Type N: not enough input, need 4, have 2"),
    ("x3", b"ab", "Type x: not enough input, need 1, have 0"),
    ("y", b"ab", "Invalid format type y"),
    ("C//C", b"ab", "Invalid format type /"),
])
def test_unpack_error_is_nil_err(lua, fmt, data, message):
    expected = (None, f"php_unpack: {message}".encode())
    assert lua.run("return mix.php_unpack(...)", fmt.encode(), data) == expected


# -- round trips and Lua numbers -------------------------------------------------------------


@pytest.mark.parametrize("code, value", [
    ("c", -128), ("C", 255), ("s", -32768), ("S", 65535), ("n", 65535), ("v", 65535),
    ("l", -2**31), ("L", 2**32 - 1), ("N", 2**32 - 1), ("V", 2**32 - 1),
    ("q", -2**53), ("J", 2**53), ("P", 2**53), ("Q", 123456789012345),
    ("d", 0.1), ("e", -1e300), ("E", 2.5e-300), ("f", 0.5), ("g", -1024.0), ("G", 3.0),
])
def test_round_trip_through_lua(lua, code, value):
    source = "local code, v = ... local t = mix.php_unpack(code .. 'v', mix.php_pack(code, v)) return t.v"
    assert lua.execute(source, code.encode(), value) == value


def test_64_bit_values_above_2_53_lose_precision_in_lua(lua):
    # Lua numbers are doubles: 2^53 + 1 cannot exist in Lua, the packed bytes
    # are those of 2^53. Values that fit a double survive exactly.
    assert lua.execute('return mix.php_pack("J", 2^53 + 1)') == ((2**53).to_bytes(8, "big"), None)
    assert lua.execute('return mix.php_unpack("J", "\\0\\32\\0\\0\\0\\0\\0\\1")[1]') == 2**53
    # 2^63 does not fit PHP's signed 64 bits: as in PHP, a float wraps around.
    assert lua.execute('return mix.php_pack("J", 2^63)') == (b"\x80" + b"\0" * 7, None)


def test_float_code_rounds_to_single_precision(lua):
    assert lua.execute('local t = mix.php_unpack("gv", mix.php_pack("g", 0.1)) return t.v') \
        == struct.unpack("<f", struct.pack("<f", 0.1))[0]
