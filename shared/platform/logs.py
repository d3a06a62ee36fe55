"""Structured JSON log lines that Cloud Logging understands (``severity``, ``message``, fields)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.platform import metering

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


@dataclass
class Invocation:
    """One invocation's log line in the making: the entry point adds fields and names the outcome."""

    meter: metering.Meter
    fields: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    level: int = logging.INFO

    def outcome(self, message: str, level: int = logging.INFO, **fields: Any) -> None:
        self.message, self.level = message, level
        self.fields.update(fields)


@contextmanager
def invocation(logger: logging.Logger, failure: str = "failed", **fields: Any) -> Iterator[Invocation]:
    """Meter one invocation and log exactly one line for it, on success or failure.

    The line carries the Firestore reads, writes and conflicts, the publishes and the duration. An
    exception is logged (as ``failure`` at ERROR, unless the entry point named another outcome first)
    and re-raised, so Pub/Sub still redelivers.
    """
    started = time.perf_counter()
    with metering.metered() as meter:
        entry = Invocation(meter, dict(fields))
        try:
            yield entry
        except Exception as exc:
            if entry.message is None:
                entry.outcome(failure, logging.ERROR, outcome="failed", error=f"{type(exc).__name__}: {exc}")
            _emit(logger, entry, started)
            raise
        _emit(logger, entry, started)


def _emit(logger: logging.Logger, entry: Invocation, started: float) -> None:
    meter = entry.meter
    log(
        logger,
        entry.message or "done",
        entry.level,
        firestore_reads=meter.reads,
        firestore_writes=meter.writes,
        firestore_conflicts=meter.conflicts,
        model_registry_reads=meter.registry_reads,
        publishes=meter.publishes,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        **entry.fields,
    )
