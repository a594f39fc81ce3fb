"""connmix.yaml -> typed, validated settings.

CONNMIX's own file loads as it is: keys we do not use are accepted with one
warning each; a bad value stops start-up with a ConfigError naming the key.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .api.host_pattern import HostPattern, parse_host_pattern

log = logging.getLogger("connmix.config")

PROTOCOLS = ("websocket", "socket")
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


class ConfigError(Exception):
    """A user mistake in the configuration; the message is one clear line."""


@dataclass
class LoggingSettings:
    filename: str = "logs/connmix.log"
    max_files: int = 7
    level: str = "debug"


@dataclass
class ApiServerSettings:
    port: int = 6789
    bind: str = "0.0.0.0"
    read_timeout: float = 60
    write_timeout: float = 60
    # ours (see ServerSettings), and the seconds a request body may take to arrive.
    handshake_timeout: float = 10
    body_timeout: float = 60
    max_connections: int = 0


@dataclass
class ServerSettings:
    port: int = 6790
    bind: str = "0.0.0.0"
    protocol: str = "websocket"
    options: dict[str, Any] = field(default_factory=dict)
    entry: str = "lua/entry.websocket.lua"  # absolute after loading
    # The paths tried for a relative entry, in order (see resolve_entry).
    entry_candidates: tuple[str, ...] = ()
    byte_code_expires: float = 10
    read_buffer_size: int = 1024
    write_buffer_size: int = 1024
    read_timeout: float = 60
    write_timeout: float = 10
    # ours: the largest frame a client may send, and the most bytes that may
    # wait in one connection's send queue before it is closed as too slow.
    max_message_size: int = 1024 * 1024
    max_send_queue: int = 4 * 1024 * 1024
    # ours, socket servers: the most input bytes a connection may buffer
    # without protocol_input finding a complete packet in them.
    max_packet_size: int = 1024 * 1024
    # ours: seconds from accept (or the previous response) for an HTTP request's
    # line and headers (websocket servers, apiServer); seconds an unfinished
    # packet may take to complete (socket servers); open connections per
    # server, 0 = no limit.
    handshake_timeout: float = 10
    packet_timeout: float = 60
    max_connections: int = 0

    @property
    def path(self) -> str:
        return str(self.options.get("path", "/"))


@dataclass
class RedisSettings:
    name: str = "default"
    addr: str = "localhost:6379"
    password: str = ""
    db: int = 0
    pool_size: int = 20


@dataclass
class LuaVmSettings:
    # ours: seconds a callback may run before it is stopped (per run between
    # waits, in CPU and in wall-clock time), and Lua memory per VM in MB;
    # sandbox leaves untrusted scripts pure Lua and mix (lua/sandbox.lua).
    cpu_budget: float = 1.0
    memory_budget: int = 256
    sandbox: bool = False
    queue_topic_size: int = 2000
    queue_max_topics: int = 100
    # ours: the largest mix.http.request response body, as sent and
    # decompressed (bytes); a bigger one is `nil, err`.
    http_max_body_size: int = 16 * 1024 * 1024
    redis: list[RedisSettings] = field(default_factory=list)


ROLES = ("read", "write")


@dataclass(frozen=True)
class AccessUser:
    username: str
    password: str = field(repr=False)  # never in a repr, so never in a log line
    roles: frozenset[str] = frozenset()
    host: HostPattern = field(default_factory=lambda: parse_host_pattern("*"))


@dataclass(frozen=True)
class AccessSettings:
    """access.users; no users = the API is open. Replaced whole on reload."""
    users: tuple[AccessUser, ...] = ()


@dataclass
class Settings:
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    api_server: ApiServerSettings = field(default_factory=ApiServerSettings)
    luavm: LuaVmSettings = field(default_factory=LuaVmSettings)
    servers: list[ServerSettings] = field(default_factory=list)
    # ours: the largest payload one publish or send may carry (any API, Lua,
    # Python); a bigger one is refused up front instead of reaching clients.
    max_outbound_message_size: int = 16 * 1024 * 1024
    # ours: seconds a stop gives callbacks still waiting (mix.http.request,
    # redis) after every client got its 1001 close; then their waits end.
    shutdown_grace: float = 5.0
    base_dir: str = "."
    source: str = "<settings>"


# yaml key -> (attribute, kind) per section; kind is a type or a validator.
def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


def _port(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{key}: expected a port number 0-65535, got {value!r}")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{key}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _positive_seconds(key: str, value: Any) -> float:
    if _seconds(key, value) <= 0:
        raise ConfigError(f"{key}: expected a number of seconds > 0, got {value!r}")
    return float(value)


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: expected an integer >= 0, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _level(key: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ConfigError(f"{key}: expected one of debug, info, warn, error, got {value!r}")
    return value.lower()


def _protocol(key: str, value: Any) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(f"{key}: unknown protocol {value!r} (expected websocket or socket)")
    return value


def _options(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of {{name, value}} entries")
    options: dict[str, Any] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{key}[{i}]: expected {{name: <string>, value: ...}}")
        options[item["name"]] = item.get("value")
    if "path" in options and (not isinstance(options["path"], str) or not options["path"].startswith("/")):
        raise ConfigError(f"{key}: the path option must start with '/', got {options['path']!r}")
    return options


_LOGGING_KEYS = {"filename": ("filename", _string), "maxFiles": ("max_files", _positive_int),
                 "level": ("level", _level)}
_API_KEYS = {"port": ("port", _port), "bind": ("bind", _string),
             "readTimeout": ("read_timeout", _seconds), "writeTimeout": ("write_timeout", _seconds),
             "handshakeTimeout": ("handshake_timeout", _positive_seconds),
             "bodyTimeout": ("body_timeout", _positive_seconds),
             "maxConnections": ("max_connections", _non_negative_int)}
_SERVER_KEYS = {
    "port": ("port", _port), "bind": ("bind", _string), "protocol": ("protocol", _protocol),
    "options": ("options", _options), "entry": ("entry", _string),
    "byteCodeExpires": ("byte_code_expires", _seconds),
    "readBufferSize": ("read_buffer_size", _positive_int),
    "writeBufferSize": ("write_buffer_size", _positive_int),
    "readTimeout": ("read_timeout", _seconds), "writeTimeout": ("write_timeout", _seconds),
    "maxMessageSize": ("max_message_size", _positive_int),
    "maxSendQueue": ("max_send_queue", _positive_int),
    "maxPacketSize": ("max_packet_size", _positive_int),
    "handshakeTimeout": ("handshake_timeout", _positive_seconds),
    "packetTimeout": ("packet_timeout", _positive_seconds),
    "maxConnections": ("max_connections", _non_negative_int),
}
def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


_LUAVM_KEYS = {"cpuBudget": ("cpu_budget", _positive_seconds),
               "memoryBudget": ("memory_budget", _positive_int),
               "sandbox": ("sandbox", _flag)}
_QUEUE_KEYS = {"topicSize": ("queue_topic_size", _positive_int),
               "maxTopics": ("queue_max_topics", _positive_int)}
# Sections CONNMIX has that later parts of the engine read; accepted silently here.
_KNOWN_SECTIONS = {"luavm", "broker"}
_HTTP_KEYS = {"maxBodySize": ("http_max_body_size", _positive_int)}
_LUAVM_SECTIONS = {"queue", "http", "redis"}


def _addr(key: str, value: Any) -> str:
    host, _, port = str(value).rpartition(":")
    if not isinstance(value, str) or not host or not port.isdigit():
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return value


def _password(key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


_REDIS_KEYS = {"name": ("name", _string), "addr": ("addr", _addr), "password": ("password", _password),
               "db": ("db", _non_negative_int), "poolSize": ("pool_size", _positive_int)}


_USER_KEYS = ("username", "password", "roles", "host")


def _access(data: Any, warn: set[str]) -> AccessSettings:
    """access: {users: [{username, password, roles, host}]}."""
    if data is None:
        return AccessSettings()
    if not isinstance(data, dict):
        raise ConfigError(f"access: expected a mapping, got {type(data).__name__}")
    warn.update(f"access.{key}" for key in data if key != "users")
    raw_users = data.get("users") or []
    if not isinstance(raw_users, list):
        raise ConfigError("access.users: expected a list of {username, password, roles, host}")
    users: list[AccessUser] = []
    for i, raw in enumerate(raw_users):
        where = f"access.users[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected {{username, password, roles, host}}")
        warn.update(f"{where}.{key}" for key in raw if key not in _USER_KEYS)
        user = AccessUser(username=_credential(f"{where}.username", raw.get("username")),
                          password=_credential(f"{where}.password", raw.get("password")),
                          roles=_roles(f"{where}.roles", raw.get("roles")),
                          host=_host(f"{where}.host", raw.get("host", "*")))
        if any(other.username == user.username for other in users):
            raise ConfigError(f"{where}.username: {user.username!r} is defined twice")
        users.append(user)
    return AccessSettings(tuple(users))


def _credential(key: str, value: Any) -> str:
    # A number is refused rather than converted: yaml reads 0123 as 83.
    if not isinstance(value, str) or not value:
        shown = "" if key.endswith("password") else f", got {value!r}"  # a password is never echoed
        raise ConfigError(f"{key}: expected a non-empty string (quote numbers){shown}")
    if key.endswith("username") and ":" in value:
        raise ConfigError(f"{key}: a username cannot contain ':' (basic auth splits on it)")
    return value


def _roles(key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a list of roles, read and/or write")
    for role in value:
        if role not in ROLES:
            raise ConfigError(f"{key}: unknown role {role!r} (expected read or write)")
    return frozenset(value)


def _host(key: str, value: Any) -> HostPattern:
    if value is None:
        value = "*"
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    try:
        return parse_host_pattern(value.strip())
    except ValueError as exc:
        raise ConfigError(f"{key}: {value!r}: {exc}") from None


def _apply(target: Any, data: Any, keys: dict, where: str, warn: set[str]) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        full = f"{where}.{key}"
        if key not in keys:
            warn.add(full)
            continue
        attr, check = keys[key]
        setattr(target, attr, check(full, value))


def parse_settings(data: Any, base_dir: str = ".", source: str = "<settings>") -> Settings:
    """Validate a parsed connmix.yaml document. Raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    settings = Settings(base_dir=os.path.abspath(base_dir), source=source)
    unknown: set[str] = set()
    for key in data:
        if key not in ("logging", "engine", "access"):
            unknown.add(key)
    _apply(settings.logging, data.get("logging"), _LOGGING_KEYS, "logging", unknown)
    settings.access = _access(data.get("access"), unknown)
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        raise ConfigError("engine: expected a mapping")
    if "access" in engine:  # ignoring it would leave the API open to someone who thinks it is not
        raise ConfigError("engine.access: access belongs at the top level of connmix.yaml")
    for key in engine:
        if (key not in ("apiServer", "servers", "maxOutboundMessageSize", "shutdownGrace")
                and key not in _KNOWN_SECTIONS):
            unknown.add(f"engine.{key}")
    if "maxOutboundMessageSize" in engine:
        settings.max_outbound_message_size = _positive_int(
            "engine.maxOutboundMessageSize", engine["maxOutboundMessageSize"])
    if "shutdownGrace" in engine:
        settings.shutdown_grace = _seconds("engine.shutdownGrace", engine["shutdownGrace"])
    _apply(settings.api_server, engine.get("apiServer"), _API_KEYS, "engine.apiServer", unknown)
    luavm = engine.get("luavm") or {}
    if not isinstance(luavm, dict):
        raise ConfigError("engine.luavm: expected a mapping")
    _apply(settings.luavm, {k: v for k, v in luavm.items() if k not in _LUAVM_SECTIONS},
           _LUAVM_KEYS, "engine.luavm", unknown)
    _apply(settings.luavm, luavm.get("queue"), _QUEUE_KEYS, "engine.luavm.queue", unknown)
    _apply(settings.luavm, luavm.get("http"), _HTTP_KEYS, "engine.luavm.http", unknown)
    redis = luavm.get("redis") or []
    if not isinstance(redis, list):
        raise ConfigError("engine.luavm.redis: expected a list")
    for i, raw in enumerate(redis):
        entry = RedisSettings()
        _apply(entry, raw, _REDIS_KEYS, f"engine.luavm.redis[{i}]", unknown)
        if any(other.name == entry.name for other in settings.luavm.redis):
            raise ConfigError(f"engine.luavm.redis[{i}].name: {entry.name!r} is defined twice")
        settings.luavm.redis.append(entry)
    servers = engine.get("servers") or []
    if not isinstance(servers, list):
        raise ConfigError("engine.servers: expected a list")
    for i, raw in enumerate(servers):
        server = ServerSettings()
        _apply(server, raw, _SERVER_KEYS, f"engine.servers[{i}]", unknown)
        server.entry, server.entry_candidates = resolve_entry(server.entry, settings.base_dir)
        settings.servers.append(server)
    _check_ports(settings)
    for key in sorted(unknown):
        log.warning("%s: unknown key %s is ignored", source, key)
    return settings


def resolve_entry(entry: str, yaml_dir: str) -> tuple[str, tuple[str, ...]]:
    """(the entry's absolute path, the paths tried). A relative entry is
    looked up in the working directory first, as CONNMIX does (its layout:
    ``connmix dev -f conf/connmix.yaml`` from the install root, ``lua/``
    beside ``conf/``), then in the yaml's folder. When neither exists the
    yaml's folder's path stands, for the error."""
    candidates = tuple(dict.fromkeys(os.path.normpath(os.path.join(folder, entry))
                                     for folder in (os.getcwd(), yaml_dir)))
    found = next((path for path in candidates if os.path.isfile(path)), candidates[-1])
    return found, candidates


def _check_ports(settings: Settings) -> None:
    """Two listeners on one port (0, any free port, excepted)."""
    owners = {settings.api_server.port: "engine.apiServer.port"} if settings.api_server.port else {}
    for i, server in enumerate(settings.servers):
        key = f"engine.servers[{i}].port"
        if server.port in owners:
            raise ConfigError(f"{key}: port {server.port} is already used by {owners[server.port]}")
        if server.port:
            owners[server.port] = key


def load_settings(path: str) -> Settings:
    """Read and validate a connmix.yaml file. Raises ConfigError."""
    try:
        with open(path, "rb") as f:  # bytes: yaml detects the encoding and reports bad bytes
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        if isinstance(exc, yaml.reader.ReaderError):  # bad bytes: no line to point at
            raise ConfigError(f"{path}: not {exc.encoding} text at byte {exc.position}: "
                              f"{exc.reason}") from None
        raise ConfigError(f"{where}: invalid yaml: {getattr(exc, 'problem', None) or exc}") from None
    return parse_settings(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path)


def check_entries(settings: Settings) -> None:
    """Every entry script must exist; raises ConfigError naming the key."""
    for i, server in enumerate(settings.servers):
        if not os.path.isfile(server.entry):
            tried = " or ".join(server.entry_candidates or (server.entry,))
            raise ConfigError(f"engine.servers[{i}].entry: file not found: {tried}")
