"""The models in service, loaded lazily and cached per function instance.

``current(kind)`` returns the version the registry names (``models/{kind}.current``), loading its bytes
from Cloud Storage the first time. An instance checks the registry again every ``model_refresh_s``
seconds (one Firestore read per kind per instance per period), so a promoted model is picked up without
a redeploy. When the registry or the bytes cannot be read, or the bytes do not load, the instance keeps
serving the model it has (or none) and logs why; scoring never fails a heartbeat. Loading verifies the
model's stored self-check with the scorer that will serve (shared/ml/provenance.py): a model that fails it
is refused the same way (``reason: self_check_failed``, with the largest deviation), and, since the same
bytes would fail again, the instance remembers the refusal instead of downloading that version every period.

A failed load is recorded on the registry pointer (``load_failure``, which the minute job's ``fleet_health``
check reads), but not on every failed refresh of every instance: only when the pointer does not already show
the same version failing within :data:`FAILURE_REWRITE` (the promotion's transaction reads that document).
A later successful load of that version clears it (one conditional write), so a transient failure does not
keep the ``model_load`` episode open for the rest of its hour.

Loaders build models from their safe formats (``.npz`` with pickles disabled) without their
scikit-learn objects: serving uses the flattened trees, so scikit-learn is never imported here.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.platform import logs, metering, settings
from shared.store import model_blobs
from shared.store import models as registry

log = logs.get_logger("ml.serving")

#: Model kinds: the class whose ``from_bytes`` loads one (``module:Class``), and its keyword that would
#: also load the scikit-learn object (serving never does: the flattened trees score).
KINDS: dict[str, tuple[str, str]] = {
    "anomaly": ("shared.ml.anomaly:AnomalyDetector", "load_forest"),
    "failure": ("shared.ml.failure:FailurePredictor", "load_model"),
    "task_assignment": ("shared.ml.assign:TaskModel", "load_model"),
}


@dataclass(frozen=True)
class Loaded:
    kind: str
    version: str
    model: Any


#: A failure the pointer already shows for the same version is written again only after this long (the
#: minute job looks back an hour, so a lasting failure stays visible).
FAILURE_REWRITE = timedelta(minutes=5)

_lock = threading.Lock()
_served: dict[str, Loaded | None] = {}
_checked: dict[str, float] = {}
#: (kind, version) refused by their self-check, and why.
_refused: dict[tuple[str, str], str] = {}


def loader(kind: str) -> Callable[[bytes], Any]:
    path, sklearn_flag = KINDS[kind]
    module, _, cls = path.partition(":")
    from_bytes: Callable[..., Any] = getattr(importlib.import_module(module), cls).from_bytes
    return lambda data: from_bytes(data, **{sklearn_flag: False})


def fetch(kind: str, pointer: dict[str, Any]) -> tuple[Any, int]:
    """The model a registry pointer names, and its size: its bytes from Cloud Storage, checked against the
    recorded hash, loaded without its scikit-learn object (the serving cache and the retraining job)."""
    data = model_blobs.get(str(pointer["current_uri"]), pointer.get("current_sha256"))
    return loader(kind)(data), len(data)


def current(kind: str) -> Loaded | None:
    """The model of ``kind`` in service (None until one was promoted)."""
    refresh = settings.get().model_refresh_s
    now = time.monotonic()
    if kind in _checked and now - _checked[kind] < refresh:
        return _served.get(kind)
    with _lock:
        if kind in _checked and time.monotonic() - _checked[kind] < refresh:
            return _served.get(kind)
        _served[kind] = _refresh(kind, _served.get(kind))
        _checked[kind] = time.monotonic()
        return _served[kind]


def _refresh(kind: str, served: Loaded | None) -> Loaded | None:
    try:
        pointer = registry.pointer(kind)
        metering.count_registry_read()
    except Exception as exc:  # Firestore trouble: keep what we have, try again next period
        logs.log(log, "model registry unreadable", logging.WARNING, kind=kind, error=f"{type(exc).__name__}: {exc}")
        return served
    if not pointer or not pointer.get("current"):
        return None
    version = pointer["current"]
    if (served is not None and served.version == version) or (kind, str(version)) in _refused:
        return served
    started = time.perf_counter()
    try:
        model, size = fetch(kind, pointer)
    except Exception as exc:
        # lazy: numpy stays off the API's import of this module (the model's own module has loaded it by now)
        from shared.ml import provenance

        failure = provenance.load_failure(exc)
        if failure["reason"] in (provenance.SELF_CHECK_FAILED, provenance.INCOMPATIBLE):
            _refused[(kind, str(version))] = str(exc)  # not fetched again: its bytes will not change
        logs.log(
            log,
            "model not loaded; keeping the one in service",
            logging.ERROR,
            kind=kind,
            version=version,
            serving=served.version if served else None,
            **failure,
            error=f"{type(exc).__name__}: {exc}"[:500],
        )
        # Durable for the minute job's fleet_health check (the log line is this instance's alone).
        now = datetime.now(UTC)
        if not noted_recently(pointer, str(version), now):
            registry.note_load_failure(kind, str(version), f"{failure['reason']} ({type(exc).__name__})", now)
        return served
    if (pointer.get("load_failure") or {}).get("version") == str(version):
        registry.clear_load_failure(kind, str(version))  # loaded fine now: the failure was transient
    logs.log(
        log,
        "model loaded",
        logging.INFO,
        kind=kind,
        version=version,
        previous=served.version if served else None,
        bytes=size,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Loaded(kind, str(version), model)


def noted_recently(pointer: dict[str, Any], version: str, now: datetime) -> bool:
    """Whether the pointer already shows ``version`` failing, recorded less than :data:`FAILURE_REWRITE` ago."""
    noted = pointer.get("load_failure") or {}
    at = noted.get("at")
    return noted.get("version") == version and isinstance(at, datetime) and timedelta(0) <= now - at < FAILURE_REWRITE


def reset() -> None:
    """Forget every cached model (tests)."""
    with _lock:
        _served.clear()
        _checked.clear()
        _refused.clear()
