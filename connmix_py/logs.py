"""Logging set-up for the commands: console always, a daily file for single."""
from __future__ import annotations

import logging
import logging.handlers
import os

from .config import ConfigError, Settings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_console(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)


def apply(settings: Settings, mode: str) -> None:
    """dev: debug to the console; single/engine: the yaml's level, also to its file."""
    root = logging.getLogger()
    if mode == "dev":
        root.setLevel(logging.DEBUG)
        return
    root.setLevel(LEVELS[settings.logging.level])
    path = os.path.join(settings.base_dir, settings.logging.filename)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=settings.logging.max_files, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"logging.filename: cannot open {path}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
