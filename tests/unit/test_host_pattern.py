"""access.users host patterns: *, IPv4 wildcards per part, exact IPv4 and IPv6."""
from __future__ import annotations

import pytest

from connmix_py.api.host_pattern import parse_host_pattern


@pytest.mark.parametrize("pattern, caller, allowed", [
    ("*", "203.0.113.9", True),
    ("*", "2001:db8::1", True),
    ("*", None, False),  # no address at all (not a TCP peer)
    ("172.*.*.*", "172.16.0.1", True),
    ("172.*.*.*", "172.255.255.255", True),
    ("172.*.*.*", "173.16.0.1", False),
    ("172.*.*.*", "17.2.0.1", False),
    ("10.0.*.7", "10.0.99.7", True),
    ("10.0.*.7", "10.0.99.8", False),
    ("172.*.*.*", "::ffff:172.16.0.1", True),  # IPv4 through a dual-stack listener
    ("172.*.*.*", "2001:db8::172", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.2", False),
    ("127.0.0.1", "::ffff:127.0.0.1", True),
    ("::1", "::1", True),
    ("::1", "0:0:0:0:0:0:0:1", True),  # compared as addresses, not as text
    ("::1", "127.0.0.1", False),
    ("2001:db8::5", "2001:DB8:0::5", True),
    ("2001:db8::5", "2001:db8::6", False),
    ("fe80::1", "fe80::1%eth0", True),  # a link-local caller's zone is not part of its address
    ("127.0.0.1", "not an address", False),
])
def test_host_pattern_matches(pattern, caller, allowed):
    assert parse_host_pattern(pattern).matches(caller) is allowed


@pytest.mark.parametrize("pattern", [
    "", "172.*", "172.*.*", "172.*.*.*.*", "256.*.*.*", "17x.*.*.*", "1*2.*.*.*",
    "*.*:*", "localhost", "10.0.0.0/8", "2001:db8::*", "::ffff::1",
])
def test_bad_host_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        parse_host_pattern(pattern)
