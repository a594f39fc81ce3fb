"""Logging: the yaml's level, ``logging.filename`` rotated daily keeping
``maxFiles`` files, text or JSON lines (``logging.format``), and the
per-connection logger.

The commands call ``setup_console`` then ``apply``; a program embedding the
Engine calls ``configure(settings)`` to get the same file and level.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
from datetime import UTC, datetime
from typing import Any, MutableMapping

from .config import ConfigError, Settings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Marks the file handler configure() added, so a second call replaces it.
_OURS = "connmix_log_file"
# Attributes every LogRecord has: anything else on a record is an extra.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time (UTC, ISO 8601),
    level, logger, message and the record's extras (client_id, remote ...)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``logging.format`` (text or json)."""
    return JsonFormatter() if kind == "json" else logging.Formatter(FORMAT)


class ConnectionLog(logging.LoggerAdapter):
    """One connection's logger: its client id and remote address go into
    every line, in the text and as extras (fields of a JSON line)."""

    def __init__(self, logger: logging.Logger, client_id: str, remote: str) -> None:
        super().__init__(logger, {"client_id": client_id, "remote": remote})
        self.prefix = f"client {client_id} ({remote}): "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return self.prefix + str(msg), kwargs


def open_file(settings: Settings) -> logging.Handler:
    """A handler writing ``logging.filename`` (relative to the yaml's folder),
    rotated at midnight keeping ``maxFiles`` old files. Raises ConfigError."""
    path = os.path.join(settings.base_dir, settings.logging.filename)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=settings.logging.max_files, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"logging.filename: cannot open {path}: {exc.strerror or exc}") from None
    handler.setFormatter(formatter(settings.logging.format))
    return handler


def configure(settings: Settings, logger: str = "connmix", level: int | None = None) -> logging.Handler:
    """Log as the yaml says: ``logger`` (the engine's, by default; "" for
    every logger) at ``logging.level`` (or ``level``) into ``logging.filename``.
    Calling it again (a reload) replaces the file handler it added before.
    Returns that handler; raises ConfigError when the file cannot be opened."""
    target = logging.getLogger(logger)
    handler = open_file(settings)
    setattr(handler, _OURS, True)
    for old in [h for h in target.handlers if getattr(h, _OURS, False)]:
        target.removeHandler(old)
        old.close()
    target.addHandler(handler)
    target.setLevel(LEVELS[settings.logging.level] if level is None else level)
    return handler


def setup_console(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)


def apply(settings: Settings, mode: str) -> None:
    """The commands: every logger to the console and the file, in the yaml's
    format; dev at debug level, single at the yaml's."""
    configure(settings, "", logging.DEBUG if mode == "dev" else None)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(settings.logging.format))
