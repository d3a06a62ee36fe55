"""The REST API's agents and rejected events: list and read agents, an agent's heartbeat history, the
events the pipeline refused (shared/store/agents.py and shared/store/rejections.py hold them)."""

from __future__ import annotations

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.api import agent_search, core
from shared.api.bodies import AgentPage, AgentView, HistoryView, RejectionPage, agent_view
from shared.api.core import AGENT, PAGE_PARAMS, ApiError, Call, Param, Routes
from shared.api.tenancy import visible_record
from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.rejections import Code
from shared.store import agents as agent_store
from shared.store import rejections as rejection_store

_STATES = tuple(s.value for s in State)
_CODES = tuple(c.value for c in Code)

routes = Routes("agents")

_LIST_PARAMS = (
    Param(
        "tenant",
        "query",
        "Only this tenant (a tenant-scoped key may name only its own).",
        {"type": "string", "pattern": AGENT_ID_PATTERN},
    ),
    Param("status", "query", "Only agents in this lifecycle state.", {"$ref": "#/components/schemas/State"}),
    *agent_search.SEARCH_PARAMS,
    *PAGE_PARAMS,
)


@routes.get("/v1/agents", AgentPage, params=_LIST_PARAMS, errors=(400,))
def list_agents(call: Call) -> AgentPage:
    """List or search agents, ordered by id, one page at a time.

    Every filter given must match. A page filtered by security score may hold fewer agents than asked
    and still have a next page."""
    args = call.request.args
    search = agent_search.search_of(core.principal(call), {name: args.get(name) for name in _FILTERS})
    if core.query(call.request, "limit") and core.query(call.request, "page_size"):
        raise ApiError(400, "give page_size or limit, not both")
    name = "limit" if core.query(call.request, "limit") else "page_size"
    page_size = core.bounded_int(call.request, name, core.DEFAULT_PAGE_SIZE, core.MAX_PAGE_SIZE)
    after = core.page_token(call.request, core.is_agent_id)
    now = core.now()
    records, last, _read = search.page(page_size, after, now)
    return AgentPage(
        items=[agent_view(r, at=now) for r in records],
        next_page_token=core.encode_page_token(last) if last else None,
    )


#: The query parameters a search reads.
_FILTERS = ("tenant", "status", "capability", "label", "version", "liveness", "min_security", "max_security")


@routes.get("/v1/agents/<agent_id>", AgentView, params=AGENT, errors=(404,))
def get_agent(call: Call) -> AgentView:
    """One agent."""
    return agent_response(visible_record(call))


def agent_response(record: AgentRecord) -> AgentView:
    """The agent as the API shows it, its security score as of now."""
    return agent_view(record, at=core.now())


#: ``?limit=`` of an agent's history at most (FLEET_HISTORY_CHUNK * FLEET_HISTORY_SLOTS is 4,320 by default).
MAX_HISTORY = 10_000
_HISTORY_PARAMS = (
    *AGENT,
    Param(
        "limit",
        "query",
        f"Only the newest N samples, 1 to {MAX_HISTORY} (only the history chunks holding them are read); "
        "without it, every stored sample.",
        {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY},
    ),
)


@routes.get("/v1/agents/<agent_id>/history", HistoryView, params=_HISTORY_PARAMS, errors=(400, 404))
def get_agent_history(call: Call) -> HistoryView:
    """An agent's stored heartbeat samples, oldest first (all, or the newest ``limit``)."""
    limit = core.bounded_int(call.request, "limit", 0, MAX_HISTORY) if core.query(call.request, "limit") else None
    agent = agent_view(visible_record(call))
    samples = agent_store.history(agent.agent_id, limit)
    return HistoryView.model_validate({"agent_id": agent.agent_id, "samples": samples})


_REJECTION_PARAMS = (
    Param(
        "agent_id",
        "query",
        "Only rejections of this agent (required for tenant-scoped keys).",
        {"type": "string", "pattern": AGENT_ID_PATTERN},
    ),
    Param(
        "claimed_agent_id",
        "query",
        "Only refused identities (identity_refusal) that claimed this agent: kept apart from its own rejections.",
        {"type": "string", "pattern": AGENT_ID_PATTERN},
    ),
    Param("code", "query", "Only rejections with this code.", {"type": "string", "enum": list(_CODES)}),
    *PAGE_PARAMS,
)


@routes.get("/v1/rejections", RejectionPage, params=_REJECTION_PARAMS, errors=(400,), tags=("rejections",))
def list_rejections(call: Call) -> RejectionPage:
    """List rejected events, newest first."""
    principal = core.principal(call)
    agent_id = core.query(call.request, "agent_id")
    if agent_id is not None and not core.is_agent_id(agent_id):
        raise ApiError(400, f"agent_id must match {AGENT_ID_PATTERN}")
    claimed = core.query(call.request, "claimed_agent_id")
    if claimed is not None and not core.is_agent_id(claimed):
        raise ApiError(400, f"claimed_agent_id must match {AGENT_ID_PATTERN}")
    if agent_id is not None and claimed is not None:
        raise ApiError(
            400, "filter by agent_id (its own rejections) or claimed_agent_id (refused identities), not both"
        )
    code = core.query(call.request, "code")
    if code is not None and code not in _CODES:
        raise ApiError(400, f"code must be one of: {', '.join(_CODES)}")
    page_size = core.page_size(call.request)
    after = core.page_token(call.request, core.is_document_id)
    if principal.tenant is not None:
        # Rejections carry no trustworthy tenant (the event may not even have parsed), so a
        # tenant-scoped key sees them only through an agent it can see.
        # A refused identity's claimed tenant is unproven too: it is seen through the claimed agent.
        subject = agent_id or claimed
        if subject is None:
            raise ApiError(403, "an API key scoped to a tenant must filter rejections by agent_id or claimed_agent_id")
        record = agent_store.get(subject)
        if record is None or not principal.can_see(record.tenant):
            raise ApiError(403, f"agent {subject} is not an agent of tenant {principal.tenant}")
    # Only when asked: the store's other callers (and fakes) know no claimed_agent_id.
    claimed_filter = {"claimed_agent_id": claimed} if claimed else {}
    try:
        items, last = rejection_store.list_page(
            agent_id=agent_id, code=code, page_size=page_size, after=after, **claimed_filter
        )
    except rejection_store.PageTokenExpired as exc:
        raise ApiError(400, str(exc)) from None
    return RejectionPage.model_validate(
        {"items": items, "next_page_token": core.encode_page_token(last) if last else None}
    )
