"""connmix.yaml -> Settings: CONNMIX's file loads as it is, every bad value
is one ConfigError naming its key, unknown keys warn once each."""
from __future__ import annotations

import logging
import os
import textwrap

import pytest
import yaml

from connmix_py.checker import log_file_problem
from connmix_py.config import ConfigError, check_entries, load_settings, parse_settings

# The configuration reference of SPEC section 2, as CONNMIX users write it.
CONNMIX_YAML = """
logging:   { filename: logs/connmix.log, maxFiles: 7, level: debug }
access:
  users:
    - { username: u, password: p, roles: [read, write], host: "172.*.*.*" }
engine:
  apiServer: { port: 6789, bind: 0.0.0.0, readTimeout: 60, writeTimeout: 60 }
  luavm:
    queue: { topicSize: 2000, maxTopics: 100 }
  servers:
    - port: 6790
      bind: 0.0.0.0
      protocol: websocket
      options:
        - { name: path, value: /chat }
        - { name: greeting, value: hi }
      entry: lua/entry.websocket.lua
      byteCodeExpires: 10
      readBufferSize: 1024
      writeBufferSize: 1024
      readTimeout: 60
      writeTimeout: 10
"""


def parse(text: str, base_dir: str = "/srv/app"):
    return parse_settings(yaml.safe_load(text), base_dir=base_dir, source="connmix.yaml")


def one_server(**keys) -> dict:
    server = {"port": 6790, "entry": "entry.lua"}
    server.update(keys)
    return {"engine": {"servers": [server]}}


def test_connmix_reference_file_loads_warning_only_of_ignored_keys(caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no lua/ in the working directory: the yaml's folder's path stands
    with caplog.at_level(logging.WARNING, logger="connmix.config"):
        settings = parse(CONNMIX_YAML)
    # Accepted for compatibility, no effect: said once each, not silently.
    ignored = sorted(r.getMessage().split(" is accepted")[0] for r in caplog.records)
    assert ignored == ["connmix.yaml: engine.apiServer.writeTimeout", "connmix.yaml: engine.servers[0].readBufferSize",
                       "connmix.yaml: engine.servers[0].writeBufferSize"]
    assert all("for CONNMIX compatibility and ignored: " in r.getMessage() for r in caplog.records)
    assert (settings.logging.level, settings.logging.max_files) == ("debug", 7)
    assert (settings.api_server.port, settings.api_server.read_timeout) == (6789, 60.0)
    server = settings.servers[0]
    assert (server.port, server.bind, server.protocol) == (6790, "0.0.0.0", "websocket")
    assert server.path == "/chat"
    assert server.options["greeting"] == "hi"
    assert server.entry == "/srv/app/lua/entry.websocket.lua"  # relative to the yaml's folder
    assert (server.read_timeout, server.write_timeout, server.byte_code_expires) == (60.0, 10.0, 10.0)


def test_defaults_are_connmix_defaults():
    settings = parse_settings({"engine": {"servers": [{}]}})
    assert settings.api_server.port == 6789
    server = settings.servers[0]
    assert (server.port, server.protocol, server.path) == (6790, "websocket", "/")
    assert (server.read_timeout, server.write_timeout) == (60, 10)
    assert parse_settings(None).servers == []


def test_unknown_keys_warn_once_each_and_load(caplog):
    data = one_server(bogus=1, other=2)
    data["extra"] = {"a": 1}
    data["engine"]["apiServer"] = {"port": 1, "shiny": True}
    with caplog.at_level(logging.WARNING, logger="connmix.config"):
        settings = parse_settings(data, source="connmix.yaml")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    for key in ("engine.servers[0].bogus", "engine.servers[0].other", "extra", "engine.apiServer.shiny"):
        assert sum(key in m for m in messages) == 1, (key, messages)
    assert settings.servers[0].port == 6790


@pytest.mark.parametrize("keys, named", [
    ({"port": "6790"}, "engine.servers[0].port"),
    ({"port": True}, "engine.servers[0].port"),
    ({"port": -1}, "engine.servers[0].port"),
    ({"protocol": "mqtt"}, "engine.servers[0].protocol"),
    ({"bind": ""}, "engine.servers[0].bind"),
    ({"entry": 5}, "engine.servers[0].entry"),
    ({"readTimeout": "60s"}, "engine.servers[0].readTimeout"),
    ({"writeTimeout": -2}, "engine.servers[0].writeTimeout"),
    ({"maxMessageSize": 0}, "engine.servers[0].maxMessageSize"),
    ({"maxSendQueue": 1.5}, "engine.servers[0].maxSendQueue"),
    ({"options": {"path": "/x"}}, "engine.servers[0].options"),
    ({"options": [{"value": 1}]}, "engine.servers[0].options[0]"),
    ({"options": [{"name": "path", "value": "chat"}]}, "engine.servers[0].options"),
])
def test_bad_server_value_names_its_key(keys, named):
    with pytest.raises(ConfigError) as error:
        parse_settings(one_server(**keys))
    message = str(error.value)
    assert message.startswith(named + ":"), message
    assert "\n" not in message


@pytest.mark.parametrize("data, named", [
    ([1, 2], "connmix.yaml"),
    ({"engine": [1]}, "engine"),
    ({"engine": {"servers": {"port": 1}}}, "engine.servers"),
    ({"engine": {"servers": ["x"]}}, "engine.servers[0]"),
    ({"engine": {"apiServer": {"port": 70000}}}, "engine.apiServer.port"),
    ({"logging": {"level": "loud"}}, "logging.level"),
    ({"logging": {"maxFiles": 0}}, "logging.maxFiles"),
    ({"logging": "debug"}, "logging"),
])
def test_bad_section_names_its_key(data, named):
    with pytest.raises(ConfigError) as error:
        parse_settings(data, source="connmix.yaml")
    assert str(error.value).startswith(named + ":"), str(error.value)


def test_one_port_for_two_listeners_names_the_second():
    data = {"engine": {"apiServer": {"port": 7000},
                       "servers": [{"port": 7001}, {"port": 7000}]}}
    with pytest.raises(ConfigError, match=r"^engine\.servers\[1\]\.port: port 7000 .*engine\.apiServer\.port"):
        parse_settings(data)
    data["engine"]["servers"][1]["port"] = 7001
    with pytest.raises(ConfigError, match=r"^engine\.servers\[1\]\.port: .*engine\.servers\[0\]\.port"):
        parse_settings(data)
    parse_settings({"engine": {"apiServer": {"port": 0}, "servers": [{"port": 0}, {"port": 0}]}})


def test_missing_entry_file_names_the_key(tmp_path):
    settings = parse_settings(one_server(entry="lua/none.lua"), base_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^engine\.servers\[0\]\.entry: file not found: .*none\.lua"):
        check_entries(settings)


def test_load_settings_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("engine:\n  servers:\n    - port: [1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid yaml"):
        load_settings(str(broken))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"engine: \xff\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not utf-8 text at byte 8"):
        load_settings(str(binary))


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "connmix.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_unknown_keys_name_file_line_and_the_close_key(tmp_path, caplog):
    path = write_yaml(tmp_path, """\
        logging: { level: info }
        engine:
          server:
            - port: 6790
          apiServer:
            readTimout: 30
            colour: blue
        """)
    with caplog.at_level(logging.WARNING, logger="connmix.config"), \
            pytest.raises(ConfigError, match="^engine.servers: no server is configured"):
        load_settings(path)  # the typo leaves no server: refused, the warnings say why
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"{path}:3: unknown key engine.server is ignored; did you mean servers?",
        f"{path}:6: unknown key engine.apiServer.readTimout is ignored; did you mean readTimeout?",
        f"{path}:7: unknown key engine.apiServer.colour is ignored",
    ]


def test_every_problem_is_reported_each_with_file_line(tmp_path):
    path = write_yaml(tmp_path, """\
        logging: { level: loud }
        access:
          users:
            - { username: u, password: 1234, roles: [admin] }
        engine:
          servers:
            - port: -1
              protocol: mqtt
            - port: 6791
              readTimeout: soon
        """)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert error.value.problems == [
        f"{path}:1: logging.level: expected one of debug, info, warn, error, got 'loud'",
        f"{path}:4: access.users[0].password: expected a non-empty string (quote numbers)",
        f"{path}:4: access.users[0].roles: unknown role 'admin' (expected read or write)",
        f"{path}:7: engine.servers[0].port: expected a port number 0-65535, got -1",
        f"{path}:8: engine.servers[0].protocol: unknown protocol 'mqtt' (expected websocket or socket)",
        f"{path}:10: engine.servers[1].readTimeout: expected a number of seconds >= 0, got 'soon'",
    ]
    assert "1234" not in str(error.value)


@pytest.mark.parametrize("text, expected", [
    ("engine:\n  servers:\n    - entry: 'lua/a.lua\n      port: 1\n",
     r"connmix\.yaml:5: invalid yaml: found unexpected end of stream \(column 1\), "
     r"while scanning a quoted scalar that starts at line 3$"),
    ("engine:\n\tservers: []\n",
     r"connmix\.yaml:2: invalid yaml: found character '\\t' that cannot start any token \(column 1\)"
     r".*; YAML indents with spaces, never tabs$"),
    ("engine:\n  servers:\n  - port: 1\n   bind: x\n",
     r"connmix\.yaml:4: invalid yaml: expected <block end>, but found '<block mapping start>' \(column 4\), "
     r"while parsing a block mapping that starts at line 2; check this line's indentation"),
])
def test_yaml_syntax_errors_name_file_line_in_words(tmp_path, text, expected):
    path = tmp_path / "connmix.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as error:
        load_settings(str(path))
    assert len(error.value.problems) == 1


def test_no_server_at_all_is_an_error():
    settings = parse_settings({"engine": {"server": [{"port": 6790}]}})
    with pytest.raises(ConfigError, match=r"^engine\.servers: no server is configured"):
        check_entries(settings)


@pytest.mark.parametrize("text", ["engines:\n  servers: [{port: 1}]\n", "engine:\n  servers: []\n", ""])
def test_a_file_without_servers_is_refused_with_its_other_problems(tmp_path, text):
    path = write_yaml(tmp_path, "logging: {level: loud}\n" + text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    level, servers = error.value.problems
    assert level.startswith(f"{path}:1: logging.level: ")
    assert "engine.servers: no server is configured" in servers


def test_every_missing_entry_is_reported(tmp_path):
    settings = parse_settings({"engine": {"servers": [{"port": 1, "entry": "a.lua"}, {"port": 2, "entry": "b.lua"}]}},
                              base_dir=str(tmp_path))
    with pytest.raises(ConfigError) as error:
        check_entries(settings)
    assert [p.split(":")[0] for p in error.value.problems] == ["engine.servers[0].entry", "engine.servers[1].entry"]


@pytest.mark.parametrize("api, body_timeout, warned", [
    ({"readTimeout": 30}, 30.0, False),            # Go's ReadTimeout: the whole request; the head has its own
    ({"readTimeout": 30, "bodyTimeout": 5}, 5.0, False),  # ours, when given, wins
    ({"readTimeout": 0}, 60.0, True),              # "no limit" is not offered: said, not silent
    ({}, 60.0, False),
])
def test_api_read_timeout_bounds_the_request_body(caplog, api, body_timeout, warned):
    with caplog.at_level(logging.WARNING, logger="connmix.config"):
        settings = parse_settings({"engine": {"apiServer": api}})
    assert settings.api_server.body_timeout == body_timeout
    assert any("readTimeout" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize("filename, problem", [
    ("logs/connmix.log", None),
    ("logs", "is a folder"),
    ("blocker/connmix.log", "blocker is a file, not a folder"),
    ("blocker/deeper/connmix.log", "blocker is a file, not a folder"),
])
def test_check_catches_a_log_file_that_cannot_be_opened(tmp_path, filename, problem):
    (tmp_path / "logs").mkdir()
    (tmp_path / "blocker").write_text("")
    settings = parse_settings({"logging": {"filename": filename}}, base_dir=str(tmp_path))
    found = log_file_problem(settings)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith("logging.filename: ") and problem in found


def test_load_settings_resolves_entry_beside_the_file(tmp_path):
    path = tmp_path / "conf" / "connmix.yaml"
    path.parent.mkdir()
    path.write_text("engine:\n  servers:\n    - entry: lua/app.lua\n")
    settings = load_settings(str(path))
    assert settings.servers[0].entry == os.path.join(str(tmp_path), "conf", "lua", "app.lua")


# -- access.users ----------------------------------------------------------------------------------


def test_access_users_load_with_their_roles_and_host():
    users = parse(CONNMIX_YAML).access.users
    assert [(u.username, u.password, sorted(u.roles), u.host.text) for u in users] == \
        [("u", "p", ["read", "write"], "172.*.*.*")]
    assert users[0].host.matches("172.1.2.3") and not users[0].host.matches("127.0.0.1")


def test_access_defaults_no_users_and_any_host():
    assert parse_settings({}).access.users == ()
    assert parse_settings({"access": {"users": None}}).access.users == ()  # CONNMIX's file: all commented out
    user, = parse_settings({"access": {"users": [{"username": "u", "password": "p", "roles": ["read"]}]}}).access.users
    assert user.host.text == "*" and user.host.matches("2001:db8::1")


def _user(**keys) -> dict:
    user = {"username": "u", "password": "p", "roles": ["read"]}
    user.update(keys)
    return {"access": {"users": [user]}}


@pytest.mark.parametrize("data, named", [
    ({"access": [1]}, "access"),
    ({"access": {"users": {"username": "u"}}}, "access.users"),
    ({"access": {"users": ["u:p"]}}, "access.users[0]"),
    (_user(username=None), "access.users[0].username"),
    (_user(username="a:b"), "access.users[0].username"),
    (_user(password=None), "access.users[0].password"),
    (_user(password=123456), "access.users[0].password"),
    (_user(password=""), "access.users[0].password"),
    (_user(roles=None), "access.users[0].roles"),
    (_user(roles=[]), "access.users[0].roles"),
    (_user(roles="read"), "access.users[0].roles"),
    (_user(roles=["read", "admin"]), "access.users[0].roles"),
    (_user(host="172.*"), "access.users[0].host"),
    (_user(host="300.1.1.1"), "access.users[0].host"),
    (_user(host=172), "access.users[0].host"),
    ({"access": {"users": [_user()["access"]["users"][0]] * 2}}, "access.users[1].username"),
    ({"engine": {"access": {"users": []}}}, "engine.access"),
])
def test_bad_access_value_names_its_key(data, named):
    with pytest.raises(ConfigError) as error:
        parse_settings(data, source="connmix.yaml")
    message = str(error.value)
    assert message.startswith(named + ":"), message
    assert "\n" not in message and "123456" not in message


def test_unknown_access_keys_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="connmix.config"):
        data = _user(extra=1)
        data["access"]["mode"] = 1
        parse_settings(data)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "access.mode" in messages and "access.users[0].extra" in messages
