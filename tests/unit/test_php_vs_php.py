"""Our pack/unpack/parse_str against PHP's own, over generated inputs.

Needs the `php` command (Debian: apt-get install php-cli): skipped without
it, a failure under CI. All cases of a family go to one php process as JSON on stdin; values
travel tagged so that bytes, ints and floats (NaN, -0.0) arrive exactly.
"""
from __future__ import annotations

import base64
import json
import random
import struct
import subprocess


from connmix_py.lua.mixlib.php import PackError, pack, unpack
from connmix_py.lua.mixlib.urls import PhpArray, parse_str
from tests.conftest import reference_command

PHP = reference_command("php", "php-cli")

PHP_PRELUDE = r"""<?php
function val($v) {
    switch ($v[0]) {
        case 'i': return $v[1];
        case 'f': return unpack('E', hex2bin($v[1]))[1];
        case 's': return base64_decode($v[1]);
        case 'b': return $v[1];
        default: return null;
    }
}
function tag($v) {
    if (is_int($v)) return ['i', $v];
    if (is_float($v)) return ['f', bin2hex(pack('E', $v))];
    if (is_string($v)) return ['s', base64_encode($v)];
    $out = [];
    foreach ($v as $k => $x) $out[] = [tag($k), tag($x)];
    return ['a', $out];
}
function failure($e = null) {
    $m = $e ? $e->getMessage() : (error_get_last()['message'] ?? '');
    error_clear_last();
    return ['error', preg_replace('/^\w+\(\): /', '', $m)];
}
$results = [];
foreach (json_decode(stream_get_contents(STDIN), true) as $case) {
"""
PHP_BODIES = {
    "pack": r"""
    try {
        $r = @pack(base64_decode($case[0]), ...array_map('val', $case[1]));
        $results[] = ['ok', base64_encode($r)];
    } catch (\Throwable $e) { $results[] = failure($e); }
""",
    "unpack": r"""
    try {
        $r = @unpack(base64_decode($case[0]), base64_decode($case[1]));
        $results[] = $r === false ? failure() : ['ok', tag($r)];
    } catch (\Throwable $e) { $results[] = failure($e); }
""",
    "parse_str": r"""
    @parse_str(base64_decode($case), $r);
    $results[] = ['ok', tag($r)];
""",
}
PHP_EPILOGUE = "}\necho json_encode($results);\n"


def run_php(family: str, cases: list, tmp_path) -> list:
    script = tmp_path / f"{family}.php"
    script.write_text(PHP_PRELUDE + PHP_BODIES[family] + PHP_EPILOGUE)
    settings = ["-n", "-d", "precision=14", "-d", "serialize_precision=-1",
                "-d", "max_input_vars=1000", "-d", "max_input_nesting_level=64",
                "-d", "display_errors=0", "-d", "error_reporting=-1", "-d", "memory_limit=512M"]
    done = subprocess.run([PHP, *settings, str(script)], input=json.dumps(cases).encode(),
                          capture_output=True, timeout=120, check=True)
    return json.loads(done.stdout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tag_value(value) -> list:
    """A Python value tagged the way PHP's tag() does it."""
    if value is None:
        return ["n"]
    if type(value) is bool:
        return ["b", value]
    if type(value) is int:
        return ["i", value]
    if type(value) is float:
        return ["f", struct.pack(">d", value).hex()]
    if type(value) is bytes:
        return ["s", b64(value)]
    assert isinstance(value, dict)
    return ["a", [[tag_value(k), tag_value(v)] for k, v in value.items()]]


def report(mismatches: list) -> str:
    return f"{len(mismatches)} mismatches, first ones:\n" + "\n".join(map(repr, mismatches[:10]))


# -- generated inputs ---------------------------------------------------------------

INTS = [0, 1, -1, 7, 127, 128, -128, -129, 255, 256, 32767, 32768, 65535, 65536, -32769,
        2**31 - 1, 2**31, -2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, -2**63]
FLOATS = [0.0, -0.0, 0.5, -1.5, 1.1, 3.0, 1e10, 1e14, 1e15, 1e20, 1e300, -1e300, 3.4e38,
          3.5e38, 1e-40, 1e-5, 0.0001, 2.0**63, -2.0**63, 2.0**64, 1e19, -1e19,
          float("nan"), float("inf"), float("-inf"), 1 / 3]
STRINGS = [b"", b"0", b"12", b"12abc", b" 12", b"\n12", b"12 ", b"-5", b"+5", b"1.9", b".5e1",
           b"1e3", b"1e400", b"1e19", b"-1e19", b"0x1A", b"abc", b"99999999999999999999",
           b"9223372036854775808", b"-9223372036854775809", b"1aF", b"zz", b"0123456789abcdef",
           b"\0a\0", b"hello world", b"\xff\xfe", b" \t\r\n"]
PACK_CODES = "aAZhHcCsSnviIlLNVqQJPfgGdeExX@"


def random_value(rng: random.Random):
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(INTS) if rng.random() < 0.6 else rng.randint(-2**63, 2**63 - 1)
    if kind < 0.55:
        if rng.random() < 0.6:
            return rng.choice(FLOATS)
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(-45, 45)
    if kind < 0.9:
        if rng.random() < 0.6:
            return rng.choice(STRINGS)
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    return rng.choice([True, False, None])


def random_count(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return ""
    if roll < 0.85:
        return str(rng.randint(0, 6))
    return "*"


def pack_cases(rng: random.Random, n: int) -> list[tuple[bytes, list]]:
    cases = [(b"nvc*", [0x1234, 0x5678, 65, 66]), (b"Na*", [5, b"hello"]), (b"a4X2@6Z*", [b"abcd", b"x"])]
    for _ in range(n):
        fmt, args = "", []
        for _ in range(rng.randint(1, 4)):
            code = rng.choice(PACK_CODES) if rng.random() > 0.03 else rng.choice("yu/B ")
            count = random_count(rng)
            fmt += code + count
            if code in "aAZhH":
                args.append(random_value(rng) if rng.random() < 0.3 else rng.choice(STRINGS))
            elif code not in "xX@":
                wanted = rng.randint(0, 3) if count == "*" else int(count or 1)
                args += [random_value(rng) for _ in range(wanted)]
        if rng.random() < 0.05 and args:
            args.pop()
        elif rng.random() < 0.05:
            args.append(random_value(rng))
        cases.append((fmt.encode(), args))
    return cases


NAMES = ["", "", "", "x", "len", "1", "0", "-1", "01", "a b", "n2", "chars", "x", "", "",
         "9223372036854775808"]


def unpack_cases(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    cases = [(b"c2chars/nint", b"\x04\x00\xa0\x00"), (b"Nlen/a*body", b"\0\0\0\x05hello"),
             (b"C*", b""), (b"H*h/H3", b"\x12\x34"), (b"@*/C", b"abc"), (b"C/@0/C", b"abc")]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 4)):
            code = rng.choice(PACK_CODES) if rng.random() > 0.03 else rng.choice("yu")
            parts.append(code + random_count(rng) + rng.choice(NAMES))
        data = bytes(rng.randrange(256) if rng.random() < 0.7 else rng.choice(b" \0\t\nAz")
                     for _ in range(rng.choice([0, 1, 2, 3, 4, 8, 12, 17, 24, 40, 64, 64, 64])))
        cases.append(("/".join(parts).encode(), data))
    return cases


QUERY_PIECES = ["a", "b", "x", "0", "1", "-1", "01", "[", "]", "[]", "=", "=", "&", "&", "+", " ", ".",
                "%5B", "%5D", "%20", "%00", "%2", "%G1", "%41", "__Host-", "._Host-", "[ ]",
                "9223372036854775807"]


def parse_str_cases(rng: random.Random, n: int) -> list[bytes]:
    cases = [b"a[]=1&a[]=2", b"a[k]=v&a[k2][]=w", b"a=1&a=2", b"k", b"a[-5]=x&a[]=y",
             b"a" + b"[x]" * 64 + b"=1", b"a" + b"[x]" * 65 + b"=1&b=2", b"a=1\0b=2",
             b"&".join(b"v%d=1" % i for i in range(1005))]
    for _ in range(n):
        cases.append("".join(rng.choice(QUERY_PIECES) for _ in range(rng.randint(1, 14))).encode())
    return cases


# -- the comparisons ---------------------------------------------------------------------


def test_pack_matches_php(tmp_path):
    cases = pack_cases(random.Random(1), 3000)
    expected = run_php("pack", [[b64(fmt), [tag_value(v) for v in args]] for fmt, args in cases], tmp_path)
    mismatches = []
    for (fmt, args), php in zip(cases, expected, strict=True):
        try:
            ours = ["ok", b64(pack(fmt, args))]
        except PackError as exc:
            ours = ["error", str(exc)]
        if ours != php:
            mismatches.append((fmt, args, php, ours))
    assert not mismatches, report(mismatches)


def test_unpack_matches_php(tmp_path):
    cases = unpack_cases(random.Random(2), 3000)
    expected = run_php("unpack", [[b64(fmt), b64(data)] for fmt, data in cases], tmp_path)
    mismatches = []
    for (fmt, data), php in zip(cases, expected, strict=True):
        try:
            ours = ["ok", tag_value(unpack(fmt, data))]
        except PackError as exc:
            ours = ["error", str(exc)]
        if ours != php:
            mismatches.append((fmt, data, php, ours))
    assert not mismatches, report(mismatches)


def test_parse_str_matches_php(tmp_path):
    cases = parse_str_cases(random.Random(3), 3000)
    expected = run_php("parse_str", [b64(query) for query in cases], tmp_path)
    mismatches = []
    for query, php in zip(cases, expected, strict=True):
        ours = ["ok", tag_value(parse_str(query))]
        if ours != php:
            mismatches.append((query, php, ours))
    assert not mismatches, report(mismatches)


def test_generated_parse_str_cases_cover_arrays():
    # Guard against a generator that never produces nested arrays.
    results = [parse_str(q) for q in parse_str_cases(random.Random(3), 300)]
    assert any(isinstance(v, PhpArray) for r in results for v in r.values())
