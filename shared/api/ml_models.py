"""The REST API's view of the learned models: ``GET /v1/models`` lists every kind with the version in
service, its recent versions with their evaluations (next to the model each was compared with) and the
decision taken, and the recent retraining runs. Read-only, for keys not scoped to a tenant (the models
are fleet-wide); the registry is written by jobs/retrain.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.api import core
from shared.api.core import ApiError, Call, Param, Routes
from shared.ml.serving import KINDS
from shared.store import models as store

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class ModelVersion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: str
    created_at: datetime | None = None
    uri: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    #: The new version's evaluation on held-out recent data ...
    metrics: dict[str, Any] = {}
    #: ... and that of the version in service it was compared with, on the same data (None: nothing was).
    compared_with: str | None = None
    current_metrics: dict[str, Any] | None = None
    decision: str | None = None
    reason: str | None = None
    promoted: bool = False
    promoted_at: datetime | None = None
    features: list[str] | None = None
    trained_rows: int | None = None
    agents: int | None = None
    train_seconds: float | None = None
    run_id: str | None = None
    #: The scikit-learn and numpy releases that trained it (None: stored before they were recorded).
    trained_with: dict[str, str | None] | None = None


class ModelKind(BaseModel):
    kind: str
    #: The version in service (None until one is promoted).
    current: str | None = None
    promoted_at: datetime | None = None
    versions: list[ModelVersion]


class RetrainRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str
    state: str | None = None
    backend: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    results: dict[str, Any] = {}
    history: dict[str, Any] = {}
    error: str | None = None


class ModelList(BaseModel):
    items: list[ModelKind]
    runs: list[RetrainRun]


_PARAMS = (
    Param("kind", "query", "Only this kind.", {"type": "string", "enum": list(KINDS)}),
    core.int_param("limit", f"Versions per kind and runs, 1 to {MAX_LIMIT}.", DEFAULT_LIMIT, MAX_LIMIT),
)

routes = Routes("models")


@routes.get("/v1/models", ModelList, params=_PARAMS, errors=(400, 403))
def list_models(call: Call) -> ModelList:
    """The learned models: the version in service per kind, recent versions with their evaluations and
    the promotion decision, and recent retraining runs."""
    if core.principal(call).tenant is not None:
        # Fleet-wide: the registry counts every tenant's agents and rows.
        raise ApiError(403, "the models are fleet-wide: this API key only sees its tenant")
    kind = core.query(call.request, "kind")
    if kind is not None and kind not in KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(KINDS)}")
    limit = core.bounded_int(call.request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    items = []
    for name in [kind] if kind else list(KINDS):
        pointer = store.pointer(name) or {}
        items.append(
            ModelKind(
                kind=name,
                current=pointer.get("current"),
                promoted_at=pointer.get("promoted_at"),
                versions=[ModelVersion.model_validate(v) for v in store.versions(name, limit)],
            )
        )
    return ModelList(items=items, runs=[RetrainRun.model_validate(r) for r in store.runs(limit=limit)])
