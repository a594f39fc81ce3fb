"""mix.json_encode / mix.json_decode: SPEC section 4, value by value."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connmix_py.config import LuaVmSettings
from connmix_py.lua import convert
from connmix_py.lua.mixlib import json as json_lib
from tests.luahelp import make_lua


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


ENCODE = [
    # (Lua expression, exact JSON text)
    ('{a = {1, 2, {b = true}}, z = 1001}', b'{"a":[1,2,{"b":true}],"z":1001}'),
    ('{}', b'{}'),
    ('{list = {}, obj = {x = {}}}', b'{"list":{},"obj":{"x":{}}}'),
    ('{"x", "y", "z"}', b'["x","y","z"]'),
    ('{[1] = "a", [3] = "c"}', b'{"1":"a","3":"c"}'),  # not 1..n: an object
    ('{1, 2, name = "n"}', b'{"1":1,"2":2,"name":"n"}'),
    ('{[0] = "zero"}', b'{"0":"zero"}'),
    ('{[1.5] = 1}', b'{"1.5":1}'),
    ('{[true] = 1}', b'{"true":1}'),
    ('1001', b'1001'),
    ('2002 / 2', b'1001'),  # an integral double stays an integer
    ('-7', b'-7'),
    ('1.5', b'1.5'),
    ('0.1', b'0.1'),
    ('true', b'true'),
    ('false', b'false'),
    ('nil', b'null'),
    ('"plain"', b'"plain"'),
    ('"quote \\" and \\\\ and \\n"', b'"quote \\" and \\\\ and \\n"'),
    ('"h\\195\\169llo \\228\\184\\150\\231\\149\\140"', '"héllo 世界"'.encode()),
    ('{["ключ"] = "значение"}', '{"ключ":"значение"}'.encode()),
    ('"\\255"', '"\ufffd"'.encode()),  # invalid UTF-8 -> U+FFFD, as Go does
    # keys sorted byte-wise, as Go sorts map keys
    ('{b = 1, a = 2, B = 3, ["10"] = 4, ["9"] = 5}', b'{"10":4,"9":5,"B":3,"a":2,"b":1}'),
    ('{msg = "null"}', b'{"msg":"null"}'),
]


@pytest.mark.parametrize("expr, expected", ENCODE)
def test_json_encode(lua, expr, expected):
    assert lua.execute(f"return mix.json_encode({expr})") == (expected, None)


ENCODE_ERRORS = [
    ('(function() local t = {} t.self = t return t end)()', "cyclic"),
    ('(function() local t = {} t[1] = {t} return t end)()', "cyclic"),
    ('print', "function"),
    ('{f = print}', "function"),
    ('{co = coroutine.create(print)}', "cannot convert"),
    ('0/0', "NaN"),
    ('1/0', "infinity"),
    ('{x = {-1/0}}', "infinity"),
    ('{[print] = 1}', "key"),
    ('{[{}] = 1}', "key"),
]


@pytest.mark.parametrize("expr, word", ENCODE_ERRORS)
def test_json_encode_refuses_what_json_cannot_hold(lua, expr, word):
    value, err = lua.execute(f"return mix.json_encode({expr})")
    assert value is None
    assert type(err) is bytes and err.startswith(b"json_encode: ")
    assert word.encode() in err or (word == "cyclic" and b"nested too deeply" in err)


DECODE = [
    # (JSON text, Python value after from_lua)
    ('{"a":{"b":[1,2,3]},"c":"d"}', {"a": {"b": [1, 2, 3]}, "c": b"d"}),
    ('[]', {}),  # an empty table either way
    ('{}', {}),
    ('[10,20,30]', [10, 20, 30]),
    ('[[1],[2,[3]]]', [[1], [2, [3]]]),
    ('"h\\u00e9llo"', "héllo".encode()),
    ('"héllo 世界"', "héllo 世界".encode()),
    ('"\\ud83d\\ude00"', "😀".encode()),
    ('true', True),
    ('false', False),
    ('1001', 1001),
    ('-3', -3),
    ('2.5', 2.5),
    ('1e3', 1000),
    ('12345678901234567890', 12345678901234567890.0),  # beyond int64: a double
    ('{"a":null,"b":2}', {"b": 2}),  # null -> nil: the key is absent
    ('{"a":null}', {}),  # no key left: still a table, not a count of keys
    ('{}', {}),
    ('{"a":"b"}', {"a": b"b"}),
    ('{"op":"echo","data":"\u00e9 1"}', {"op": b"echo", "data": "é 1".encode()}),  # two strings: one tuple
    ('{"op":"echo","data":null}', {"op": b"echo"}),
    ('{"op":"echo","data":7}', {"op": b"echo", "data": 7}),
    ('{"1":"a"}', {"1": b"a"}),  # object keys stay strings
    # the same conversions inside containers (converted inline, not per value)
    ('[12345678901234567890,"x",{"a":null,"b":[true,"y"]}]', [12345678901234567890.0, b"x", {"b": [True, b"y"]}]),
]


@pytest.mark.parametrize("text, expected", DECODE)
def test_json_decode(lua, text, expected):
    assert lua.run("return mix.json_decode(...)", text.encode()) == (expected, None)


def test_json_decode_arrays_are_one_based(lua):
    assert lua.execute('local t = mix.json_decode("[\\"x\\",\\"y\\"]") return #t, t[1], t[2], t[0]') \
        == (2, b"x", b"y", None)


def test_json_decode_null_is_nil_without_error(lua):
    assert lua.execute('return mix.json_decode("null")') == (None, None)


def test_json_decode_null_in_array_leaves_a_hole_at_its_index(lua):
    assert lua.execute('local t = mix.json_decode("[1,null,3]") return t[1], t[2], t[3]') == (1, None, 3)


def as_read_back(value):
    """A decoded JSON value as from_lua reads its table back: no nulls, empty
    tables as {}, strings as bytes, integers past int64 as doubles."""
    if isinstance(value, dict):
        return {k: as_read_back(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [as_read_back(v) for v in value] or {}
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2 ** 63:
        return float(value)
    return value


@pytest.mark.parametrize("keys", [0, 1, 2, json_lib.PAIRS_MAX_KEYS, json_lib.PAIRS_MAX_KEYS + 1])
def test_json_decode_objects_below_and_past_the_pairs_limit_decode_alike(lua, keys):
    # Up to PAIRS_MAX_KEYS keys the table is built in Lua from keys and values, past it in Python.
    values = ['"s"', "null", "2", "-1.5", "true", "false", '{"in":[1,{"x":null}]}', "[]", "{}",
              "123456789012345678901234567890", '"\\u00e9\\u0000"']
    plain = keys - 2 if keys >= 2 else keys
    fields = [f'"k{i}":{values[i % len(values)]}' for i in range(plain)]
    if keys >= 2:  # a repeated key (the last one counts) and an empty one
        fields += ['"dup":1', '"dup":"last"', '"":0']
    text = ("{" + ",".join(fields) + "}").encode()
    assert len(orjson.loads(text)) == keys
    expected = as_read_back(orjson.loads(text))
    decoded = lua.run("local t, err = mix.json_decode(...) return t, err, getmetatable(t)", text)
    assert decoded == (expected, None, None)


def test_json_decode_refuses_when_lua_memory_is_full(tmp_path):
    lua = make_lua(tmp_path, luavm=LuaVmSettings(memory_budget=16))  # hard cap 48 MB
    # Kept strings until an allocation fails: memory is then at the cap, past its headroom.
    assert lua.execute("""
        kept = {}
        local ok = true
        while ok do
            ok = pcall(function() kept[#kept + 1] = string.rep(tostring(#kept), 64 * 1024 / 8, "-") end)
        end
        return #kept > 0""")
    assert lua.execute('return mix.json_decode(\'{"a":1,"b":2}\')') == (
        None, b"json_decode: the Lua memory budget is used up")
    # A plain object of strings (read in Lua, not by orjson) is refused alike.
    assert lua.execute('return mix.json_decode(\'{"a":"1","b":"2"}\')') == (
        None, b"json_decode: the Lua memory budget is used up")
    lua.execute("kept = nil collectgarbage()")
    assert lua.run('return mix.json_decode(\'{"a":1,"b":2}\')') == ({"a": 1, "b": 2}, None)
    assert lua.run('return mix.json_decode(\'{"a":"1","b":"2"}\')') == ({"a": b"1", "b": b"2"}, None)


def test_json_decode_integers_are_lua_integers(lua):
    # "1001" not "1001.0" when a script concatenates the number
    assert lua.execute('return "user:" .. mix.json_decode("{\\"uid\\":1001}").uid') == b"user:1001"


DECODE_ERRORS = [
    ("{bad", b"json_decode: "),
    ("", b"json_decode: "),
    ("[1,2", b"json_decode: "),
    ("{'a':1}", b"json_decode: "),
    ('"\\ud800"', b"json_decode: "),  # a lone surrogate is not text
    ("1e400", b"json_decode: "),
    ("[" * 100 + "]" * 100, b"json_decode: "),
]


@pytest.mark.parametrize("text, prefix", DECODE_ERRORS)
def test_json_decode_invalid_json_is_nil_err(lua, text, prefix):
    value, err = lua.execute("return mix.json_decode(...)", text.encode())
    assert value is None
    assert type(err) is bytes and err.startswith(prefix)


@pytest.mark.parametrize("arg, kind", [("nil", "nil"), ("{}", "table"), ("true", "boolean"),
                                       ("print", "function")])
def test_json_decode_non_string_is_nil_err(lua, arg, kind):
    assert lua.execute(f"return mix.json_decode({arg})") == (
        None, f"bad argument #1 to 'json_decode' (string expected, got {kind})".encode())


def test_json_decode_accepts_a_number_like_any_lua_string_function(lua):
    assert lua.execute("return mix.json_decode(42)") == (42, None)


ROUND_TRIPS = [
    '{uid = 1001, name = "Ann", tags = {"a", "b"}, nested = {ok = true, n = 2.5}}',
    '{"x", {y = {"z"}}, 3}',
    '{text = "h\\195\\169llo \\240\\159\\152\\128", empty = {}}',
    '{[1] = 1, [2] = 2, [10] = 10}',
]


@pytest.mark.parametrize("expr", ROUND_TRIPS)
def test_round_trip_lua_json_lua(lua, expr):
    source = f"local v = {expr} return v, mix.json_decode(mix.json_encode(v))"
    original, decoded, err = lua.run(source)
    assert err is None
    assert decoded == original


def test_encode_accepts_extra_arguments_like_lua_functions(lua):
    # json_encode(json_decode(s)) passes (value, nil): Lua ignores the extra.
    assert lua.execute('return mix.json_encode(mix.json_decode("[1]"))') == (b"[1]", None)


def test_a_table_shared_exponentially_is_refused_not_a_hang(lua, monkeypatch):
    # {t, t} nested 40 deep is 2^40 values as JSON: refused once the
    # conversion passes its bound (lowered here to keep the test quick).
    monkeypatch.setattr(convert, "MAX_VALUES", 10_000)
    value, err = lua.execute("local t = {} for i = 1, 40 do t = {t, t} end return mix.json_encode(t)")
    assert value is None and b"too large" in err
    assert lua.execute("local t = {} for i = 1, 9 do t = {t, t} end return #mix.json_encode(t)") == 2557


# Compact objects of plain ASCII strings are read in Lua (prelude.lua's
# plain_object), everything else by orjson: both must read any text alike.
PLAIN_OBJECTS = [
    '{"op":"echo","data":"00000001 00000000001234567890"}',
    '{"a":"b"}',
    '{"":""}',
    '{"dup":"first","dup":"last"}',
    '{"p":"!#$%&()*+,-./:;<=>?@[]^_`{|}~ 09AZaz"}',
    "{" + ",".join(f'"k{i}":"v{i}"' for i in range(40)) + "}",  # past PAIRS_MAX_KEYS
]
LEFT_TO_ORJSON = [
    '{"a":"b"} ',  # space after the object
    '{ "a":"b"}',
    '{"a" : "b"}',
    '{"a":"b", "c":"d"}',
    '{"a":"\\u00e9"}',  # an escape
    '{"a":"\\""}',
    '{"a":"\u00e9"}',  # non-ASCII
    '{"a":"\x7f"}',  # DEL: valid JSON, not printable
    '{"a":1}',
    '{"a":"b","n":null}',
    '{}',
    '{"a":"' + "x" * 600 + '"}',  # longer than the plain path takes
    # not JSON: orjson's errors
    '{"a":"b"}x',
    '{"a":"b",}',
    '{"a":"b"',
    '{"a":"b""c":"d"}',
    '{"a":"\x01"}',  # a control byte inside a string
    b'{"a":"\xff"}',  # not UTF-8
    '{"a":"b"}}',
    '{"a","b"}',
]


def counting_json_bridge(monkeypatch):
    """Counts the calls json_decode makes into Python."""
    calls = []
    original = json_lib.bridge

    def bridge(vm):
        functions = original(vm)
        decode = functions["json_decode"]

        def json_decode(*args):
            calls.append(args)
            return decode(*args)
        functions["json_decode"] = json_decode
        return functions
    monkeypatch.setattr(json_lib, "bridge", bridge)
    return calls


def expected_decode(text: bytes):
    try:
        return as_read_back(orjson.loads(text)), None
    except orjson.JSONDecodeError:
        return None


def assert_decodes_as_orjson(lua, text: bytes):
    value, err = lua.run("return mix.json_decode(...)", text)
    expected = expected_decode(text)
    if expected is None:
        assert value is None and err.startswith(b"json_decode: "), (text, value, err)
    else:
        assert (value, err) == expected, text


@pytest.mark.parametrize("text", PLAIN_OBJECTS)
def test_json_decode_plain_objects_are_read_in_lua_as_orjson_reads_them(tmp_path, monkeypatch, text):
    calls = counting_json_bridge(monkeypatch)
    lua = make_lua(tmp_path)
    assert_decodes_as_orjson(lua, text.encode())
    assert calls == []


@pytest.mark.parametrize("text", LEFT_TO_ORJSON)
def test_json_decode_other_text_is_left_to_orjson(tmp_path, monkeypatch, text):
    calls = counting_json_bridge(monkeypatch)
    lua = make_lua(tmp_path)
    assert_decodes_as_orjson(lua, text if type(text) is bytes else text.encode())
    assert len(calls) == 1


# Bytes that matter to the plain path's pattern: its edges ('"', '\\', space,
# '!', '#', '[', ']', '~'), control bytes, DEL, non-ASCII, and JSON's own.
PLAIN_EDGES = st.sampled_from(list(b'"\\ !#[]~{}:,ab09') + [0, 9, 10, 13, 31, 127, 128, 195, 169, 255])


@st.composite
def objects_and_near_misses(draw):
    """Compact objects of short strings, some bytes then changed, cut or added."""
    alphabet = draw(st.sampled_from(["ab ~[]!#", "ab\"\\ é~[]\x01"]))  # half of them plain
    pairs = draw(st.lists(st.tuples(st.text(alphabet, max_size=4), st.text(alphabet, max_size=6)),
                          min_size=1, max_size=4))
    text = bytearray(orjson.dumps(dict(pairs)))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        change = draw(st.sampled_from(["replace", "insert", "cut"]))
        if change == "cut":
            del text[at:]
        elif change == "insert":
            text.insert(at, draw(PLAIN_EDGES))
        elif at < len(text):
            text[at] = draw(PLAIN_EDGES)
    return bytes(text)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(text=objects_and_near_misses())
def test_json_decode_reads_any_text_as_orjson_does(lua, text):
    assert_decodes_as_orjson(lua, text)
