"""The model registry in Firestore: ``models/{kind}`` names the version in service, and
``models/{kind}/versions/{version}`` records every version trained, where its bytes are (Cloud Storage,
shared/store/model_blobs.py), its features, its evaluation next to the model it was compared with, and
whether it was promoted and why.

Promotion is a transaction on ``models/{kind}`` that succeeds only if the version in service is still
the one the new version was evaluated against, so two retraining runs can never promote over each
other unseen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.platform import metering
from shared.store import db

MODELS = "models"
VERSIONS = "versions"


def pointer_ref(kind: str) -> Any:
    return db.client().collection(MODELS).document(kind)


def version_ref(kind: str, version: str) -> Any:
    return pointer_ref(kind).collection(VERSIONS).document(version)


def pointer(kind: str) -> dict[str, Any] | None:
    """``models/{kind}``: ``current`` (the version in service, or None), ``current_uri``,
    ``current_sha256``, ``promoted_at`` (one read)."""
    doc = db.get(pointer_ref(kind))
    return (doc.to_dict() or {}) if doc.exists else None


def note_load_failure(kind: str, version: str, reason: str, at: datetime) -> None:
    """Record on ``models/{kind}`` that ``version`` failed to load on an instance (the minute job's
    ``fleet_health`` reads it): one write, never raised (serving must not fail over its bookkeeping)."""
    fields = {"load_failure": {"version": version, "reason": reason[:300], "at": at}}
    try:
        pointer_ref(kind).set(fields, merge=True, **db.call_options())
    except Exception:  # Firestore trouble: the failure is logged by the caller already
        return
    metering.count(writes=1)


def clear_load_failure(kind: str, version: str) -> bool:
    """Remove ``load_failure`` from ``models/{kind}`` if it still names ``version`` (an instance has since
    loaded that version): a transaction, so a failure recorded meanwhile for another version (a promotion)
    stays. One read and one write, rare (after a load of a version the pointer showed failing). False when
    there was nothing to clear; never raised (serving must not fail over its bookkeeping)."""
    # lazy: the Firestore client library, only for this rare write (as promote)
    from google.cloud import firestore

    ref = pointer_ref(kind)

    @firestore.transactional
    def run(tx: Any) -> bool:
        snap = ref.get(transaction=tx)
        metering.count(reads=1)
        failure = (snap.to_dict() or {}).get("load_failure") if snap.exists else None
        if not failure or failure.get("version") != version:
            return False
        tx.update(ref, {"load_failure": firestore.DELETE_FIELD})
        metering.count(writes=1)
        return True

    try:
        return bool(run(db.client().transaction()))
    except Exception:  # Firestore trouble: the next successful load clears it, or the hour ages it out
        return False


def record(kind: str, version: str, data: dict[str, Any]) -> bool:
    """Store a version's record once (False when it exists already: a retried run)."""
    ref = version_ref(kind, version)
    return (
        db.unless_changed(lambda: ref.create({**data, "kind": kind, "version": version}, **db.call_options()))
        is not None
    )


def update(kind: str, version: str, changes: dict[str, Any]) -> None:
    version_ref(kind, version).update(changes, **db.call_options())
    metering.count(writes=1)


def promote(kind: str, version: str, uri: str, sha256: str, *, expected: str | None, at: datetime) -> bool:
    """Put ``version`` in service if the one in service is still ``expected``; False otherwise."""
    from google.cloud import firestore

    client = db.client()
    ref = pointer_ref(kind)

    @firestore.transactional
    def run(tx: Any) -> bool:
        snap = ref.get(transaction=tx)
        metering.count(reads=1)
        current = (snap.to_dict() or {}).get("current") if snap.exists else None
        if current != expected:
            return False
        tx.set(
            ref,
            {"kind": kind, "current": version, "current_uri": uri, "current_sha256": sha256, "promoted_at": at},
            merge=True,
        )
        tx.update(version_ref(kind, version), {"promoted": True, "promoted_at": at})
        metering.count(writes=2)
        return True

    return bool(run(client.transaction()))


def versions(kind: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest versions of a kind, newest first."""
    from google.cloud import firestore

    query = (
        pointer_ref(kind).collection(VERSIONS).order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
    )
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [d.to_dict() or {} for d in docs]


RUNS = "model_runs"


def run_ref(run_id: str) -> Any:
    return db.client().collection(RUNS).document(run_id)


def start_run(run_id: str, data: dict[str, Any]) -> bool:
    """Record a retraining run once (False when it exists: the day's run was launched already)."""
    ref = run_ref(run_id)
    return db.unless_changed(lambda: ref.create({**data, "run_id": run_id}, **db.call_options())) is not None


def update_run(run_id: str, changes: dict[str, Any]) -> None:
    run_ref(run_id).set(changes, merge=True, **db.call_options())
    metering.count(writes=1)


def runs(limit: int = 10) -> list[dict[str, Any]]:
    """The newest retraining runs, newest first."""
    from google.cloud import firestore

    query = db.client().collection(RUNS).order_by("started_at", direction=firestore.Query.DESCENDING)
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [d.to_dict() or {} for d in docs]
