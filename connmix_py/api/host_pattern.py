"""access.users ``host`` patterns: which caller addresses a user may come from.

``*`` is any address; an IPv4 pattern has four dot-separated parts, each a
number 0-255 or ``*`` (``172.*.*.*``, ``10.0.*.7``); anything else must be
one exact IPv4 or IPv6 address (``::1``, ``2001:db8::5``; compared as
addresses, so ``0:0::1`` is ``::1``). An IPv4 caller that reaches a
dual-stack listener as ``::ffff:a.b.c.d`` is matched as ``a.b.c.d``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostPattern:
    text: str
    any_address: bool = False  # ``*``
    exact: IpAddress | None = None  # one address
    octets: tuple[int | None, ...] = ()  # an IPv4 pattern; None is a ``*`` part

    def matches(self, remote: str | None) -> bool:
        address = caller_address(remote)
        if address is None:
            return False
        if self.any_address:
            return True
        if self.exact is not None:
            return address == self.exact
        return isinstance(address, ipaddress.IPv4Address) and all(
            want is None or want == got for want, got in zip(self.octets, address.packed, strict=True))


def parse_host_pattern(text: str) -> HostPattern:
    """Raises ValueError with a short reason."""
    if text == "*":
        return HostPattern(text, any_address=True)
    parts = text.split(".")
    if "*" in text:
        if len(parts) != 4:
            raise ValueError("a wildcard pattern has four parts, like 172.*.*.*")
        return HostPattern(text, octets=tuple(_octet(part) for part in parts))
    try:
        return HostPattern(text, exact=ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("expected *, an IPv4 pattern like 172.*.*.* or an IP address") from None


def _octet(part: str) -> int | None:
    if part == "*":
        return None
    if not part.isdigit() or int(part) > 255:
        raise ValueError(f"{part!r} is neither * nor a number 0-255")
    return int(part)


def caller_address(remote: str | None) -> IpAddress | None:
    """The caller's address as the patterns see it; None when it has none
    (a unix socket) or it cannot be read."""
    if not remote:
        return None
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
