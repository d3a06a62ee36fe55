"""What the learned models say about one heartbeat, in the domain's terms (no numpy here).

The heartbeat handler asks ``shared.ml.live`` for a :class:`Learned` and hands it to
``agents.apply_heartbeat``, which stores the agent's model state with the agent document and opens or
resolves the two learned alert rules through the ordinary episode path (silences, grouping, Slack).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Episode rules of the learned models.
ANOMALY = "anomaly"
FAILURE_RISK = "failure_risk"

#: ``status`` of an agent's heartbeats as the anomaly model sees them.
UNSCORED = "unscored"  # no model deployed yet (or the agent reports too few metrics)
INSUFFICIENT = "insufficient_data"  # warm-up: fewer heartbeats than the baseline needs
NORMAL = "normal"
ANOMALOUS = "anomalous"


@dataclass(frozen=True)
class Opening:
    rule: str
    severity: str  # shared.domain.alerts.Severity value
    summary: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Resolution:
    rule: str
    summary: str


@dataclass
class Learned:
    """The agent's new model state (stored as ``ml`` in the agent document) and the episodes to change."""

    state: dict[str, Any]
    opens: list[Opening] = field(default_factory=list)
    resolves: list[Resolution] = field(default_factory=list)
