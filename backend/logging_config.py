"""Logging for every PropLabel process (web, workers, management commands), chosen by the environment.

``LOG_FORMAT=plain`` (default): one readable line per record. ``LOG_FORMAT=json``: one JSON object per line
(``ts``, ``level``, ``logger``, ``message``, ``process``, ``thread``, ``exc_info`` and any ``extra=`` fields),
for log shippers (Loki, Elasticsearch, Cloud Logging) that index fields instead of parsing text.
``LOG_LEVEL`` sets the root level. A typo in either fails loudly at start-up instead of logging nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured

FORMATS = ("plain", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; whatever else is on a record came from ``extra=`` and is worth keeping.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object; values JSON cannot encode become their ``repr``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=repr, ensure_ascii=False)


def build_logging(log_format: str = "plain", level: str = "INFO") -> dict[str, Any]:
    """The ``LOGGING`` dict for ``settings.py``.

    Args:
        log_format: ``plain`` or ``json`` (case-insensitive).
        level: a standard level name for the root logger.

    Raises:
        ImproperlyConfigured: unknown format or level.
    """
    log_format = log_format.strip().lower() or "plain"
    level = level.strip().upper() or "INFO"
    if log_format not in FORMATS:
        raise ImproperlyConfigured(f"LOG_FORMAT={log_format!r} is not one of {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ImproperlyConfigured(f"LOG_LEVEL={level!r} is not one of {', '.join(LEVELS)}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
            "json": {"()": "backend.logging_config.JsonFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format}},
        "root": {"handlers": ["console"], "level": level},
    }
