"""mix.parse_str (PHP parse_str) and mix.parse_url (Go net/url.Parse) through Lua.
(test_php_vs_php.py and test_go_semantics.py compare generated inputs with php and go.)"""
from __future__ import annotations

import pytest

from tests.luahelp import make_lua


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


# -- parse_str ------------------------------------------------------------------------

PARSE_STR = [
    # (query, expected as convert.from_lua gives it)
    (b"a=1&b=2", {"a": b"1", "b": b"2"}),
    (b"a[]=1&a[]=2", {"a": [b"1", b"2"]}),  # a PHP list is a Lua sequence from 1
    (b"a[k]=v&a[j][]=w", {"a": {"k": b"v", "j": [b"w"]}}),
    (b"a[x][y][z]=deep", {"a": {"x": {"y": {"z": b"deep"}}}}),
    (b"a=1&a=2", {"a": b"2"}),  # later keys overwrite
    (b"a=1&a[]=2", {"a": [b"2"]}),
    (b"a[]=1&a=2", {"a": b"2"}),
    (b"k", {"k": b""}),  # no '=': an empty string
    (b"k=", {"k": b""}),
    (b"x=a+b%20c%21", {"x": b"a b c!"}),
    (b"x=%zz%4&y=100%", {"x": b"%zz%4", "y": b"100%"}),  # bad escapes stay as they are
    (b"v=a%00b", {"v": b"a\0b"}),  # values are binary safe
    (b"a%5B%5D=1&a%5B%5D=2", {"a": [b"1", b"2"]}),  # names are decoded first
    (b"a.b=1&c d=2& e=3", {"a_b": b"1", "c_d": b"2", "e": b"3"}),  # PHP's name mangling
    (b"a[b.c]=1", {"a": {"b.c": b"1"}}),  # only the base name is mangled
    (b"a[b=1", {"a_b": b"1"}),  # '[' without ']' is not an index
    (b"a[x]junk=1", {"a": {"x": b"1"}}),  # text after ']' is ignored
    (b"a[ ]=1", {"a": [b"1"]}),
    (b"=1&&[x]=2&", {}),  # empty names are dropped
    (b"0=a&1=b", [b"a", b"b"]),
    (b"", {}),
    ("名前=値".encode(), {"名前": "値".encode()}),
]


@pytest.mark.parametrize("query, expected", PARSE_STR)
def test_parse_str(lua, query, expected):
    assert lua.run("return mix.parse_str(...)", query) == (expected, None)


def test_parse_str_integer_keys_stay_numbers_unless_a_list(lua):
    # {0 => x, 2 => y} is not a PHP list: its keys are kept as they are.
    source = 'local t = mix.parse_str("a[0]=x&a[2]=y") return t.a[0], t.a[1], t.a[2]'
    assert lua.execute(source) == (b"x", None, b"y")


def test_parse_str_list_with_named_keys(lua):
    source = 'local t = mix.parse_str("a[]=1&a[x]=2&a[]=3") return t.a[0], t.a.x, t.a[1]'
    assert lua.execute(source) == (b"1", b"2", b"3")


def test_parse_str_result_works_with_lua_idioms(lua):
    source = 'local t = mix.parse_str("ids[]=7&ids[]=8&ids[]=9") return table.getn(t.ids), t.ids[3]'
    assert lua.execute(source) == (3, b"9")


def test_parse_str_nesting_limit_is_phps(lua):
    ok = b"a" + b"[x]" * 64 + b"=1"
    too_deep = b"a" + b"[x]" * 65 + b"=1&b=2"
    assert lua.execute("local t = mix.parse_str(...) return t.a ~= nil", ok) is True
    assert lua.run("return mix.parse_str(...)", too_deep) == ({"b": b"2"}, None)


def test_parse_str_reads_at_most_1000_variables_like_php(lua):
    query = b"&".join(b"v%d=1" % i for i in range(1005))
    source = "local n = 0 for _ in pairs(mix.parse_str(...)) do n = n + 1 end return n"
    assert lua.execute(source, query) == 1000


@pytest.mark.parametrize("call, kind", [("mix.parse_str()", "nil"), ("mix.parse_str({})", "table")])
def test_parse_str_wrong_argument_is_nil_err(lua, call, kind):
    assert lua.execute(f"return {call}") == (
        None, f"bad argument #1 to 'parse_str' (string expected, got {kind})".encode())


# -- parse_url --------------------------------------------------------------------------

EMPTY_URL = {"scheme": b"", "opaque": b"", "user": b"", "host": b"", "path": b"", "raw_path": b"",
             "force_query": False, "raw_query": b"", "fragment": b"", "raw_fragment": b"", "query": {}}

PARSE_URL = [
    (b"ws://example.com:6790/chat?uid=1&uid=2&x#top",
     {"scheme": b"ws", "host": b"example.com:6790", "path": b"/chat", "raw_query": b"uid=1&uid=2&x",
      "fragment": b"top", "query": {"uid": b"1", "x": b""}}),  # the first value of each key
    (b"http://user:p%40ss@h/p", {"scheme": b"http", "user": b"user:p%40ss", "host": b"h", "path": b"/p"}),
    (b"http://user@h", {"scheme": b"http", "user": b"user", "host": b"h"}),
    (b"http://:@h/", {"scheme": b"http", "user": b":", "host": b"h", "path": b"/"}),
    (b"HTTP://Example.COM/", {"scheme": b"http", "host": b"Example.COM", "path": b"/"}),
    (b"http://h/a%2Fb%20c", {"scheme": b"http", "host": b"h", "path": b"/a/b c", "raw_path": b"/a%2Fb%20c"}),
    (b"http://h/a%20b", {"scheme": b"http", "host": b"h", "path": b"/a b"}),  # raw_path only when needed
    (b"http://[::1]:80/", {"scheme": b"http", "host": b"[::1]:80", "path": b"/"}),
    (b"http://[fe80::1%25en0]/", {"scheme": b"http", "host": b"[fe80::1%en0]", "path": b"/"}),
    (b"mailto:someone@example.com", {"scheme": b"mailto", "opaque": b"someone@example.com"}),
    (b"/path?", {"path": b"/path", "force_query": True}),
    (b"/p?a=1&b=x+y%21&c=1;2", {"path": b"/p", "raw_query": b"a=1&b=x+y%21&c=1;2",
                                "query": {"a": b"1", "b": b"x y!"}}),  # Go drops "c=1;2"
    (b"#a%2fb", {"fragment": b"a/b", "raw_fragment": b"a%2fb"}),
    (b"http://h/#a%20b", {"scheme": b"http", "host": b"h", "path": b"/", "fragment": b"a b"}),
    (b"//host/path", {"host": b"host", "path": b"/path"}),
    (b"///path", {"path": b"///path"}),
    (b"relative/path", {"path": b"relative/path"}),
    (b"*", {"path": b"*"}),
    (b"", {}),
]


@pytest.mark.parametrize("raw, fields", PARSE_URL)
def test_parse_url(lua, raw, fields):
    assert lua.run("return mix.parse_url(...)", raw) == ({**EMPTY_URL, **fields}, None)


def test_parse_url_fields_are_the_spec_ones(lua):
    source = 'local keys = {} for k in pairs(mix.parse_url("http://u:p@h/?q#f")) do keys[#keys + 1] = k end' \
             ' table.sort(keys) return table.concat(keys, ",")'
    assert lua.execute(source) == (b"force_query,fragment,host,opaque,path,query,raw_fragment,"
                                   b"raw_path,raw_query,scheme,user")


def test_parse_url_user_is_empty_without_userinfo(lua):
    assert lua.execute('local u = mix.parse_url("http://h/") return u.user, u.host') == (b"", b"h")


def test_parse_url_as_connmix_faq_shows_it(lua):
    """CONNMIX's faq: the websocket request's RequestUri parsed, every
    absent part "", tb["query"]["foo"] the string "bar"."""
    assert lua.run('local tb, err = mix.parse_url("/chat?foo=bar") '
                   'return tb.query.foo, tb.user, tb.scheme, tb.host, tb.path, tb.raw_query, err') == (
        b"bar", b"", b"", b"", b"/chat", b"foo=bar", None)


@pytest.mark.parametrize("raw, message", [
    (b":foo", 'parse ":foo": missing protocol scheme'),
    (b"http://h/%zz", 'parse "http://h/%zz": invalid URL escape "%zz"'),
    (b"http://h:x/", 'parse "http://h:x/": invalid port ":x" after host'),
    (b"http://[::1/", 'parse "http://[::1/": missing \']\' in host'),
    (b"http://a b/", 'parse "http://a b/": invalid character " " in host name'),
    (b"1:2", 'parse "1:2": first path segment in URL cannot contain colon'),
    (b"http://h/\n", 'parse "http://h/\\n": net/url: invalid control character in URL'),
    (b"http://u\xff@h/", 'parse "http://u\\xff@h/": net/url: invalid userinfo'),
    (b"http://h/#%zz", 'parse "http://h/#%zz": invalid URL escape "%zz"'),
])
def test_parse_url_error_is_nil_err_with_gos_message(lua, raw, message):
    assert lua.run("return mix.parse_url(...)", raw) == (None, message.encode())


@pytest.mark.parametrize("call, kind", [("mix.parse_url()", "nil"), ("mix.parse_url(true)", "boolean")])
def test_parse_url_wrong_argument_is_nil_err(lua, call, kind):
    assert lua.execute(f"return {call}") == (
        None, f"bad argument #1 to 'parse_url' (string expected, got {kind})".encode())
