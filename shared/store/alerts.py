"""Cost alerts, raised as alert episodes (shared/store/episodes.py) under the tenant's alerting settings."""

from __future__ import annotations

from shared.domain.alerts import Alert
from shared.domain.episodes import AlertingConfig
from shared.store import config, episodes


def raise_once(alert: Alert) -> bool:
    """True when this call raised the alert; False when it had been raised already (anywhere)."""
    return episodes.raise_once(alert, AlertingConfig.for_tenant(config.tenant(alert.tenant).alerting))
