"""Settings from the environment; secrets from Secret Manager in Google Cloud, env vars locally."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    project: str
    #: Heartbeats buffered in the agent document before they are flushed to one history chunk.
    history_chunk_size: int
    #: History chunks kept per agent (a ring): chunk_size * slots heartbeats of history.
    history_slots: int
    #: Days after which history chunks and rejections expire (Firestore TTL).
    retention_days: int
    #: A heartbeat for an unknown agent is retried this long (its registration may be in flight).
    unknown_agent_grace_s: int
    #: Agent documents cached per instance (saves the read on every heartbeat); about 8 KB each.
    agent_cache_size: int
    #: Seconds a verified API key is trusted before it is checked again (revocation delay).
    api_key_cache_s: int
    #: Seconds tenant settings, prices and agents' budgets are cached by the cost function.
    config_cache_s: int
    #: Shards of each tenant's usage documents (each agent always writes the same one).
    tenant_shards: int
    #: Seconds after a hold from which an agent still sending calls is told again (its command was lost).
    resend_after_s: int
    #: Cloud Storage bucket of the learned models' bytes (their registry is in Firestore, ``models``).
    models_bucket: str
    #: Seconds a function instance serves a model before it checks the registry for a newer version.
    model_refresh_s: int
    #: Whether the heartbeat function runs the learned models (``FLEET_ML_SCORING=off`` turns them off).
    ml_scoring: bool
    #: Signature policy of a tenant whose settings name none: ``required`` (unsigned events refused) or
    #: ``optional`` (a migration: unsigned agents are accepted and shown as such).
    identity_policy: str
    #: Seconds an agent's previous key stays valid after a rotation (events already in flight).
    key_overlap_s: int
    #: Refused (unverifiable) events per claimed agent, or per tenant, in an hour that open ``forged_events``.
    forged_events_per_hour: int
    #: Whether a function that opens or escalates a critical or emergency alert sends its notice itself,
    #: right after its commit (``FLEET_ALERTS_AT_ONCE=off``: the minute job sends it, as before issue 21).
    alerts_at_once: bool
    #: Budget leases (shared/domain/leases.py): the longest an epoch lives without a new grant; how long
    #: after its expiry its unspent part returns to the pool (batches still in flight); how many seconds
    #: of the agent's recent spend a lease covers; the smallest lease (nano-dollars, tokens); and the
    #: share of a lease a batch may pass before ``lease_exceeded`` (a price changed mid-lease, rounding).
    lease_ttl_s: int
    lease_grace_s: int
    lease_horizon_s: int
    lease_min_usd_nanos: int
    lease_min_tokens: int
    lease_tolerance: float
    #: Budget forecast (shared/domain/budget_forecast.py): a ``budget_forecast`` episode opens when a daily or
    #: monthly hard limit is projected within this many seconds at the current spend rate; 0 turns it off.
    budget_forecast_horizon_s: int
    #: The fleet watching itself (shared/domain/fleet_health.py): a ``fleet_health`` episode opens past these
    #: (in the last hour: dead letters, other rejections, notices Slack refused; right now: notices pending
    #: more than this many seconds past their due time, or more than this many pending); 0 turns one off.
    health_dead_letters_per_hour: int
    health_rejections_per_hour: int
    health_slack_failures_per_hour: int
    health_outbox_late_s: int
    health_outbox_pending: int
    #: Leases carry each model's price parts (``ModelPrice.parts``: cache, reasoning, tiers), so an SDK debits a
    #: call exactly rather than at the ceiling. Off by default: an SDK before it refuses a lease with them (its
    #: messages refuse unknown fields); turn it on once every agent runs an SDK that reads them.
    lease_price_parts: bool = False


@cache
def get() -> Settings:
    return Settings(
        project=_project(),
        history_chunk_size=_int("FLEET_HISTORY_CHUNK", 10),
        history_slots=_int("FLEET_HISTORY_SLOTS", 432),
        retention_days=_int("FLEET_RETENTION_DAYS", 14),
        unknown_agent_grace_s=_int("FLEET_UNKNOWN_AGENT_GRACE_S", 30),
        agent_cache_size=_int("FLEET_AGENT_CACHE_SIZE", 5000),
        api_key_cache_s=_int("FLEET_API_KEY_CACHE_S", 30),
        config_cache_s=_int("FLEET_CONFIG_CACHE_S", 10),
        tenant_shards=_int("FLEET_TENANT_SHARDS", 8),
        resend_after_s=_int("FLEET_RESEND_AFTER_S", 10),
        models_bucket=os.environ.get("FLEET_MODELS_BUCKET") or f"{_project()}-fleet-models",
        model_refresh_s=_int("FLEET_MODEL_REFRESH_S", 300),
        ml_scoring=os.environ.get("FLEET_ML_SCORING", "on").lower() not in ("off", "0", "false", "no"),
        identity_policy=os.environ.get("FLEET_IDENTITY_POLICY", "required"),
        key_overlap_s=_int("FLEET_KEY_OVERLAP_S", 600),
        forged_events_per_hour=_int("FLEET_FORGED_EVENTS_PER_HOUR", 10),
        alerts_at_once=os.environ.get("FLEET_ALERTS_AT_ONCE", "on").lower() not in ("off", "0", "false", "no"),
        lease_ttl_s=_int("FLEET_LEASE_TTL_S", 300),
        lease_grace_s=_int("FLEET_LEASE_GRACE_S", 60),
        lease_horizon_s=_int("FLEET_LEASE_HORIZON_S", 300),
        lease_min_usd_nanos=_int("FLEET_LEASE_MIN_USD_NANOS", 10_000_000),
        lease_min_tokens=_int("FLEET_LEASE_MIN_TOKENS", 4096),
        lease_tolerance=float(os.environ.get("FLEET_LEASE_TOLERANCE", "0.01")),
        budget_forecast_horizon_s=_int("FLEET_BUDGET_FORECAST_HORIZON_S", 3 * 3600),
        health_dead_letters_per_hour=_int("FLEET_HEALTH_DEAD_LETTERS_PER_HOUR", 10),
        health_rejections_per_hour=_int("FLEET_HEALTH_REJECTIONS_PER_HOUR", 1000),
        health_slack_failures_per_hour=_int("FLEET_HEALTH_SLACK_FAILURES_PER_HOUR", 3),
        health_outbox_late_s=_int("FLEET_HEALTH_OUTBOX_LATE_S", 600),
        health_outbox_pending=_int("FLEET_HEALTH_OUTBOX_PENDING", 500),
        lease_price_parts=os.environ.get("FLEET_LEASE_PRICE_PARTS", "off").lower() in ("on", "1", "true", "yes"),
    )


def _project() -> str:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT") or "fleet-local"


def secret(name: str) -> str | None:
    """A secret's value: the env var of the same name (upper-case) locally, Secret Manager in Google Cloud.

    Never log the returned value.
    """
    env_name = name.upper().replace("-", "_")
    if env_name in os.environ:
        return os.environ[env_name]
    if os.environ.get("FLEET_SECRETS_BACKEND") != "secretmanager":
        return None
    from google.cloud import secretmanager  # type: ignore[attr-defined,unused-ignore]

    client = secretmanager.SecretManagerServiceClient()
    path = f"projects/{get().project}/secrets/{name}/versions/latest"
    return str(client.access_secret_version(name=path).payload.data.decode())
