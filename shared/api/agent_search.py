"""Agent search, for ``GET /v1/agents`` and the bulk actions (shared/api/bulk.py): the query's filters
checked, the tenant scope of the key applied, Firestore's part of the filtering
(shared/store/agent_search.py) and, on each page, the part no index serves (the security score)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN
from fleet_agent.messages.fields import NAME_PATTERN

from shared.api import core
from shared.api.core import ApiError, Param
from shared.domain.agent_record import AgentRecord, Liveness
from shared.domain.health import HealthConfig, score_at
from shared.domain.lifecycle import State
from shared.store import agent_search
from shared.store.agent_search import Filters
from shared.store.api_keys import Principal

_STATES = tuple(s.value for s in State)
_RUNGS = tuple(r.value for r in Liveness)
_DEFAULT_HEALTH = HealthConfig()
_NAME = re.compile(NAME_PATTERN)

SEARCH_PARAMS = (
    Param("capability", "query", "Only agents with this capability.", {"type": "string", "pattern": NAME_PATTERN}),
    Param(
        "label",
        "query",
        "Only agents whose label ``key`` has this value, written ``key:value``.",
        {"type": "string", "pattern": "^[^:]+:.*$"},
    ),
    Param("version", "query", "Only agents running this version.", {"type": "string", "maxLength": 200}),
    Param("liveness", "query", "Only agents on this liveness rung.", {"type": "string", "enum": list(_RUNGS)}),
    Param(
        "min_security",
        "query",
        "Only agents whose security score now is at least this (0 to 100; filtered on each page).",
        {"type": "number", "minimum": 0, "maximum": 100},
    ),
    Param(
        "max_security",
        "query",
        "Only agents whose security score now is at most this (0 to 100; filtered on each page).",
        {"type": "number", "minimum": 0, "maximum": 100},
    ),
    Param("limit", "query", "Same as page_size.", {"type": "integer", "minimum": 1, "maximum": core.MAX_PAGE_SIZE}),
)


@dataclass(frozen=True)
class Search:
    filters: Filters
    min_security: float | None = None
    max_security: float | None = None

    def keeps(self, record: AgentRecord, at: datetime) -> bool:
        """The filters no index serves: the security score now."""
        if self.min_security is None and self.max_security is None:
            return True
        score = score_at(record.health, at, _DEFAULT_HEALTH)
        low = self.min_security if self.min_security is not None else 0.0
        high = self.max_security if self.max_security is not None else 100.0
        return low <= score <= high

    def page(self, page_size: int, after: str | None, at: datetime) -> tuple[list[AgentRecord], str | None, int]:
        """One page: (agents kept, the id to continue after, agents read). A page may hold fewer than
        ``page_size`` agents (the security filter dropped some) and still have a next page."""
        records, last = agent_search.page(self.filters, page_size, after)
        return [r for r in records if self.keeps(r, at)], last, len(records)


def scoped_tenant(principal: Principal, tenant: str | None) -> str | None:
    """The tenant a search may look in: the key's own when it is tenant-scoped (403 for another one)."""
    if tenant is not None and not core.is_agent_id(tenant):
        raise ApiError(400, f"tenant must match {AGENT_ID_PATTERN}")
    if principal.tenant is not None:
        if tenant is not None and tenant != principal.tenant:
            raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
        return principal.tenant
    return tenant


def search_of(principal: Principal, given: dict[str, Any]) -> Search:
    """The search ``given`` describes (query parameters or a bulk filter, as text or values); 400 on a bad one."""
    tenant = scoped_tenant(principal, _text(given.get("tenant")))
    status = _text(given.get("status"))
    if status is not None and status not in _STATES:
        raise ApiError(400, f"status must be one of: {', '.join(_STATES)}")
    liveness = _text(given.get("liveness"))
    if liveness is not None and liveness not in _RUNGS:
        raise ApiError(400, f"liveness must be one of: {', '.join(_RUNGS)}")
    capability = _text(given.get("capability"))
    if capability is not None and not _name(capability):
        raise ApiError(400, f"capability must match {NAME_PATTERN}")
    label_text = _text(given.get("label"))
    label = None
    if label_text is not None:
        key, sep, value = label_text.partition(":")
        if not sep or not _name(key):
            raise ApiError(400, f"label must be key:value, the key matching {NAME_PATTERN}")
        label = (key, value)
    version = _text(given.get("version"))
    if version is not None and len(version) > 200:
        raise ApiError(400, "version has at most 200 characters")
    low, high = _score(given.get("min_security"), "min_security"), _score(given.get("max_security"), "max_security")
    if low is not None and high is not None and low > high:
        raise ApiError(400, "min_security is above max_security")
    ids = given.get("agent_ids")
    filters = Filters(
        tenant=tenant,
        status=status,
        liveness=liveness,
        version=version,
        capability=capability,
        label=label,
        agent_ids=tuple(ids) if ids is not None else None,
    )
    return Search(filters, low, high)


def _text(value: Any) -> str | None:
    return str(value.value if hasattr(value, "value") else value) if value not in (None, "") else None


def _name(value: str) -> bool:
    return _NAME.match(value) is not None


def _score(value: Any, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number from 0 to 100") from None
    if not 0 <= number <= 100:
        raise ApiError(400, f"{name} must be a number from 0 to 100")
    return number
