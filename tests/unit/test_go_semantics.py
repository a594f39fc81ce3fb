"""Our parse_url and base64_decode against Go's net/url and encoding/base64.

CONNMIX is a Go program, so Go's own library is the reference for these two.
Needs the `go` command (Debian: apt-get install golang-go): skipped without
it, a failure under CI. Every case goes to one `go run` as base64 JSON on stdin, because Go's
JSON would mangle bytes that are not UTF-8.
"""
from __future__ import annotations

import base64
import json
import os
import random
import subprocess


from connmix_py.lua.mixlib.codec import Base64Error, base64_decode
from connmix_py.lua.mixlib.urls import URLError, parse_query, parse_url
from tests.conftest import reference_command

GO = reference_command("go", "golang-go")

GO_PROGRAM = r"""
package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"sort"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func main() {
	var inputs []string
	if err := json.NewDecoder(os.Stdin).Decode(&inputs); err != nil {
		panic(err)
	}
	out := []interface{}{}
	for _, in := range inputs {
		raw, _ := base64.StdEncoding.DecodeString(in)
		if os.Args[1] == "base64" {
			data, err := base64.StdEncoding.DecodeString(string(raw))
			if err != nil {
				out = append(out, []string{"error", err.Error()})
			} else {
				out = append(out, []string{"ok", b64(string(data))})
			}
			continue
		}
		u, err := url.Parse(string(raw))
		if err != nil {
			out = append(out, []string{"error", b64(err.Error())})
			continue
		}
		user := []string{}
		if u.User != nil {
			user = append(user, b64(u.User.String()))
		}
		query := [][]interface{}{}
		values := u.Query()
		keys := make([]string, 0, len(values))
		for k := range values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			vs := []string{}
			for _, v := range values[k] {
				vs = append(vs, b64(v))
			}
			query = append(query, []interface{}{b64(k), vs})
		}
		out = append(out, []interface{}{"ok", []interface{}{
			b64(u.Scheme), b64(u.Opaque), user, b64(u.Host), b64(u.Path), b64(u.RawPath),
			u.ForceQuery, b64(u.RawQuery), b64(u.Fragment), b64(u.RawFragment), query}})
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run_go(mode: str, inputs: list[bytes], tmp_path) -> list:
    program = tmp_path / "reference.go"
    program.write_text(GO_PROGRAM)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"),
               GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0")
    stdin = json.dumps([b64(i) for i in inputs]).encode()
    done = subprocess.run([GO, "run", str(program), mode], input=stdin, capture_output=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def report(mismatches: list) -> str:
    return f"{len(mismatches)} mismatches, first ones:\n" + "\n".join(map(repr, mismatches[:10]))


URL_PIECES = [b"http:", b"HTTP:", b"ws:", b"mailto:", b"a+b.c-d:", b"1a:", b":", b"//", b"///", b"/",
              b"user", b"u%40x", b":", b"@", b"pa%20ss", b"host", b"example.com", b":6790", b":x",
              b"[::1]", b"[fe80::1%25en0]", b"[", b"]", b"path", b"%2F", b"%2f", b"%zz", b"%", b"%4",
              b"?", b"q=1", b"&", b";", b"+", b"=", b"#", b"frag", b"%41", b" ", b"\x01", b"\x7f",
              "é".encode(), b"\xff", b"*", b"!", b"'", b"(", b")", b"~", b"<", b">", b'"', b"a", b"..",
              b".", b"%25", b"%00", b"\\"]
B64_PIECES = [b"QUJD", b"YQ==", b"YWI=", b"YR==", b"Y", b"YQ", b"=", b"==", b"\r", b"\n", b"\r\n",
              b"-", b"_", b" ", b"!", b"AAAA", b"+/+/", b"a", b"b", b"Z"]


def generated(pieces: list[bytes], seed: int, n: int, longest: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, longest))) for _ in range(n)]


def structured_urls(seed: int, n: int) -> list[bytes]:
    """scheme://userinfo@host:port/path?query#fragment with odd bytes in each part."""
    rng = random.Random(seed)

    def part(options: list[bytes], extra: int = 2) -> bytes:
        return rng.choice(options) + b"".join(rng.choice(URL_PIECES) for _ in range(rng.randint(0, extra)))

    urls = []
    for _ in range(n):
        url = part([b"", b"http:", b"WS:", b"x-y:"], 0) + part([b"//", b"", b"///"], 0)
        if rng.random() < 0.4:
            url += part([b"user", b"u:p", b"u%3Ap:x", b"", b":"], 1) + b"@"
        url += part([b"example.com", b"[::1]", b"[fe80::1%25eth0]", b"h\xc3\xa9", b"%C3%A9", b""], 1)
        url += part([b"", b":6790", b":", b":80x"], 0)
        url += part([b"", b"/", b"/chat", b"/a%2Fb", b"/%7e"], 2)
        if rng.random() < 0.5:
            url += b"?" + part([b"a=1&a=2", b"x=%20+y", b"k", b"a=1;b=2", b""], 2)
        if rng.random() < 0.3:
            url += b"#" + part([b"f", b"%23", b"a b", b""], 1)
        urls.append(url)
    return urls


URL_EXAMPLES = [b"ws://example.com:6790/chat?uid=1#x", b"http://u:p@h/p%2Fq?a=1&a=2&b", b"*", b"",
                b"mailto:a@b.c", b"//host/path", b"///path", b"/a?", b"?x=1", b"http://[::1]:80/",
                b"http://h/%zz", b"http://a b/", b"1http://x", b"a:b/c", b"http://%41/",
                b"http://[fe80::1%25en0]:8080/", b"http://x/#%zz", b"http://x/?q=%zz&r=1;2&s=ok"]


def test_parse_url_matches_go(tmp_path):
    cases = URL_EXAMPLES + generated(URL_PIECES, 4, 3000, 10) + structured_urls(6, 3000)
    expected = run_go("url", cases, tmp_path)
    mismatches = []
    for raw, go in zip(cases, expected, strict=True):
        try:
            u = parse_url(raw)
            query = [[b64(k), [b64(v) for v in vs]] for k, vs in sorted(parse_query(u.raw_query).items())]
            ours = ["ok", [b64(u.scheme), b64(u.opaque), [b64(u.user.string())] if u.user else [],
                           b64(u.host), b64(u.path), b64(u.raw_path), u.force_query, b64(u.raw_query),
                           b64(u.fragment), b64(u.raw_fragment), query]]
        except URLError as exc:
            ours = ["error", b64(str(exc).encode())]
        if ours != go:
            mismatches.append((raw, go, ours))
    assert not mismatches, report(mismatches)


def test_base64_decode_matches_go(tmp_path):
    cases = [b"", b"aGVsbG8=", b"aGVsbG8", b"aGVs\r\nbG8=", b"YQ=\n="] + generated(B64_PIECES, 5, 4000, 6)
    expected = run_go("base64", cases, tmp_path)
    mismatches = []
    for text, go in zip(cases, expected, strict=True):
        try:
            ours = ["ok", b64(base64_decode(text))]
        except Base64Error as exc:
            ours = ["error", str(exc)]
        if ours != go:
            mismatches.append((text, go, ours))
    assert not mismatches, report(mismatches)
