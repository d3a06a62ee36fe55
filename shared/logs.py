"""Structured JSON log lines that Cloud Logging understands (``severity``, ``message``, fields)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: Field names (or suffixes) that hold secrets. ``tokens_per_s`` is a metric, not a secret.
_REDACT = ("authorization", "api_key", "token", "secret", "password", "signing_secret")
_configured = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARNING",
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(redact(fields))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """Blank every field whose name says it holds a secret."""
    return {k: ("[redacted]" if _secret_name(k) else v) for k, v in fields.items()}


@functools.cache
def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(lowered == word or lowered.endswith("_" + word) for word in _REDACT)


def get_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger("fleet")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        _configured = True
    return logging.getLogger(f"fleet.{name}")


def log(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})
