"""Tenant settings (``tenants/{tenant}``: budget, protection, price, alerting, health-rule and
remediation-policy overrides) and the fleet's price overrides (``prices/{model}``), cached per instance;
the price catalog under both is shared/store/price_catalog.py.

The cost function reads budgets and prices on every batch: cached for ``FLEET_CONFIG_CACHE_S``. The
alerting and health-rule settings, read on every heartbeat and by the minute job, change rarely:
cached for ``RULES_CACHE_S``. A change through the API is seen by every instance within the cache
time (the API itself re-evaluates holds at once).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from shared.domain.episodes import AlertingConfig, merged
from shared.domain.health import HealthConfig
from shared.domain.identity import IdentityConfig
from shared.domain.pricing import Price, PriceTable
from shared.domain.remediation_policy import RemediationPolicy
from shared.platform import metering, settings
from shared.store import db, price_catalog

if TYPE_CHECKING:
    from shared.domain.jobs import JobsConfig

TENANTS = "tenants"
PRICES = "prices"
T = TypeVar("T")


@dataclass(frozen=True)
class TenantConfig:
    tenant: str
    budget: dict[str, Any] | None
    budget_source: str | None
    protection: dict[str, Any]
    prices: dict[str, Price]
    #: Overrides of the alerting and health-rule settings (shared/domain/episodes.py, health.py).
    alerting: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    #: Overrides of the training-job settings (shared/domain/jobs.py JobsConfig).
    jobs: dict[str, Any] = field(default_factory=dict)
    #: Overrides of the task-assignment settings (shared/domain/assignment_tasks.py AssignmentConfig).
    tasks: dict[str, Any] = field(default_factory=dict)
    #: Overrides of the identity settings (shared/domain/identity.py IdentityConfig): the signature policy.
    identity: dict[str, Any] = field(default_factory=dict)
    #: Overrides of the remediation policy (shared/domain/remediation_policy.py RemediationPolicy).
    remediation: dict[str, Any] = field(default_factory=dict)


class _TtlCache:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T], max_age_s: float) -> T:
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] < max_age_s:
            return hit[1]
        value = load()
        with self._lock:
            self._items[key] = (time.monotonic(), value)
        return value

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


cache = _TtlCache()


_PARTS = ("cache_read_usd", "cache_write_usd", "reasoning_usd")  # an override's optional parts


def price_of(data: dict[str, Any]) -> Price:
    read, write, reasoning = (None if data.get(k) is None else Decimal(str(data[k])) for k in _PARTS)
    return Price(Decimal(str(data["input_usd"])), Decimal(str(data["output_usd"])), read, write, reasoning)


def price_doc(price: Price) -> dict[str, str | None]:
    """An override as stored; a part it does not set is stored as null (a PUT replaces the whole price)."""
    parts = {k: None if getattr(price, k) is None else str(getattr(price, k)) for k in _PARTS}
    return {"input_usd": str(price.input_usd), "output_usd": str(price.output_usd), **parts}


def _tenant_ref(tenant: str) -> Any:
    return db.client().collection(TENANTS).document(tenant)


def read_tenant(tenant: str) -> TenantConfig:
    doc = db.get(_tenant_ref(tenant))
    data = (doc.to_dict() or {}) if doc.exists else {}
    return TenantConfig(
        tenant=tenant,
        budget=data.get("budget"),
        budget_source=data.get("budget_source"),
        protection=dict(data.get("protection") or {}),
        prices={model: price_of(p) for model, p in (data.get("prices") or {}).items()},
        alerting=dict(data.get("alerting") or {}),
        health=dict(data.get("health") or {}),
        jobs=dict(data.get("jobs") or {}),
        tasks=dict(data.get("tasks") or {}),
        identity=dict(data.get("identity") or {}),
        remediation=dict(data.get("remediation") or {}),
    )


def tenant(name: str) -> TenantConfig:
    return cache.get(f"tenant:{name}", lambda: read_tenant(name), settings.get().config_cache_s)


#: Seconds an instance keeps a tenant's alerting and health-rule settings: about one read a minute
#: per tenant and instance on the heartbeat path, instead of one every ``FLEET_CONFIG_CACHE_S``.
RULES_CACHE_S = 60.0


def rules(name: str) -> tuple[HealthConfig, AlertingConfig]:
    """The tenant's health thresholds and alerting settings, over the defaults."""
    found = cache.get(f"rules:{name}", lambda: read_tenant(name), RULES_CACHE_S)
    return _rules(json.dumps(found.health, sort_keys=True), json.dumps(found.alerting, sort_keys=True))


def identity(name: str) -> IdentityConfig:
    """The tenant's identity settings over the deployment's defaults, from the same cached read as
    :func:`rules` (no read of its own on the heartbeat path)."""
    found = cache.get(f"rules:{name}", lambda: read_tenant(name), RULES_CACHE_S)
    return _identity(json.dumps(found.identity, sort_keys=True))


def remediation(name: str) -> RemediationPolicy:
    """The tenant's remediation policy over the defaults, from the same cached read as :func:`rules`
    (no read of its own on the heartbeat path or in the sweep)."""
    found = cache.get(f"rules:{name}", lambda: read_tenant(name), RULES_CACHE_S)
    return _remediation(json.dumps(found.remediation, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _remediation(overrides: str) -> RemediationPolicy:
    return RemediationPolicy.for_tenant(json.loads(overrides))


def identity_defaults() -> dict[str, Any]:
    cfg = settings.get()
    return {"policy": cfg.identity_policy, "forged_events_per_hour": cfg.forged_events_per_hour}


@functools.lru_cache(maxsize=256)
def _identity(overrides: str) -> IdentityConfig:
    return IdentityConfig.model_validate({**identity_defaults(), **json.loads(overrides)})


def alerting(name: str) -> AlertingConfig:
    return rules(name)[1]


@functools.lru_cache(maxsize=256)
def _rules(health: str, alerting: str) -> tuple[HealthConfig, AlertingConfig]:
    """Validated once per distinct settings (not on every heartbeat)."""
    return HealthConfig.for_tenant(json.loads(health)), AlertingConfig.for_tenant(
        {**alerting_defaults(), **json.loads(alerting)}
    )


def alerting_defaults() -> dict[str, Any]:
    """This deployment's Slack channels under every tenant's overrides: ``FLEET_SLACK_ALERTS_CHANNEL`` and
    ``FLEET_SLACK_APPROVALS_CHANNEL`` (Terraform sets them from its variables)."""
    out: dict[str, Any] = {}
    if os.environ.get("FLEET_SLACK_ALERTS_CHANNEL"):
        out["default_channel"] = os.environ["FLEET_SLACK_ALERTS_CHANNEL"]
    if os.environ.get("FLEET_SLACK_APPROVALS_CHANNEL"):
        out["approvals_channel"] = os.environ["FLEET_SLACK_APPROVALS_CHANNEL"]
    return out


def forget(name: str) -> None:
    """Drop this instance's cached copies of the tenant's settings (after it changed them)."""
    cache.drop(f"tenant:{name}")
    cache.drop(f"rules:{name}")


def update_tenant(name: str, fields: dict[str, Any]) -> None:
    """Replace whole top-level fields of the tenant document (creating it); forget the cached copy.

    ``merge=[fields]`` rather than ``merge=True``: a new budget replaces the old one instead of being
    merged into it key by key.
    """
    db.client().collection(TENANTS).document(name).set(fields, merge=list(fields), **db.call_options())  # type: ignore[arg-type]  # the client accepts field paths
    metering.count(writes=1)
    forget(name)


def set_tenant_price(name: str, model: str, price: Price) -> None:
    from google.cloud.firestore_v1.field_path import FieldPath

    path = FieldPath("prices", model).to_api_repr()
    _tenant_ref(name).set({"tenant": name}, merge=True, **db.call_options())
    _tenant_ref(name).update({path: price_doc(price)}, **db.call_options())
    metering.count(writes=2)
    forget(name)


# -- the fleet's price overrides and the catalog --------------------------------------------------


def read_prices() -> dict[str, Price]:
    """Every fleet override (``PUT /v1/prices/{model}``, collection ``prices``)."""
    docs = list(db.client().collection(PRICES).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    out = {}
    for doc in docs:
        data = doc.to_dict() or {}
        out[str(data.get("model") or doc.id)] = price_of(data)
    return out


def global_prices() -> dict[str, Price]:
    """The fleet's overrides, cached for ``FLEET_CONFIG_CACHE_S``."""
    prices: dict[str, Price] = cache.get("prices", read_prices, settings.get().config_cache_s)
    return prices


def table_for(tenant_config: TenantConfig) -> PriceTable:
    """The tenant's overrides, then the fleet's, then the catalog (genai-prices, bundled)."""
    return PriceTable(
        prices=global_prices(),
        tenant_prices={tenant_config.tenant: tenant_config.prices},
        catalog=price_catalog.catalog,
    )


def fleet_table() -> PriceTable:
    """The fleet's overrides, then the catalog (no tenant's)."""
    return PriceTable(prices=global_prices(), catalog=price_catalog.catalog)


def set_price(model: str, price: Price) -> None:
    db.client().collection(PRICES).document(db.doc_id(model)).set(
        {"model": model, **price_doc(price)}, **db.call_options()
    )
    metering.count(writes=1)
    cache.drop("prices")


def job_defaults() -> dict[str, Any]:
    """This deployment's defaults under every tenant's overrides: ``FLEET_JOB_BACKENDS`` (comma list)
    and ``FLEET_JOB_DEFAULT_BACKEND`` (the local stack sets ``local``)."""
    out: dict[str, Any] = {}
    if backends := os.environ.get("FLEET_JOB_BACKENDS"):
        out["backends"] = [b.strip() for b in backends.split(",") if b.strip()]
    if default := os.environ.get("FLEET_JOB_DEFAULT_BACKEND"):
        out["default_backend"] = default
    return out


def jobs(name: str) -> JobsConfig:
    """The tenant's training-job settings: its overrides over the deployment's defaults (cached)."""
    # lazy: the job models (pydantic, with the launchers' types) stay off the heartbeat's cold start
    from shared.domain.jobs import JobsConfig

    found = tenant(name)
    return JobsConfig.model_validate(merged(JobsConfig, {**job_defaults(), **found.jobs}))
