"""mix.parse_str (PHP's parse_str) and mix.parse_url (Go's net/url.Parse).

Both work on bytes, as PHP and Go do: keys and values may hold any byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .php import LONG_MAX, array_key
from .values import bad_argument, fail, lua_string

# PHP's defaults for max_input_vars and max_input_nesting_level.
MAX_INPUT_VARS = 1000
MAX_NESTING = 64
_C_SPACE = b" \t\n\v\f\r"
_HEX = b"0123456789abcdefABCDEF"


# -- PHP parse_str ----------------------------------------------------------------


class PhpArray(dict):
    """A PHP array: ordered int/bytes keys plus PHP's next free integer index."""

    def __init__(self) -> None:
        super().__init__()
        self.next_free: int | None = None

    def put(self, key: int | bytes, value: Any) -> None:
        self[key] = value
        if type(key) is int and (self.next_free is None or key >= self.next_free):
            self.next_free = key + 1 if key != LONG_MAX else LONG_MAX

    def append(self, value: Any) -> bool:
        """$a[] = value; False when the next index is taken (PHP gives up)."""
        key = 0 if self.next_free is None else self.next_free
        if key in self:
            return False
        self.put(key, value)
        return True


def php_url_decode(data: bytes) -> bytes:
    """urldecode: '+' is a space, %XX a byte; a malformed escape stays as it is."""
    if b"%" not in data and b"+" not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x2B:  # '+'
            out.append(0x20)
        elif c == 0x25 and i + 2 < n and data[i + 1] in _HEX and data[i + 2] in _HEX:
            out.append(int(data[i + 1:i + 3], 16))
            i += 2
        else:
            out.append(c)
        i += 1
    return bytes(out)


def _forbidden(index: bytes, original: bytes) -> bool:
    """PHP drops names that mangling turned into a __Host- or __Secure- cookie prefix."""
    return any(index.startswith(p) and not original.startswith(p)
               for p in (b"__Host-", b"__Secure-"))


def _c_string(buf: bytearray, start: int) -> bytes:
    end = buf.find(0, start)
    return bytes(buf[start:end if end >= 0 else len(buf)])


def _register(track: PhpArray, name: bytes, value: bytes) -> None:
    """php_register_variable_ex, ported step by step: the name is a C string that
    the parser cuts with NULs and sometimes mends again."""
    name = name.split(b"\0", 1)[0].lstrip(b" ")
    buf = bytearray(name)
    bracket = -1
    for p, c in enumerate(buf):
        if c == 0x20 or c == 0x2E:  # ' ' and '.' are not allowed in variable names
            buf[p] = 0x5F
        elif c == 0x5B:  # '['
            bracket = p
            buf[p] = 0
            break
    base_len = bracket if bracket >= 0 else len(buf)
    if base_len == 0:
        return
    base = bytes(buf[:base_len])
    table, index, index_start = track, base, 0
    if bracket >= 0:
        ip, nest = bracket, 0
        while True:
            nest += 1
            if nest > MAX_NESTING:  # too deep: PHP drops the whole variable
                track.pop(array_key(base), None)
                return
            ip += 1
            start = ip
            if ip < len(buf) and buf[ip] in _C_SPACE:
                ip += 1
            if ip < len(buf) and buf[ip] == 0x5D:  # "[]" (or "[ ]"): append
                new_index = None
            else:
                close = buf.find(b"]", ip)
                if close < 0:  # "[" without "]": not an index after all
                    buf[start - 1] = 0x5F
                    for p in range(start, len(buf)):
                        if buf[p] in b" .[":
                            buf[p] = 0x5F
                    index = _c_string(buf, index_start) if index is not None else None
                    break
                ip = close
                buf[ip] = 0
                new_index = bytes(buf[start:ip])
            if index is None:
                child = PhpArray()
                if not table.append(child):
                    return
            else:
                if _forbidden(index, name):
                    return
                key = array_key(index)
                child = table.get(key)
                if not isinstance(child, PhpArray):
                    child = PhpArray()
                    table.put(key, child)
            table, index, index_start = child, new_index, start
            ip += 1
            if ip < len(buf) and buf[ip] == 0x5B:
                buf[ip] = 0
                continue
            break  # anything after "]" that is not "[" is ignored
    if index is None:
        table.append(value)
    elif not _forbidden(index, name):
        table.put(array_key(index), value)


def parse_str(query: bytes) -> PhpArray:
    """PHP parse_str(): "a[]=1&a[]=2&b[k]=v" -> {a: [1, 2], b: {k: v}} as PhpArrays."""
    result = PhpArray()
    query = query.split(b"\0", 1)[0]  # PHP reads the query as a C string
    count = 0
    for pair in query.split(b"&"):
        if not pair:
            continue
        count += 1
        if count > MAX_INPUT_VARS:
            break
        name, has_value, value = pair.partition(b"=")
        _register(result, php_url_decode(name), php_url_decode(value) if has_value else b"")
    return result


def lua_shape(value: Any) -> Any:
    """A PhpArray for Lua: keys exactly 0..n-1 in order (a PHP list, what
    json_encode writes as an array) -> a Lua sequence 1..n; any other array
    -> a table with the same keys (integers stay numbers)."""
    if isinstance(value, PhpArray):
        if list(value) == list(range(len(value))):
            return [lua_shape(v) for v in value.values()]
        return {k: lua_shape(v) for k, v in value.items()}
    return value


# -- Go net/url.Parse ---------------------------------------------------------------
#
# A port of Go's net/url parsing, checked against go1.19.8 (newer Go rejects a
# few more malformed hosts, such as "a:1:2"). Encoding modes follow Go's names.

PATH, PATH_SEGMENT, HOST, ZONE, USER_PASSWORD, QUERY_COMPONENT, FRAGMENT = range(1, 8)
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_USERINFO_OK = _ALNUM | frozenset(b"-._:~!$&'()*+,;=%@")


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}


class URLError(ValueError):
    """Parse failed; the message reads like Go's *url.Error."""


def go_quote(data: bytes) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    text = data.decode("utf-8", "surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _should_escape(c: int, mode: int) -> bool:
    if c in _ALNUM:
        return False
    if mode in (HOST, ZONE) and c in b"!$&'()*+,;=:[]<>\"":
        return False
    if c in b"-_.~":
        return False
    if c in b"$&+,/:;=?@":
        if mode == PATH:
            return c == 0x3F
        if mode == PATH_SEGMENT:
            return c in b"/;,?"
        if mode == USER_PASSWORD:
            return c in b"@/?:"
        if mode == QUERY_COMPONENT:
            return True
        if mode == FRAGMENT:
            return False
    if mode == FRAGMENT and c in b"!()*":
        return False
    return True


def _escape_error(s: bytes) -> URLError:
    return URLError("invalid URL escape " + go_quote(s))


def _unescape(s: bytes, mode: int) -> bytes:
    n, i, has_plus = 0, 0, False
    while i < len(s):
        c = s[i]
        if c == 0x25:  # '%'
            n += 1
            if i + 2 >= len(s) or s[i + 1] not in _HEX or s[i + 2] not in _HEX:
                raise _escape_error(s[i:i + 3])
            value = int(s[i + 1:i + 3], 16)
            if mode == HOST and value < 0x80 and s[i:i + 3] != b"%25":
                raise _escape_error(s[i:i + 3])
            if mode == ZONE and s[i:i + 3] != b"%25" and value != 0x20 and _should_escape(value, HOST):
                raise _escape_error(s[i:i + 3])
            i += 3
        elif c == 0x2B:  # '+'
            has_plus = mode == QUERY_COMPONENT
            i += 1
        else:
            if mode in (HOST, ZONE) and c < 0x80 and _should_escape(c, mode):
                raise URLError("invalid character " + go_quote(s[i:i + 1]) + " in host name")
            i += 1
    if n == 0 and not has_plus:
        return s
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == 0x25:
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B and mode == QUERY_COMPONENT else c)
        i += 1
    return bytes(out)


def _escape(s: bytes, mode: int) -> bytes:
    out = bytearray()
    for c in s:
        if c == 0x20 and mode == QUERY_COMPONENT:
            out.append(0x2B)
        elif _should_escape(c, mode):
            out += b"%%%02X" % c
        else:
            out.append(c)
    return bytes(out)


@dataclass
class Userinfo:
    username: bytes
    password: bytes = b""
    password_set: bool = False

    def string(self) -> bytes:
        """Userinfo.String(): "user" or "user:pass", escaped."""
        text = _escape(self.username, USER_PASSWORD)
        if self.password_set:
            text += b":" + _escape(self.password, USER_PASSWORD)
        return text


@dataclass
class URL:
    scheme: bytes = b""
    opaque: bytes = b""
    user: Userinfo | None = None
    host: bytes = b""
    path: bytes = b""
    raw_path: bytes = b""
    force_query: bool = False
    raw_query: bytes = b""
    fragment: bytes = b""
    raw_fragment: bytes = b""


def _get_scheme(raw: bytes) -> tuple[bytes, bytes]:
    for i, c in enumerate(raw):
        if 0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A:
            continue
        if 0x30 <= c <= 0x39 or c in b"+-.":
            if i == 0:
                return b"", raw
            continue
        if c == 0x3A:  # ':'
            if i == 0:
                raise URLError("missing protocol scheme")
            return raw[:i], raw[i + 1:]
        return b"", raw
    return b"", raw


def _valid_optional_port(port: bytes) -> bool:
    return port == b"" or (port[:1] == b":" and all(0x30 <= c <= 0x39 for c in port[1:]))


def _parse_host(host: bytes) -> bytes:
    if host.startswith(b"["):
        i = host.rfind(b"]")
        if i < 0:
            raise URLError("missing ']' in host")
        colon_port = host[i + 1:]
        if not _valid_optional_port(colon_port):
            raise URLError(f"invalid port {go_quote(colon_port)} after host")
        zone = host[:i].find(b"%25")
        if zone >= 0:
            return (_unescape(host[:zone], HOST) + _unescape(host[zone:i], ZONE)
                    + _unescape(host[i:], HOST))
    else:
        i = host.rfind(b":")
        if i != -1 and not _valid_optional_port(host[i:]):
            raise URLError(f"invalid port {go_quote(host[i:])} after host")
    return _unescape(host, HOST)


def _parse_authority(authority: bytes) -> tuple[Userinfo | None, bytes]:
    i = authority.rfind(b"@")
    host = _parse_host(authority if i < 0 else authority[i + 1:])
    if i < 0:
        return None, host
    userinfo = authority[:i]
    if not all(c in _USERINFO_OK for c in userinfo):
        raise URLError("net/url: invalid userinfo")
    if b":" not in userinfo:
        return Userinfo(_unescape(userinfo, USER_PASSWORD)), host
    username, _, password = userinfo.partition(b":")
    return Userinfo(_unescape(username, USER_PASSWORD), _unescape(password, USER_PASSWORD),
                    True), host


def _parse(raw: bytes) -> URL:
    if any(c < 0x20 or c == 0x7F for c in raw):
        raise URLError("net/url: invalid control character in URL")
    url = URL()
    if raw == b"*":
        url.path = b"*"
        return url
    scheme, rest = _get_scheme(raw)
    url.scheme = scheme.lower()
    if rest.endswith(b"?") and rest.count(b"?") == 1:
        url.force_query = True
        rest = rest[:-1]
    else:
        rest, _, url.raw_query = rest.partition(b"?")
    if not rest.startswith(b"/"):
        if url.scheme:
            url.opaque = rest  # a rootless path is opaque (RFC 3986)
            return url
        if b":" in rest.partition(b"/")[0]:
            raise URLError("first path segment in URL cannot contain colon")
    if (url.scheme or not rest.startswith(b"///")) and rest.startswith(b"//"):
        authority, slash, path = rest[2:].partition(b"/")
        rest = slash + path
        url.user, url.host = _parse_authority(authority)
    url.path = _unescape(rest, PATH)
    url.raw_path = b"" if _escape(url.path, PATH) == rest else rest
    return url


def parse_url(raw: bytes) -> URL:
    """url.Parse(raw). Raises URLError with Go's message: parse "raw": reason."""
    before, _, fragment = raw.partition(b"#")
    try:
        url = _parse(before)
    except URLError as exc:
        raise URLError(f"parse {go_quote(before)}: {exc}") from None
    if fragment:
        try:
            url.fragment = _unescape(fragment, FRAGMENT)
        except URLError as exc:
            raise URLError(f"parse {go_quote(raw)}: {exc}") from None
        url.raw_fragment = b"" if _escape(url.fragment, FRAGMENT) == fragment else fragment
    return url


def parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """url.ParseQuery, dropping malformed pairs as URL.Query() does."""
    values: dict[bytes, list[bytes]] = {}
    for pair in query.split(b"&"):
        if not pair or b";" in pair:
            continue
        key, _, value = pair.partition(b"=")
        try:
            key, value = _unescape(key, QUERY_COMPONENT), _unescape(value, QUERY_COMPONENT)
        except URLError:
            continue
        values.setdefault(key, []).append(value)
    return values


def url_table(url: URL) -> dict[str, Any]:
    """The fields of Go's url.URL, snake_cased, for Lua.

    As CONNMIX gives them (its faq prints them): ``user`` is
    Userinfo.String() ("name" or "name:password", escaped), "" when the URL
    has none, like every other absent part; ``query`` maps each key of
    URL.Query() to its first value, a string ("a=1&a=2" -> {a = "1"}), so
    ``tb["query"]["foo"]`` is ``"bar"``.
    """
    return {
        "scheme": url.scheme, "opaque": url.opaque,
        "user": url.user.string() if url.user else b"",
        "host": url.host, "path": url.path, "raw_path": url.raw_path,
        "force_query": url.force_query, "raw_query": url.raw_query,
        "fragment": url.fragment, "raw_fragment": url.raw_fragment,
        "query": {key: values[0] for key, values in parse_query(url.raw_query).items()},
    }


# -- the Lua bridge ---------------------------------------------------------------------


def bridge(vm) -> dict:
    to_lua = vm.to_lua

    def mix_parse_str(query=None, *_ignored):
        text = lua_string(query)
        if text is None:
            return bad_argument(1, "parse_str", "string", query)
        return to_lua(lua_shape(parse_str(text))), None

    def mix_parse_url(raw=None, *_ignored):
        text = lua_string(raw)
        if text is None:
            return bad_argument(1, "parse_url", "string", raw)
        try:
            return to_lua(url_table(parse_url(text))), None
        except URLError as exc:
            return fail(str(exc))

    return {"parse_str": mix_parse_str, "parse_url": mix_parse_url}
