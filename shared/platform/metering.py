"""A meter of one invocation's Firestore reads and writes and Pub/Sub publishes.

The stores count every document they read and write, the publishers every message; the entry points
open a meter per invocation (through ``logs.invocation``) so each log line says what the event cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Meter:
    reads: int = 0
    writes: int = 0
    #: Writes refused by a precondition (another writer got there first); not billed as writes.
    conflicts: int = 0
    #: Messages published (commands to agents).
    publishes: int = 0
    #: Of ``reads``, those of the model registry (an instance checks it once per refresh period).
    registry_reads: int = 0


_meter: ContextVar[Meter | None] = ContextVar("firestore_meter", default=None)


@contextmanager
def metered() -> Iterator[Meter]:
    meter = Meter()
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def count(reads: int = 0, writes: int = 0, conflicts: int = 0) -> None:
    meter = _meter.get()
    if meter is not None:
        meter.reads += reads
        meter.writes += writes
        meter.conflicts += conflicts


def count_registry_read() -> None:
    """A read (already counted) that was the model registry's periodic check."""
    meter = _meter.get()
    if meter is not None:
        meter.registry_reads += 1


def count_publish(n: int = 1) -> None:
    meter = _meter.get()
    if meter is not None:
        meter.publishes += n
