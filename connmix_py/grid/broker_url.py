"""engine.broker: which Redis-protocol server joins the nodes.

    redis://[[user]:password@]host:port/db      one server
    rediss://...                                the same over TLS
    unix:///path/to/redis.sock?db=0&password=p  a local socket
    redis+cluster://[:password@]host:port       a Redis/Valkey Cluster (any node of it);
    rediss+cluster://...                        channels spread over shards (sharded pub/sub)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class BrokerUrlError(ValueError):
    """engine.broker cannot be used; the message is one line."""


@dataclass(frozen=True)
class BrokerUrl:
    url: str = field(repr=False)  # redis-py's from_url form; may hold a password
    cluster: bool
    display: str  # the url without its password, for logs and /healthz

    @property
    def redis_py_url(self) -> str:
        """What redis-py's from_url takes (the cluster schemes spelled as redis/rediss)."""
        return self.url.replace("+cluster://", "://", 1) if self.cluster else self.url


def parse_broker_url(text: str) -> BrokerUrl:
    if not isinstance(text, str) or not text.strip():
        raise BrokerUrlError("engine.broker: expected a URL such as redis://127.0.0.1:6379/0")
    text = text.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise BrokerUrlError(f"engine.broker: not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SINGLE_SCHEMES + CLUSTER_SCHEMES:
        raise BrokerUrlError(f"engine.broker: scheme {parts.scheme or '(none)'}:// is not one of "
                             + ", ".join(s + "://" for s in SINGLE_SCHEMES + CLUSTER_SCHEMES))
    if scheme == "unix":
        if not parts.path:
            raise BrokerUrlError("engine.broker: unix:// needs a socket path, e.g. unix:///run/valkey.sock")
    elif not parts.hostname:
        raise BrokerUrlError(f"engine.broker: {scheme}:// needs a host, e.g. {scheme}://127.0.0.1:6379")
    if scheme in SINGLE_SCHEMES[:2] and parts.path not in ("", "/"):
        db = parts.path.lstrip("/")
        if not db.isdigit():
            raise BrokerUrlError(f"engine.broker: the database must be a number, got /{db}")
    netloc = parts.netloc.rpartition("@")[2]
    display = f"{scheme}://{netloc}{parts.path}"
    return BrokerUrl(url=text, cluster=scheme in CLUSTER_SCHEMES, display=display)
