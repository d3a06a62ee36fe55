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


#: Field of the agent document an acknowledgement of its ``anomaly`` episode writes (when it was
#: acknowledged): the live step rebases the agent's baseline at its next heartbeat (shared/ml/live.py).
REBASE_MARKER = "ml_rebase_at"
#: What the acknowledgement's audit entry says it did to the baseline.
ACK_REBASE_NOTE = "anomaly acknowledged: baseline re-learned"


def rebases_on_ack(episode: dict[str, Any]) -> bool:
    """Whether acknowledging this episode lets the agent's baseline move: an agent's ``anomaly`` episode."""
    return episode.get("rule") == ANOMALY and bool(episode.get("agent_id"))


def ack_details(episode: dict[str, Any]) -> dict[str, Any]:
    """The audit details of acknowledging ``episode``: what it did to the learned baseline, if anything."""
    return {"baseline": ACK_REBASE_NOTE} if rebases_on_ack(episode) else {}


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
