"""Alert episodes (``episodes/{id}``), their outbox (``notifications/{id}``) and tenant alert state.

Episodes and notices are written with the decision that caused them (the agent's conditional write,
or a create for cost alerts), never on their own; this module adds them to a write batch, and gives
the notifier its queries and its claim (a conditional update: one instance sends each notice).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from shared.domain import episodes as domain
from shared.domain import learned
from shared.domain.alerts import DEFAULT_ALERT_OPEN, Alert, Severity
from shared.platform import metering
from shared.store import config as config_store
from shared.store import db

EPISODES = "episodes"
NOTIFICATIONS = "notifications"
TENANT_ALERTS = "tenant_alerts"
MAX_ATTEMPTS = 8
_raised: set[str] = set()
_lock = threading.Lock()


def episode_ref(episode_id: str) -> Any:
    return db.client().collection(EPISODES).document(db.doc_id(episode_id))


def notice_ref(notice_id: str) -> Any:
    return db.client().collection(NOTIFICATIONS).document(db.doc_id(notice_id))


def add_to(batch: Any, write: domain.EpisodeWrite) -> int:
    """Add one episode change (and its notice) to ``batch``; returns the documents written."""
    if write.create:
        batch.create(episode_ref(write.episode_id), write.fields)
    else:
        batch.set(episode_ref(write.episode_id), write.fields, merge=True)
    if write.notice is None:
        return 1
    batch.set(notice_ref(write.notice["id"]), write.notice)
    return 2


# --- cost alerts --------------------------------------------------------------------------------


def raise_once(alert: Alert) -> bool:
    """Open the episode of a cost alert, with its notice, once (a create under the alert's id): True
    when this call opened it (False: it was raised already, anywhere). It resolves by itself at
    ``alert.until`` (the minute job resolves it), under the tenant's alerting settings."""
    with _lock:
        if alert.id in _raised:
            return False
    config = config_store.alerting(alert.tenant)
    write = domain.new_episode(
        alert.id,
        rule=alert.kind,
        severity=alert.severity,
        tenant=alert.tenant,
        agent_id=alert.agent_id,
        at=alert.at,
        summary=alert.message,
        details={**alert.details, **({"window": alert.window} if alert.window else {})},
        config=config,
        resolve_at=alert.until or alert.at + DEFAULT_ALERT_OPEN,
        due_at=alert.at + timedelta(seconds=config.group_wait_s),
    )
    write.create = True
    batch = db.client().batch()
    written = add_to(batch, write)
    raised = db.unless_changed(lambda: batch.commit(**db.call_options()), writes=written) is not None
    with _lock:
        if len(_raised) > 100_000:
            _raised.clear()
        _raised.add(alert.id)
    return raised


# --- reading ------------------------------------------------------------------------------------


def get(episode_id: str) -> dict[str, Any] | None:
    doc = db.get(episode_ref(episode_id))
    return (doc.to_dict() or {}) if doc.exists else None


def get_many(episode_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not episode_ids:
        return {}
    docs = list(db.client().get_all([episode_ref(i) for i in episode_ids], **db.call_options()))
    metering.count(reads=len(docs))
    return {(d.to_dict() or {})["id"]: d.to_dict() or {} for d in docs if d.exists}


def list_episodes(
    *,
    state: str | None = None,
    tenant: str | None = None,
    agent_id: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Episodes newest first. The most selective equality filter goes to Firestore (each has an index with
    ``opened_at``), with the state too for an agent's episodes (an agent's open ones are never pushed out
    by its resolved ones); the others are applied here, over a bounded over-read."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    wanted = {"state": state, "tenant": tenant, "agent_id": agent_id, "rule": rule, "severity": severity}
    # The most selective filter goes to Firestore: an agent (and its state), then a tenant, then a state.
    first = next((k for k in ("agent_id", "tenant", "state") if wanted[k] is not None), None)
    server = ["agent_id", "state"] if agent_id is not None and state is not None else [first] if first else []
    query: Any = db.client().collection(EPISODES)
    for name in server:
        query = query.where(filter=FieldFilter(name, "==", wanted[name]))
    local = {k: v for k, v in wanted.items() if v is not None and k not in server}
    # An agent's episodes all carry its tenant (an agent never changes tenant): the tenant filter keeps all
    # of them or none, so it needs no over-read.
    narrowing = [k for k in local if not (k == "tenant" and "agent_id" in server)]
    fetch = limit if not narrowing else min(limit * 10, 1000)
    docs = list(query.order_by("opened_at", direction="DESCENDING").limit(fetch).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    rows = [doc.to_dict() or {} for doc in docs]
    return [row for row in rows if all(row.get(k) == v for k, v in local.items())][:limit]


def due(field: str, now: datetime, limit: int) -> list[tuple[dict[str, Any], Any]]:
    """Open episodes whose ``field`` (``next_repeat_at`` or ``resolve_at``) has passed."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.client()
        .collection(EPISODES)
        .where(filter=FieldFilter("state", "==", "open"))
        .where(filter=FieldFilter(field, "<=", now))
        .order_by(field)
        .limit(limit)
    )
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(doc.to_dict() or {}, doc.update_time) for doc in docs]


def conditional(episode: dict[str, Any], update_time: Any, write: domain.EpisodeWrite) -> bool:
    """Write an episode change (and its notice) only if the episode is as read: True when this call
    wrote it, False when another instance changed it first."""
    client = db.client()
    batch = client.batch()
    batch.update(episode_ref(episode["id"]), write.fields, option=client.write_option(last_update_time=update_time))
    if write.notice is not None:
        batch.set(notice_ref(write.notice["id"]), write.notice)
    written = 1 + (write.notice is not None)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=written) is not None


# --- the outbox ---------------------------------------------------------------------------------


class NotOpen(Exception):
    """The episode is not open (resolved, or gone): an acknowledgement that must find it open changed nothing."""

    def __init__(self, episode_id: str, state: str | None) -> None:
        super().__init__(f"alert episode {episode_id} is {state or 'gone'}, not open")
        self.state = state


def acknowledge(episode_id: str, user: str, at: datetime, *, require_open: bool = False) -> str | None:
    """Record who acknowledged an open episode and stop its reminders, in a transaction: of two clicks
    one wins, and a click racing an escalation reads the escalated episode. Acknowledging an agent's
    ``anomaly`` episode also marks the agent document (``ml_rebase_at``, one more read and write, in the
    same transaction): its learned baseline re-learns its levels at its next heartbeat. Returns who had
    acknowledged it already (nothing is changed then), or None when this call did. With ``require_open``
    the episode's state is checked inside the transaction: :class:`NotOpen` (nothing changed) when it is
    resolved by then, or gone."""
    from google.cloud import firestore

    ref = episode_ref(episode_id)
    earlier: list[str | None] = [None]
    marked, looked = [False], [False]  # the agent was marked; its document was read

    @firestore.transactional
    def run(transaction: Any) -> None:
        snap = ref.get(transaction=transaction)
        data = snap.to_dict() or {}
        if require_open and (not snap.exists or data.get("state") != "open"):
            raise NotOpen(episode_id, data.get("state") if snap.exists else None)
        earlier[0] = data.get("acknowledged_by")
        marked[0] = looked[0] = False
        if earlier[0] is None:
            agent = None
            if learned.rebases_on_ack(data):  # the agent's baseline re-learns at its next heartbeat
                agent = _agent_ref(str(data["agent_id"]))
                looked[0] = True
                marked[0] = agent.get(transaction=transaction).exists  # reads before writes; a gone agent: none
            fields = {"acknowledged_by": user, "acknowledged_at": at, "next_repeat_at": None}
            transaction.update(ref, fields)
            if marked[0]:
                transaction.update(agent, {learned.REBASE_MARKER: at})

    try:
        run(db.client().transaction())
    except NotOpen:
        metering.count(reads=1)
        raise
    metering.count(reads=1 + looked[0], writes=0 if earlier[0] else 1 + marked[0])
    return earlier[0]


def _agent_ref(agent_id: str) -> Any:
    """The agent document (``agents/{id}``; shared/store/agents.py imports this module, so not from there)."""
    return db.client().collection("agents").document(agent_id)


def due_notices(now: datetime, limit: int) -> list[tuple[dict[str, Any], Any]]:
    """Notices to send now: pending ones that are due, and ones whose sender's lease ran out."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.client()
        .collection(NOTIFICATIONS)
        .where(filter=FieldFilter("state", "in", ["pending", "sending"]))
        .where(filter=FieldFilter("due_at", "<=", now))
        .order_by("due_at")
        .limit(limit)
    )
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(doc.to_dict() or {}, doc.update_time) for doc in docs]


def claim(notice: dict[str, Any], update_time: Any, now: datetime, lease: timedelta) -> Any | None:
    """Take a notice for sending (a conditional update): the new update time, or None when another
    instance took it first. An unfinished claim expires with its lease and the notice is due again."""
    option = db.client().write_option(last_update_time=update_time)
    fields = {"state": "sending", "due_at": now + lease, "attempts": int(notice.get("attempts") or 0) + 1}
    result = db.unless_changed(lambda: notice_ref(notice["id"]).update(fields, option=option, **db.call_options()))
    return None if result is None else result.update_time


def notices_as_read(notice_ids: list[str]) -> list[tuple[dict[str, Any], Any]]:
    """The notices of ``notice_ids`` that exist, each with its update time (for :func:`claim`): one read
    each, in one call."""
    if not notice_ids:
        return []
    docs = list(db.client().get_all([notice_ref(i) for i in notice_ids], **db.call_options()))
    metering.count(reads=len(docs))
    return [(doc.to_dict() or {}, doc.update_time) for doc in docs if doc.exists]


def get_notice(notice_id: str) -> dict[str, Any] | None:
    doc = db.get(notice_ref(notice_id))
    return (doc.to_dict() or {}) if doc.exists else None


#: What an episode remembers of one of its notices (where its message is, that it was silenced): its id and fields.
Remember = tuple[str, dict[str, Any]]
#: Firestore's limit of writes in one batch.
BATCH_WRITES = 500


def finish(notice_id: str, fields: dict[str, Any], *, episode: Remember | None = None) -> None:
    """Record how a notice ended. With ``episode``, what its episode must remember of it is merged into
    the episode in the same atomic write (a batch, the notice first): the notice is finished and its
    episode knows its message, or neither is written (docs/alerting.md, "Critical alerts at once")."""
    if episode is None:
        notice_ref(notice_id).update(fields, **db.call_options())
        metering.count(writes=1)
    else:
        finish_all([(notice_id, fields, episode)])


def finish_all(finished: list[tuple[str, dict[str, Any], Remember | None]]) -> None:
    """:func:`finish` for several notices (the members of one grouped message): as few batches as
    Firestore allows, a notice and its episode always in the same one."""
    client = db.client()
    batch, size = client.batch(), 0
    for notice_id, fields, episode in finished:
        writes = 1 + (episode is not None)
        if size + writes > BATCH_WRITES:
            batch.commit(**db.call_options())
            metering.count(writes=size)
            batch, size = client.batch(), 0
        batch.update(notice_ref(notice_id), fields)
        if episode is not None:
            batch.set(episode_ref(episode[0]), episode[1], merge=True)
        size += writes
    if size:
        batch.commit(**db.call_options())
        metering.count(writes=size)


# --- tenant alert state (root alerts) -------------------------------------------------------------


def tenant_state(tenant: str) -> tuple[dict[str, Any], Any]:
    doc = db.get(db.client().collection(TENANT_ALERTS).document(db.doc_id(tenant)))
    return ((doc.to_dict() or {}) if doc.exists else {}), (doc.update_time if doc.exists else None)


# --- grouped messages ---------------------------------------------------------------------------

GROUPS = "notice_groups"


def _group_ref(group_id: str) -> Any:
    return db.client().collection(GROUPS).document(db.doc_id(group_id))


def save_group(group_id: str, *, channel: str, ts: str, notices: list[dict[str, Any]], at: datetime) -> None:
    """The notices one grouped Slack message announced (its resolutions edit that message)."""
    doc = {"id": group_id, "channel": channel, "ts": ts, "notices": notices, "states": {}}
    _group_ref(group_id).set({**doc, "expire_at": at + domain.RETENTION}, **db.call_options())
    metering.count(writes=1)


def resolve_in_group(group_id: str, episode_id: str) -> dict[str, Any] | None:
    """Mark one member of a grouped message resolved (a conditional update, retried): the group as
    written, or None when it is gone."""
    client = db.client()
    for _ in range(MAX_ATTEMPTS):
        doc = db.get(_group_ref(group_id))
        if not doc.exists:
            return None
        data = doc.to_dict() or {}
        data["states"] = {**(data.get("states") or {}), episode_id: "resolved"}
        update = functools.partial(
            _group_ref(group_id).update,
            {"states": data["states"]},
            option=client.write_option(last_update_time=doc.update_time),
            **db.call_options(),
        )
        if db.unless_changed(update) is not None:
            return data
    raise RuntimeError(f"grouped message {group_id}: {MAX_ATTEMPTS} conflicting writes in a row")


def tenants_with_open_root() -> list[str]:
    """Tenants whose root alert is open (the minute job checks whether it can resolve)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.client().collection(TENANT_ALERTS).where(filter=FieldFilter("root_open", "==", True))
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(doc.to_dict() or {})["tenant"] for doc in docs]


def update_tenant(
    tenant: str, decide: Callable[[dict[str, Any]], tuple[dict[str, Any], list[domain.EpisodeWrite]]]
) -> list[domain.EpisodeWrite]:
    """Change the tenant's alert state and its episodes atomically, with a precondition (retried on
    conflicts): two sweeps open one root alert, not two."""
    client = db.client()
    ref = client.collection(TENANT_ALERTS).document(db.doc_id(tenant))
    for _ in range(MAX_ATTEMPTS):
        state, update_time = tenant_state(tenant)
        changes, writes = decide(state)
        if not changes:
            return []
        batch = client.batch()
        if update_time is None:
            batch.create(ref, {"tenant": tenant, **changes})
        else:
            batch.update(ref, changes, option=client.write_option(last_update_time=update_time))
        written = 1 + sum(add_to(batch, write) for write in writes)
        if db.unless_changed(functools.partial(batch.commit, **db.call_options()), writes=written) is not None:
            return writes
    raise RuntimeError(f"tenant {tenant}: {MAX_ATTEMPTS} conflicting alert-state writes in a row")


def severity_of(row: dict[str, Any]) -> Severity:
    return Severity(row.get("severity") or "warning")
