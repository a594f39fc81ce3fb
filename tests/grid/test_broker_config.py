"""engine.broker in connmix.yaml: parsed into settings, one line per mistake,
never the password in what is shown."""
from __future__ import annotations

import pytest

from connmix_py.config import ConfigError, load_settings, parse_settings
from connmix_py.hot_config import restart_keys


def test_a_broker_url_is_parsed_and_shown_without_its_password():
    settings = parse_settings({"engine": {"broker": "redis://:s3cret@10.0.0.5:6380/2"}})
    assert settings.broker is not None
    assert settings.broker.display == "redis://10.0.0.5:6380/2"
    assert "s3cret" not in repr(settings.broker)
    assert parse_settings({}).broker is None


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:6379", "scheme http:// is not one of"),
    ("redis://", "needs a host"),
    ("redis://127.0.0.1:6379/zero", "the database must be a number"),
    ("redis://127.0.0.1:99999/0", "not a URL"),
    ("", "expected a URL"),
])
def test_a_bad_broker_url_is_one_line_naming_file_line_and_key(tmp_path, url, problem):
    path = tmp_path / "connmix.yaml"
    path.write_text(f"engine:\n  broker: '{url}'\n  servers:\n    - port: 0\n")
    with pytest.raises(ConfigError) as error:
        load_settings(str(path))
    [line] = error.value.problems
    assert line.startswith(f"{path}:2: engine.broker: ")
    assert problem in line


def test_changing_the_broker_waits_for_a_restart():
    running = parse_settings({"engine": {"broker": "redis://127.0.0.1:6379/0"}})
    new = parse_settings({"engine": {"broker": "redis://127.0.0.1:6380/0"}})
    assert restart_keys(running, new) == {"engine.broker"}
