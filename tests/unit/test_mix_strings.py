"""mix.str_split (Go strings.Split), mix.log and the mix_* globals, mix.server.option."""
from __future__ import annotations

import logging

import pytest

from tests.luahelp import make_lua


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


SPLITS = [
    # (s, sep, Go's strings.Split(s, sep))
    ("@user", "@", ["", "user"]),
    ("", "@", [""]),
    ("abc", "", ["a", "b", "c"]),
    ("", "", {}),  # Go: an empty slice; in Lua an empty table
    ("a@@b", "@", ["a", "", "b"]),
    ("no-sep", "@", ["no-sep"]),
    ("a@", "@", ["a", ""]),
    ("@", "@", ["", ""]),
    ("user:1001", ":", ["user", "1001"]),
    ("a::b::c", "::", ["a", "b", "c"]),
    ("a::", "::", ["a", ""]),
    ("x→y→z", "→", ["x", "y", "z"]),  # a multi-byte separator
    ("héllo", "", ["h", "é", "l", "l", "o"]),  # "" splits into characters
    ("世界😀", "", ["世", "界", "😀"]),
    ("aaa", "aa", ["", "a"]),
]


@pytest.mark.parametrize("s, sep, expected", SPLITS)
def test_str_split_is_go_strings_split(lua, s, sep, expected):
    encoded = expected if isinstance(expected, dict) else [part.encode() for part in expected]
    assert lua.run("return mix.str_split(...)", s.encode(), sep.encode()) == (encoded, None)


def test_str_split_result_is_one_based_with_getn(lua):
    assert lua.execute('local t = mix.str_split("@user", "@") return table.getn(t), t[1], t[2]') \
        == (2, b"", b"user")


def test_str_split_invalid_utf8_bytes_are_pieces_of_their_own(lua):
    assert lua.run('return mix.str_split("a\\255b", "")') == ([b"a", b"\xff", b"b"], None)


def test_str_split_numbers_convert_like_lua(lua):
    assert lua.run("return mix.str_split(1001, 0)") == ([b"1", b"", b"1"], None)


@pytest.mark.parametrize("args, n, kind", [
    ('nil, "@"', 1, "nil"), ('{}, "@"', 1, "table"), ('"a", nil', 2, "nil"), ('"a", true', 2, "boolean"),
])
def test_str_split_bad_argument_is_nil_err(lua, args, n, kind):
    assert lua.execute(f"return mix.str_split({args})") == (
        None, f"bad argument #{n} to 'str_split' (string expected, got {kind})".encode())


# -- mix.log ---------------------------------------------------------------------

LOG_CALLS = [
    ("mix.log(mix.DEBUG, 'd')", logging.DEBUG, "d"),
    ("mix.log(mix.INFO, 'i')", logging.INFO, "i"),
    ("mix.log(mix.WARN, 'w')", logging.WARNING, "w"),
    ("mix.log(mix.ERROR, 'e')", logging.ERROR, "e"),
    ("mix_log(mix_DEBUG, 'gd')", logging.DEBUG, "gd"),
    ("mix_log(mix_INFO, 'gi')", logging.INFO, "gi"),
    ("mix_log(mix_WARN, 'gw')", logging.WARNING, "gw"),
    ("mix_log(mix_ERROR, 'ge')", logging.ERROR, "ge"),
    ("mix.log('ERROR', 'upper')", logging.ERROR, "upper"),
    ("mix.log('nonsense', 'unknown level')", logging.INFO, "unknown level"),
    ("mix.log(nil, 'no level')", logging.INFO, "no level"),
    ("mix.log(mix.INFO, 42)", logging.INFO, "42"),
    ("mix.log(mix.INFO, nil)", logging.INFO, "nil"),
    ("mix.log(mix.INFO, true)", logging.INFO, "true"),
    ("mix.log(mix.INFO, 'h\\195\\169', 'extra', 'args')", logging.INFO, "hé"),
]


@pytest.mark.parametrize("call, level, text", LOG_CALLS)
def test_log_levels(lua, caplog, call, level, text):
    with caplog.at_level(logging.DEBUG, logger="connmix.lua"):
        assert lua.execute(f"return {call}") is True
    records = [r for r in caplog.records if r.name == "connmix.lua"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(level, f"[entry.lua] {text}")]


def test_log_is_filtered_by_level(lua, caplog):
    with caplog.at_level(logging.WARNING, logger="connmix.lua"):
        lua.execute("mix.log(mix.DEBUG, 'hidden') mix.log(mix.INFO, 'hidden') mix.log(mix.WARN, 'shown')")
    assert [r.getMessage() for r in caplog.records if r.name == "connmix.lua"] == ["[entry.lua] shown"]


def test_level_constants(lua):
    assert lua.execute("return mix.DEBUG, mix.INFO, mix.WARN, mix.ERROR") == (b"debug", b"info", b"warn", b"error")
    assert lua.execute("return mix_DEBUG == mix.DEBUG and mix_INFO == mix.INFO and mix_WARN == mix.WARN "
                       "and mix_ERROR == mix.ERROR and mix_log == mix.log") is True


# -- mix.server.option -----------------------------------------------------------------

OPTIONS = {"path": "/chat", "limit": 3, "flag": True, "list": [1, 2]}


@pytest.mark.parametrize("name, expected", [
    ('"path"', b"/chat"), ('"limit"', 3), ('"flag"', True), ('"list"', [1, 2]),
    ('"absent"', None), ("nil", None), ("{}", None),
])
def test_server_option(tmp_path, name, expected):
    lua = make_lua(tmp_path, options=OPTIONS)
    assert lua.run(f"return mix.server.option({name})") == (expected,)


# -- bytes and the Lua standard library this runtime promises (SPEC 3) ---------------

@pytest.mark.parametrize("source, expected", [
    ("return table.getn({1, 2, 3})", 3),
    ("return unpack({4, 5})", (4, 5)),
    ("return bit.band(0xff, 0x0f)", 15),
    ("return bit.bor(1, 2)", 3),
    ("return #'h\\195\\169'", 3),  # strings are bytes
])
def test_lua_5_1_with_bitop(lua, source, expected):
    assert lua.execute(source) == expected
