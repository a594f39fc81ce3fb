"""mix.base64_encode/decode, mix.md5/sha1(_bin), mix.bytes_tostring through Lua."""
from __future__ import annotations

import base64
import hashlib

import pytest

from tests.luahelp import make_lua


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


ALL_BYTES = bytes(range(256))

BASE64 = [
    # RFC 4648 test vectors, binary data, numbers converted like Lua's tostring
    (b"", b""), (b"f", b"Zg=="), (b"fo", b"Zm8="), (b"foo", b"Zm9v"), (b"foobar", b"Zm9vYmFy"),
    (b"\0\xff", b"AP8="), (b"\xfb\xff", b"+/8="), (ALL_BYTES, base64.b64encode(ALL_BYTES)),
]


@pytest.mark.parametrize("data, encoded", BASE64)
def test_base64_encode_is_standard_and_padded(lua, data, encoded):
    assert lua.run("return mix.base64_encode(...)", data) == (encoded, None)


@pytest.mark.parametrize("data, encoded", BASE64)
def test_base64_decode_inverts_encode(lua, data, encoded):
    assert lua.run("return mix.base64_decode(...)", encoded) == (data, None)


def test_base64_encode_number_converts_like_tostring(lua):
    assert lua.run("return mix.base64_encode(12)") == (b"MTI=", None)


@pytest.mark.parametrize("text, data", [
    (b"Zm9v\r\nYmFy", b"foobar"),  # Go ignores \r and \n anywhere
    (b"Zg=\n=", b"f"),
    (b"YR==", b"a"),  # stray bits in the last quantum are accepted, as in Go
])
def test_base64_decode_accepts_what_go_accepts(lua, text, data):
    assert lua.run("return mix.base64_decode(...)", text) == (data, None)


@pytest.mark.parametrize("text, offset", [
    (b"Zg", 0),           # padding is required
    (b"Zg=", 3),
    (b"Zm9v!", 4),        # not in the alphabet
    (b"-_8=", 0),         # the URL alphabet is not the standard one
    (b"Zg==Zg==", 4),     # data after padding
    (b"QUJD==", 4),
    (b"====", 0),
    (b"Z===", 1),
])
def test_base64_decode_invalid_is_nil_err(lua, text, offset):
    message = f"base64_decode: illegal base64 data at input byte {offset}".encode()
    assert lua.run("return mix.base64_decode(...)", text) == (None, message)


DIGESTS = [b"", b"abc", b"The quick brown fox jumps over the lazy dog", ALL_BYTES]


@pytest.mark.parametrize("data", DIGESTS)
@pytest.mark.parametrize("name", ["md5", "sha1"])
def test_hex_digest_is_lowercase_hex(lua, name, data):
    expected = hashlib.new(name, data).hexdigest().encode()
    assert lua.run(f"return mix.{name}(...)", data) == (expected, None)


@pytest.mark.parametrize("data", DIGESTS)
@pytest.mark.parametrize("name", ["md5", "sha1"])
def test_bin_digest_is_raw_bytes(lua, name, data):
    expected = hashlib.new(name, data).digest()
    assert lua.run(f"return mix.{name}_bin(...)", data) == (expected, None)


def test_known_digests(lua):
    assert lua.execute('return mix.md5(""), (mix.sha1("abc"))') == (
        b"d41d8cd98f00b204e9800998ecf8427e", b"a9993e364706816aba3e25717850c26c9cd0d89d")


def test_bin_and_hex_agree_inside_lua(lua):
    source = """
        local raw = mix.sha1_bin("abc")
        local hex = raw:gsub(".", function(c) return string.format("%02x", c:byte()) end)
        return #raw, hex == mix.sha1("abc")
    """
    assert lua.execute(source) == (20, True)


def test_extra_arguments_are_ignored_like_lua(lua):
    # base64_decode returns (s, nil); both go on to md5, as Lua passes them.
    expected = hashlib.md5(b"abc").hexdigest().encode()
    assert lua.execute('return (mix.md5(mix.base64_decode("YWJj")))') == expected


BYTES_TOSTRING = [
    ("{72, 105}", b"Hi"),
    ("{}", b""),
    ("{0, 255, 10}", b"\0\xff\n"),
    ("{72.0}", b"H"),  # an integral number is a byte
]


@pytest.mark.parametrize("table, expected", BYTES_TOSTRING)
def test_bytes_tostring(lua, table, expected):
    assert lua.run(f"return mix.bytes_tostring({table})") == (expected, None)


@pytest.mark.parametrize("table, message", [
    ("{256}", "element 1 is not a byte value (an integer 0..255)"),
    ("{72, -1}", "element 2 is not a byte value (an integer 0..255)"),
    ("{1.5}", "element 1 is not a byte value (an integer 0..255)"),
    ('{"72"}', "element 1 is not a byte value (an integer 0..255)"),
    ("{true}", "element 1 is not a byte value (an integer 0..255)"),
    ("{1, nil, 3}", "expects an array of byte values (keys 1..n)"),
    ("{a = 1}", "expects an array of byte values (keys 1..n)"),
])
def test_bytes_tostring_bad_values_are_nil_err(lua, table, message):
    assert lua.run(f"return mix.bytes_tostring({table})") == (None, f"bytes_tostring: {message}".encode())


@pytest.mark.parametrize("call, message", [
    ("mix.base64_encode()", "bad argument #1 to 'base64_encode' (string expected, got nil)"),
    ("mix.base64_decode({})", "bad argument #1 to 'base64_decode' (string expected, got table)"),
    ("mix.md5(true)", "bad argument #1 to 'md5' (string expected, got boolean)"),
    ("mix.sha1_bin(nil)", "bad argument #1 to 'sha1_bin' (string expected, got nil)"),
    ('mix.bytes_tostring("Hi")', "bad argument #1 to 'bytes_tostring' (table expected, got string)"),
])
def test_wrong_argument_type_is_nil_err(lua, call, message):
    assert lua.execute(f"return {call}") == (None, message.encode())
