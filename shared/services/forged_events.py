"""Counting refused (unverifiable) events per claimed agent and tenant; too many open ``forged_events``.

:func:`note` is called for every recorded rejection whose ``agent_id`` is unproven (shared/domain/rejections.py
UNPROVEN), after the rejection itself is recorded. What is counted where, and what opens, is decided in
shared/domain/forged_events.py. Here:

- Each count is one Firestore ``Increment`` on a counter document per (scope, UTC hour), in the
  ``markers`` collection (its TTL removes them). The increment's result is the new count, so no read.
  A flood contends on that document: a failed counter write is logged and skipped, never raised (the
  rejection is recorded already, and failing would make Pub/Sub redeliver the flood).
- Past the threshold, the episode is *created* under the scope's id through the cost alerts' path
  (shared/store/episodes.py ``raise_once``): however many instances see the crossing, one opens it, and
  its notice goes out through the outbox the minute job flushes to Slack. It resolves by itself when the
  hour ends. Each instance remembers what it decided for a scope, so a flood costs one counter write per
  event and per scope, and at most one read and one create per instance and scope.
- A Pub/Sub duplicate of a refused event is counted twice (counting exactly once would cost a marker write
  per event); the episode still opens at most once per scope and hour.
- Forged events never touch the claimed agent's security score: a stranger could otherwise get any
  agent quarantined by forging in its name.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain import forged_events as rules
from shared.domain.alerts import Alert
from shared.domain.identity import IdentityConfig
from shared.domain.rejections import Rejected
from shared.platform import logs, metering
from shared.services import notifier
from shared.store import agents as agent_store
from shared.store import config as config_store
from shared.store import db
from shared.store import episodes as episode_store
from shared.store.markers import MARKERS

log = logs.get_logger("forged_events")

#: Counters are kept a day past their hour (the markers' TTL deletes them).
COUNTER_RETENTION = timedelta(days=1)
_lock = threading.Lock()
#: scope key -> whether the agent exists / the tenant has agents (decided once per instance).
_known: dict[str, bool] = {}


def note(rejected: Rejected, received_at: datetime) -> None:
    """Count one refused event of ``rejected.agent_id`` / ``rejected.tenant`` (claimed)."""
    if not rejected.unproven:  # a proven agent's own rejection is not a forgery
        return
    agent_scope, tenant_scope = rules.scopes(rejected, received_at)
    threshold = _threshold(tenant_scope.name if tenant_scope else None)
    now = datetime.now(UTC)
    agent_count = _increment(agent_scope) if agent_scope else None
    agent_has_episode = False
    if agent_scope and rules.crossed(agent_count, threshold):
        agent_has_episode = _agent_episode(agent_scope, agent_count or 0, threshold, rejected, now)
    if tenant_scope and rules.counts_for_tenant(agent_count, threshold, agent_has_episode):
        tenant_count = _increment(tenant_scope)
        if rules.crossed(tenant_count, threshold):
            _tenant_episode(tenant_scope, tenant_count or 0, threshold, rejected, now)


def _threshold(tenant: str | None) -> int:
    """The claimed tenant's threshold; a tenant that does not exist reads as the deployment's defaults."""
    if tenant is None:
        return IdentityConfig.model_validate(config_store.identity_defaults()).forged_events_per_hour
    return config_store.identity(tenant).forged_events_per_hour


def counter_ref(scope: rules.Scope) -> Any:
    return db.client().collection(MARKERS).document(db.doc_id(scope.key))


def _increment(scope: rules.Scope) -> int | None:
    """The scope's count after this event, or None when the counter could not be written."""
    from google.cloud.firestore import Increment

    fields = {
        "key": scope.key,
        "count": Increment(1),
        "hour": scope.hour,
        "expire_at": scope.until + COUNTER_RETENTION,
    }
    try:
        result = counter_ref(scope).set(fields, merge=True, **db.call_options())
    except Exception as exc:  # contention under a flood, or Firestore down: the rejection is recorded
        logs.log(log, "forged_events counter not written", logging.WARNING, scope=scope.key, error=type(exc).__name__)
        return None
    metering.count(writes=1)
    transforms = list(getattr(result, "transform_results", None) or [])
    return int(transforms[0].integer_value) if transforms else None


def _agent_episode(scope: rules.Scope, count: int, threshold: int, rejected: Rejected, now: datetime) -> bool:
    """Open the agent's episode once, if the agent exists: whether it does."""
    known = _remembered(scope.key)
    if known is None:
        record = agent_store.get(scope.name)
        known = record is not None
        if record is not None:
            alert = rules.agent_alert(
                scope, tenant=record.tenant, count=count, threshold=threshold, rejected=rejected, at=now
            )
            _raise(alert)
        _remember(scope.key, known)
    return known


def _tenant_episode(scope: rules.Scope, count: int, threshold: int, rejected: Rejected, now: datetime) -> None:
    if _remembered(scope.key) is not None:
        return
    known = bool(agent_store.ids(scope.name, limit=1))
    _raise(rules.tenant_alert(scope, known=known, count=count, threshold=threshold, rejected=rejected, at=now))
    _remember(scope.key, known)


def _raise(alert: Alert) -> None:
    if episode_store.raise_once(alert):
        logs.log(
            log,
            "forged_events episode opened",
            logging.WARNING,
            episode_id=alert.id,
            tenant=alert.tenant,
            agent_id=alert.agent_id,
        )
        notifier.send_now([alert], by="forged_events")


def _remembered(key: str) -> bool | None:
    with _lock:
        return _known.get(key)


def _remember(key: str, known: bool) -> None:
    with _lock:
        if len(_known) > 10_000:
            _known.clear()
        _known[key] = known


def forget() -> None:
    """Drop what this instance remembered (tests)."""
    with _lock:
        _known.clear()
