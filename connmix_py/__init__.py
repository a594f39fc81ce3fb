"""connmix-py: a long-connection gateway that runs CONNMIX Lua scripts unchanged."""
from .config import ConfigError, Settings, load_settings, parse_settings
from .engine import Engine, StartupError

__all__ = ["Engine", "Settings", "ConfigError", "StartupError", "load_settings", "parse_settings"]
