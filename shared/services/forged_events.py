"""Counting refused (unverifiable) events per claimed agent and tenant; too many open ``forged_events``.

Placeholder of the interface (issue 18, in progress): :func:`note` is called for every recorded rejection
whose ``agent_id`` is unproven (shared/domain/rejections.py UNPROVEN).
"""

from __future__ import annotations

from datetime import datetime

from shared.domain.rejections import Rejected


def note(rejected: Rejected, received_at: datetime) -> None:
    """Count one refused event of ``rejected.agent_id`` / ``rejected.tenant`` (claimed)."""
    del rejected, received_at
