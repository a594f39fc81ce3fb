"""connmix.yaml -> typed, validated settings.

CONNMIX's own file loads as it is: keys we do not use are accepted with one
warning each (file:line, and "did you mean" when one of ours is close); every
bad value is collected and start-up stops with one ConfigError holding one
line per problem, each naming the key (and file:line when read from a file).
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import yaml

from .api.host_pattern import HostPattern, parse_host_pattern
from .grid.broker_url import BrokerUrl, BrokerUrlError, parse_broker_url

log = logging.getLogger("connmix.config")

PROTOCOLS = ("websocket", "socket")
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A user mistake in the configuration: one clear line per problem."""

    @property
    def problems(self) -> list[str]:
        return str(self).splitlines()


@dataclass
class LoggingSettings:
    filename: str = "logs/connmix.log"
    max_files: int = 7
    level: str = "debug"
    format: str = "text"  # ours: text, or json (one object per line, for log shippers)


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
    # ours: seconds between two looks at the yaml's mtime (hot configuration), 0 = never.
    config_reload_interval: float = 1.0
    # ours: seconds a stop gives callbacks still waiting (mix.http.request,
    # redis) after every client got its 1001 close; then their waits end.
    shutdown_grace: float = 5.0
    # ours: the Redis-protocol server that joins nodes into a grid; None: one node, in process.
    broker: BrokerUrl | None = None
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


def _log_format(key: str, value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"{key}: expected text or json, got {value!r}")
    return value


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
                 "level": ("level", _level), "format": ("format", _log_format)}
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


def _access(data: Any, report: _Report) -> AccessSettings:
    """access: {users: [{username, password, roles, host}]}."""
    if data is None:
        return AccessSettings()
    if not isinstance(data, dict):
        report.error(f"access: expected a mapping, got {type(data).__name__}")
        return AccessSettings()
    for key in data:
        if key != "users":
            report.unknown(data, key, f"access.{key}", ("users",))
    raw_users = data.get("users") or []
    if not isinstance(raw_users, list):
        report.error("access.users: expected a list of {username, password, roles, host}", data, "users")
        return AccessSettings()
    users: list[AccessUser] = []
    for i, raw in enumerate(raw_users):
        where = f"access.users[{i}]"
        if not isinstance(raw, dict):
            report.error(f"{where}: expected {{username, password, roles, host}}", data, "users")
            continue
        for key in raw:
            if key not in _USER_KEYS:
                report.unknown(raw, key, f"{where}.{key}", _USER_KEYS)
        fields = {key: report.value(raw, key, f"{where}.{key}", check) for key, check in
                  (("username", _credential), ("password", _credential), ("roles", _roles), ("host", _host))}
        if None in fields.values():
            continue  # its errors are reported
        user = AccessUser(**fields)
        if any(other.username == user.username for other in users):
            report.error(f"{where}.username: {user.username!r} is defined twice", raw, "username")
            continue
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


class _Report:
    """Every problem of one document: errors (raised together at the end) and
    warnings (unknown or ignored keys), each with file:line when known."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def where(self, mapping: Any, key: Any) -> str:
        """'file:line: ' when the yaml loader recorded the key's line, else ''."""
        line = getattr(mapping, "lines", {}).get(key)
        return f"{self.source}:{line}: " if line else ""

    def error(self, message: str, mapping: Any = None, key: Any = None) -> None:
        self.errors.append(self.where(mapping, key) + message)

    def value(self, mapping: dict, key: Any, full: str, check: Callable[[str, Any], Any]) -> Any:
        """check(full, mapping[key]); None once its error is recorded."""
        try:
            return check(full, mapping.get(key))
        except ConfigError as exc:
            self.error(str(exc), mapping, key)
            return None

    def unknown(self, mapping: dict, key: Any, full: str, known: Iterable[str]) -> None:
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        self.warnings.append(f"{self.where(mapping, key) or self.source + ': '}"
                             f"unknown key {full} is ignored{hint}")

    def ignored(self, mapping: dict, key: str, full: str, why: str) -> None:
        self.warnings.append(f"{self.where(mapping, key) or self.source + ': '}"
                             f"{full} is accepted for CONNMIX compatibility and ignored: {why}")


def _apply(target: Any, data: Any, keys: dict, where: str, report: _Report,
           sections: Iterable[str] = ()) -> None:
    """Validate data's keys into target's attributes; `sections` are keys
    read elsewhere (neither applied nor unknown)."""
    if data is None:
        return
    if not isinstance(data, dict):
        report.error(f"{where}: expected a mapping, got {type(data).__name__}")
        return
    for key in data:
        if key in sections:
            continue
        full = f"{where}.{key}"
        if key not in keys:
            report.unknown(data, key, full, [*keys, *sections])
            continue
        attr, check = keys[key]
        value = report.value(data, key, full, check)
        if value is not None:
            setattr(target, attr, value)


def _broker(key: str, value: Any) -> BrokerUrl:
    try:
        return parse_broker_url(value)
    except BrokerUrlError as exc:  # its message names engine.broker already
        raise ConfigError(str(exc)) from None


_TOP_KEYS = ("logging", "engine", "access")
_ENGINE_KEYS = {"maxOutboundMessageSize": ("max_outbound_message_size", _positive_int),
                "configReloadInterval": ("config_reload_interval", _seconds),
                "shutdownGrace": ("shutdown_grace", _seconds),
                "broker": ("broker", _broker)}
# Read by their own code.
_ENGINE_SECTIONS = ("apiServer", "servers", "luavm", "access")
# CONNMIX's I/O buffer sizes (gorilla/websocket's): asyncio and the kernel
# size ours, and mapping 1024 onto SO_RCVBUF/SO_SNDBUF would only slow
# clients down; maxMessageSize and maxSendQueue are the bounds that matter.
_IGNORED_SERVER_KEYS = {
    "readBufferSize": "asyncio sizes its reads itself; maxMessageSize/maxPacketSize bound input",
    "writeBufferSize": "asyncio buffers writes itself; maxSendQueue bounds output per client",
}


NO_SERVER = ("engine.servers: no server is configured, so no client could connect "
             "(is it spelled servers:, under engine:?)")


def parse_settings(data: Any, base_dir: str = ".", source: str = "<settings>",
                   require_server: bool = False) -> Settings:
    """Validate a parsed connmix.yaml document. Raises one ConfigError with
    one line per problem; warns once per unknown or ignored key.
    require_server: no server is one of the problems (a file to run; the
    engine refuses it at start anyway, see check_entries)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    settings = Settings(base_dir=os.path.abspath(base_dir), source=source)
    report = _Report(source)
    for key in data:
        if key not in _TOP_KEYS:
            report.unknown(data, key, str(key), _TOP_KEYS)
    _apply(settings.logging, data.get("logging"), _LOGGING_KEYS, "logging", report)
    settings.access = _access(data.get("access"), report)
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        report.error("engine: expected a mapping", data, "engine")
        engine = {}
    if "access" in engine:  # ignoring it would leave the API open to someone who thinks it is not
        report.error("engine.access: access belongs at the top level of connmix.yaml", engine, "access")
    _apply(settings, engine, _ENGINE_KEYS, "engine", report, _ENGINE_SECTIONS)
    _api_server(settings.api_server, engine.get("apiServer"), report)
    _luavm(settings.luavm, engine.get("luavm"), report)
    _servers(settings, engine, report)
    if require_server and not settings.servers and engine.get("servers") in (None, []):
        report.error(NO_SERVER, engine, "servers")
    if not report.errors:  # ports of values that failed would only add noise
        _check_ports(settings, report)
    for line in report.warnings:
        log.warning("%s", line)
    if report.errors:
        raise ConfigError("\n".join(report.errors))
    return settings


def _api_server(api: ApiServerSettings, raw: Any, report: _Report) -> None:
    _apply(api, raw, _API_KEYS, "engine.apiServer", report)
    if not isinstance(raw, dict):
        return
    # Go's ReadTimeout bounds reading a whole request; the head has
    # handshakeTimeout, so it becomes the body's bound unless that is set.
    if "readTimeout" in raw and "bodyTimeout" not in raw:
        if api.read_timeout > 0:
            api.body_timeout = api.read_timeout
        else:
            report.ignored(raw, "readTimeout", "engine.apiServer.readTimeout",
                           f"0 (no limit) is not offered; request bodies keep bodyTimeout {api.body_timeout:g}s")
    if "writeTimeout" in raw:
        report.ignored(raw, "writeTimeout", "engine.apiServer.writeTimeout",
                       "API responses are small and written without a deadline")


def _luavm(luavm: LuaVmSettings, raw: Any, report: _Report) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        report.error("engine.luavm: expected a mapping")
        return
    _apply(luavm, raw, _LUAVM_KEYS, "engine.luavm", report, _LUAVM_SECTIONS)
    _apply(luavm, raw.get("queue"), _QUEUE_KEYS, "engine.luavm.queue", report)
    _apply(luavm, raw.get("http"), _HTTP_KEYS, "engine.luavm.http", report)
    redis = raw.get("redis") or []
    if not isinstance(redis, list):
        report.error("engine.luavm.redis: expected a list", raw, "redis")
        return
    for i, entry_raw in enumerate(redis):
        entry = RedisSettings()
        _apply(entry, entry_raw, _REDIS_KEYS, f"engine.luavm.redis[{i}]", report)
        if any(other.name == entry.name for other in luavm.redis):
            report.error(f"engine.luavm.redis[{i}].name: {entry.name!r} is defined twice", entry_raw, "name")
            continue
        luavm.redis.append(entry)


def _servers(settings: Settings, engine: dict, report: _Report) -> None:
    servers = engine.get("servers") or []
    if not isinstance(servers, list):
        report.error("engine.servers: expected a list", engine, "servers")
        return
    for i, raw in enumerate(servers):
        server = ServerSettings()
        _apply(server, raw, _SERVER_KEYS, f"engine.servers[{i}]", report)
        server.entry, server.entry_candidates = resolve_entry(server.entry, settings.base_dir)
        settings.servers.append(server)
    for key, why in _IGNORED_SERVER_KEYS.items():  # once per key, at its first use
        first = next((i for i, raw in enumerate(servers) if isinstance(raw, dict) and key in raw), None)
        if first is not None:
            report.ignored(servers[first], key, f"engine.servers[{first}].{key}", why)


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


def _check_ports(settings: Settings, report: _Report) -> None:
    """Two listeners on one port (0, any free port, excepted)."""
    owners = {settings.api_server.port: "engine.apiServer.port"} if settings.api_server.port else {}
    for i, server in enumerate(settings.servers):
        key = f"engine.servers[{i}].port"
        if server.port in owners:
            report.error(f"{key}: port {server.port} is already used by {owners[server.port]}")
        elif server.port:
            owners[server.port] = key


class _Located(dict):
    """A yaml mapping that remembers the line of each of its keys."""
    lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, with mappings that know their keys' lines."""


def _located_mapping(loader: _LineLoader, node: yaml.MappingNode):
    data = _Located()
    yield data  # first, as PyYAML's own: anchors may refer to it
    data.update(loader.construct_mapping(node))
    data.lines = {loader.construct_object(key): key.start_mark.line + 1 for key, _ in node.value}


_LineLoader.add_constructor("tag:yaml.org,2002:map", _located_mapping)


def _yaml_problem(path: str, exc: yaml.MarkedYAMLError) -> str:
    """file:line: what is wrong, in words, and where the broken part began."""
    mark = exc.problem_mark
    where = f"{path}:{mark.line + 1}" if mark else path
    text = f"{where}: invalid yaml: {exc.problem or exc}"
    if mark:
        text += f" (column {mark.column + 1})"
    if exc.context and exc.context_mark and (mark is None or exc.context_mark.line != mark.line):
        text += f", {exc.context} that starts at line {exc.context_mark.line + 1}"
    if "\\t" in str(exc.problem):
        text += "; YAML indents with spaces, never tabs"
    elif "<block" in str(exc.problem):  # PyYAML's words for an indentation mistake
        text += "; check this line's indentation against the lines above"
    return text


def load_settings(path: str) -> Settings:
    """Read and validate a connmix.yaml file. Raises ConfigError."""
    try:
        with open(path, "rb") as f:  # bytes: yaml detects the encoding and reports bad bytes
            data = yaml.load(f, Loader=_LineLoader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.reader.ReaderError as exc:  # bad bytes: no line to point at
        raise ConfigError(f"{path}: not {exc.encoding} text at byte {exc.position}: {exc.reason}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid yaml: {exc}") from None
    return parse_settings(data, base_dir=os.path.dirname(os.path.abspath(path)), source=path,
                          require_server=True)


def check_entries(settings: Settings) -> None:
    """There is a server and every entry script exists; raises one
    ConfigError naming the key of each problem."""
    if not settings.servers:
        raise ConfigError(NO_SERVER)
    missing = [f"engine.servers[{i}].entry: file not found: "
               + " or ".join(server.entry_candidates or (server.entry,))
               for i, server in enumerate(settings.servers) if not os.path.isfile(server.entry)]
    if missing:
        raise ConfigError("\n".join(missing))
