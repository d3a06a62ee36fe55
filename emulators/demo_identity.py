"""The identity side of `make demo`: every agent enrolls with a token, and an outsider's forged batches are refused.

- Enrollment: one enrollment token per tenant, made through the REST API
  (``POST /v1/tenants/{t}/enrollment-tokens`` with the stack's admin key), scoped to the tenant's id
  prefix with exactly as many uses as the tenant has agents. Each agent's SDK generates its Ed25519 key
  in the stack's state dir (``keys/<agent_id>.key``), sends the token with its first registration, and
  signs everything after.
- The forgery: an outsider (an enrolled agent of another tenant) publishes cost batches claiming a
  victim agent's id: one signed by its own enrolled key, one signed by a key it made, one unsigned. Each
  is refused and recorded as a refused identity (``GET /v1/rejections?claimed_agent_id=<victim>``), and the
  victim's spend does not move.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fleet_agent import Registration
from fleet_agent.contracts import DEFAULT_TOPICS, CostBatch, CostRecord, EventType, encode
from fleet_agent.identity import AgentKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: What each forged batch claims the victim spent: enough to exhaust any demo budget at once.
FORGED_COST_USD = Decimal("950")


def key_path(state_dir: Path, agent_id: str) -> Path:
    """Where the demo keeps an agent's private key (and the SDK its enrollment state, ``<key>.json``)."""
    return state_dir / "keys" / f"{agent_id}.key"


def enrollment_tokens(api: Any, registrations: list[Registration]) -> dict[str, str]:
    """One token per tenant, scoped to ``<tenant>-`` with one use per agent of that tenant: the token texts."""
    per_tenant = Counter(r.tenant for r in registrations)
    tokens = {}
    for tenant, agents in sorted(per_tenant.items()):
        if not all(r.agent_id.startswith(f"{tenant}-") for r in registrations if r.tenant == tenant):
            raise ValueError(f"the demo's {tenant} agents must be named {tenant}-...")
        made = api.post(
            f"/v1/tenants/{tenant}/enrollment-tokens",
            {"label": "make demo", "agent_prefix": f"{tenant}-", "max_uses": agents, "expires_in_s": 3600},
        )
        tokens[tenant] = made["token"]
    return tokens


@dataclass(frozen=True)
class Forgery:
    name: str
    message_id: str


def _batch(victim: str) -> CostBatch:
    record = CostRecord(
        call_id=f"forged-{uuid.uuid4().hex[:12]}",
        at=datetime.now(UTC),
        model="gpt-4o",
        input_tokens=1_000_000,
        output_tokens=500_000,
        cost_usd=FORGED_COST_USD,
        success=True,
        latency_ms=900.0,
        operation="answer",
    )
    return CostBatch(agent_id=victim, batch_id=f"forged-{uuid.uuid4().hex}", records=[record])


def publish_forgeries(publisher: Any, project: str, victim: Registration, outsider: Registration,
                      outsider_key: AgentKey) -> list[Forgery]:  # fmt: skip
    """Three cost batches claiming ``victim``: signed by the outsider's own enrolled key, by a key it
    made, and unsigned. Returns what was sent, with the Pub/Sub message ids."""
    topic = publisher.topic_path(project, DEFAULT_TOPICS[EventType.COST])
    made = AgentKey.generate()
    attempts = [
        (f"signed by {outsider.agent_id}'s own key ({outsider.tenant})", outsider_key),
        ("signed by a key the outsider made", made),
        ("unsigned", None),
    ]
    sent = []
    for name, key in attempts:
        body, attrs = encode(_batch(victim.agent_id), signer=key, tenant=victim.tenant if key else None)
        sent.append(Forgery(name, publisher.publish(topic, body, **attrs).result(timeout=30)))
    return sent


def _spend_today(api: Any, agent_id: str) -> Decimal:
    return Decimal(api.get(f"/v1/agents/{agent_id}/usage")["periods"]["day"]["spend_usd"])


def _refusals(api: Any, victim: str) -> list[dict[str, Any]]:
    return list(api.get("/v1/rejections", claimed_agent_id=victim, page_size=50)["items"])


def run(api: Any, publisher: Any, project: str, victim: Registration, outsider: Registration, outsider_key: AgentKey,
        console: Console, timeout: float = 20.0) -> bool:  # fmt: skip
    """The forgery scene: True when every forged batch was refused, listed, and the victim's spend unchanged."""
    before = _spend_today(api, victim.agent_id)
    known = {r["id"] for r in _refusals(api, victim.agent_id)}
    sent = publish_forgeries(publisher, project, victim, outsider, outsider_key)
    console.print(
        f"an outsider publishes {len(sent)} cost batches of ${FORGED_COST_USD} each claiming {victim.agent_id} "
        f"({victim.tenant}): " + "; ".join(f.name for f in sent),
        markup=False,
    )
    ids = {f.message_id for f in sent}
    deadline = time.monotonic() + timeout
    refused: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        refused = [r for r in _refusals(api, victim.agent_id) if r["id"] in ids and r["id"] not in known]
        if len(refused) == len(ids):
            break
        time.sleep(0.5)
    after = _spend_today(api, victim.agent_id)
    names = {f.message_id: f.name for f in sent}
    table = Table(
        title=f"Refused identities claiming {victim.agent_id} (GET /v1/rejections?claimed_agent_id={victim.agent_id})",
        title_justify="left",
    )
    for column in ("message", "forgery", "code", "claimed tenant", "agent"):
        table.add_column(column)
    table.add_column("reason", overflow="fold")
    for r in sorted(refused, key=lambda r: r["id"]):
        table.add_row(
            Text(r["id"]),
            Text(names.get(r["id"], "?")),
            Text(r["code"], style="red"),
            Text(r.get("claimed_tenant") or "-"),
            Text(r.get("agent_id") or "- (unproven)"),
            Text(r["reason"][:300]),
        )
    console.print(table)
    unchanged = after == before
    console.print(
        Text(
            f"{victim.agent_id}'s spend today: ${before:.4f} before, ${after:.4f} after "
            + ("(unchanged: nothing a forged batch carried was counted)" if unchanged else "(CHANGED!)"),
            style="" if unchanged else "red",
        )
    )
    missing = ids - {r["id"] for r in refused}
    if missing:
        console.print(f"[red]{len(missing)} forged batches were not listed as refused: {', '.join(sorted(missing))}[/]")
    return unchanged and not missing
