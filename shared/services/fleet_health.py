"""The fleet watching itself, in the minute job: read the pipeline's own signals (shared/store/fleet_health.py),
judge them (shared/domain/fleet_health.py) and open, escalate or resolve the deployment's ``fleet_health``
episodes, one per kind while its finding lasts.

The episodes are indexed in the ``_fleet`` tenant alert document and written with it in one conditional
batch (shared/store/episodes.py ``update_tenant``, as a root alert): concurrent ticks open each once. Their
notices go through the ordinary outbox, due at once: the tick's result names them (``notices``) and the
minute job sends them at its end (shared/services/sweep.py; a Slack that refuses everything cannot carry
them, which is why they are also listed by ``GET /v1/alerts`` to admin keys and on the console's fleet page).
A failure here is logged and reported in the tick's result, never raised: the watcher must not stop the
minute job it runs in.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared.domain import fleet_health as rules
from shared.ml.serving import KINDS
from shared.platform import logs, settings
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import fleet_health as store

log = logs.get_logger("fleet_health")


def thresholds() -> rules.Thresholds:
    cfg = settings.get()
    return rules.Thresholds(
        dead_letters_per_hour=cfg.health_dead_letters_per_hour,
        rejections_per_hour=cfg.health_rejections_per_hour,
        slack_failures_per_hour=cfg.health_slack_failures_per_hour,
        outbox_late_s=cfg.health_outbox_late_s,
        outbox_pending=cfg.health_outbox_pending,
    )


def run(now: datetime, limits: rules.Thresholds | None = None) -> dict[str, Any]:
    """One tick: the kinds found unhealthy, the episodes opened, escalated and resolved, and the ids of
    the notices written due now (``notices``: for the minute job to send in the same tick)."""
    try:
        return check(now, limits or thresholds())
    except Exception as exc:  # the watcher must not fail the minute job
        logs.log(log, "fleet health not checked", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:500])
        return {"error": type(exc).__name__}


def check(now: datetime, limits: rules.Thresholds) -> dict[str, Any]:
    readings = store.readings(now, limits, sorted(KINDS))
    findings = rules.judge(readings, limits)
    config = config_store.alerting(rules.TENANT)

    def decide(state: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return rules.decide(state, findings, now, config)

    writes = episode_store.update_tenant(rules.TENANT, decide)
    opened = [w.fields["details"]["kind"] for w in writes if w.fields.get("state") == "open"]
    resolved = [w.episode_id for w in writes if w.fields.get("state") == "resolved"]
    escalated = len(writes) - len(opened) - len(resolved)
    for write in writes:
        logs.log(
            log,
            f"fleet_health episode {write.fields.get('state') or 'escalated'}",
            logging.WARNING if write.fields.get("state") != "resolved" else logging.INFO,
            episode_id=write.episode_id,
        )
    return {
        "unhealthy": sorted(k.value for k in findings),
        "opened": opened,
        "escalated": escalated,
        "resolved": resolved,
        "notices": [w.notice["id"] for w in writes if w.notice and w.notice["due_at"] <= now],
    }
