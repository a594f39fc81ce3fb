"""Go's net/textproto conventions that CONNMIX scripts see in header tables."""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable


@lru_cache(maxsize=1024)  # every upgrade request canonicalizes the same few names
def canonical_header(name: str) -> str:
    """Go's canonical header form: content-type -> Content-Type, sec-websocket-key -> Sec-Websocket-Key."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def first_values(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Canonical name -> first value, like Go's Header.Get."""
    table: dict[str, str] = {}
    for name, value in headers:
        table.setdefault(canonical_header(name), value)
    return table
