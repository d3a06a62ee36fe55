"""Cost batches through the real path: emulator push -> fleet-costs -> Firestore, commands back on Pub/Sub."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import Command, CostBatch, CostRecord, EventType

from tests.integration.conftest import wait_for
from tests.integration.helpers import (
    PROJECT,
    agent_doc,
    outcomes,
    publish,
    publish_raw,
    registration,
    sdk_identity,
    signed_encode,
)

pytestmark = pytest.mark.integration


def record(
    n: int, *, at: datetime | None = None, cost: str | None = "0.01", success: bool = True, **kw: Any
) -> CostRecord:
    data: dict[str, Any] = {
        "call_id": f"call-{n:06d}-{uuid.uuid4().hex[:8]}",
        "at": at or datetime.now(UTC),
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_usd": Decimal(cost) if cost is not None else None,
        "success": success,
        "latency_ms": 120.0,
        "operation": "summarize",
    }
    data.update(kw)
    return CostRecord.model_validate(data)


def batch(agent_id: str, records: list[CostRecord], batch_id: str | None = None) -> CostBatch:
    return CostBatch(agent_id=agent_id, batch_id=batch_id or f"b-{uuid.uuid4().hex}", records=records)


def register(publisher: Any, firestore: Any, agent_id: str, **kw: Any) -> dict[str, Any]:
    publish(publisher, registration(agent_id, **kw))
    return wait_for(lambda: agent_doc(firestore, agent_id))


def cost_outcomes(stack: Any, agent_id: str) -> list[str]:
    return outcomes(stack, "fleet-costs", agent_id)


def month_usage(api: Any, agent_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/agents/{agent_id}/usage")
    assert response.status_code == 200, response.text
    return dict(response.json()["periods"]["month"])


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def commands_seen(stack: Any) -> Iterator[list[Command]]:
    """Every command published on agent-commands while the test runs (its own subscription)."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    topic = f"projects/{PROJECT}/topics/agent-commands"
    path = subscriber.subscription_path(PROJECT, f"it-commands-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={"name": path, "topic": topic})
    seen: list[Command] = []
    lock = threading.Lock()

    def callback(message: Any) -> None:
        with lock:
            seen.append(Command.model_validate_json(message.data))
        message.ack()

    future = subscriber.subscribe(path, callback)
    yield seen
    future.cancel()
    subscriber.delete_subscription(request={"subscription": path})
    subscriber.close()


def test_redelivered_and_reordered_batches_count_exactly_once(
    stack, publisher, firestore, api, agent_id, tenant
) -> None:
    register(publisher, firestore, agent_id, tenant=tenant)
    now = datetime.now(UTC)
    batches = [
        batch(agent_id, [record(i * 10 + j, at=now - timedelta(seconds=random.randint(0, 50))) for j in range(10)])
        for i in range(12)
    ]
    # Every batch published three times (publisher retries, redelivery), all in a random order.
    copies = [b for b in batches for _ in range(3)]
    random.shuffle(copies)
    for copy in copies:
        publish(publisher, copy, event_id=f"e-{copy.batch_id}")
    outcomes = wait_for(lambda: len(o := cost_outcomes(stack, agent_id)) == len(copies) and o, timeout=60)
    assert outcomes.count("accepted") == len(batches)
    assert outcomes.count("duplicate") == 2 * len(batches)

    month = month_usage(api, agent_id)
    assert month["calls"] == 120
    assert Decimal(month["spend_usd"]) == Decimal("1.20")  # 120 x $0.01, exactly
    assert month["tokens"] == 120 * 150 and month["success_rate"] == 1.0
    tenant_month = api.get(f"/v1/tenants/{tenant}/usage").json()["periods"]["month"]
    assert tenant_month["calls"] == 120 and Decimal(tenant_month["spend_usd"]) == Decimal("1.20")


def test_concurrent_publishers_for_one_agent_give_exact_totals(stack, firestore, api, agent_id, tenant) -> None:
    from google.cloud import pubsub_v1

    register_publisher = pubsub_v1.PublisherClient()
    register(register_publisher, firestore, agent_id, tenant=tenant)
    sent: list[int] = []

    def worker(n: int) -> None:
        client = pubsub_v1.PublisherClient()  # one client per thread: four independent publishers
        for i in range(10):
            publish(client, batch(agent_id, [record(n * 1000 + i * 50 + j, cost="0.003") for j in range(50)]))
            sent.append(50)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: cost_outcomes(stack, agent_id).count("accepted") == 40, timeout=60)
    month = month_usage(api, agent_id)
    assert month["calls"] == sum(sent) == 2000
    assert Decimal(month["spend_usd"]) == Decimal("6.000")


def test_records_are_priced_from_the_catalog_and_unpriced_models_alert(
    stack, publisher, firestore, api, agent_id, tenant
) -> None:
    register(publisher, firestore, agent_id, tenant=tenant)
    priced = record(
        1, cost=None, model="gpt-4o-2024-08-06", input_tokens=1000, output_tokens=100, cache_read_tokens=400
    )
    unknown = record(2, cost=None, model="acme-llm-7b", input_tokens=500, output_tokens=500)
    publish(publisher, batch(agent_id, [priced, unknown]))
    wait_for(lambda: "accepted" in cost_outcomes(stack, agent_id))
    month = month_usage(api, agent_id)
    # gpt-4o from the genai-prices catalog: 600 x 0.0000025 + 400 cached x 0.00000125 + 100 x 0.00001 = 0.003;
    # the unknown model adds no $.
    assert Decimal(month["spend_usd"]) == Decimal("0.003")
    assert month["calls"] == 2 and month["unpriced_calls"] == 1 and month["tokens"] == 2100
    models = api.get(f"/v1/agents/{agent_id}/usage").json()["models"]
    assert models["gpt-4o-2024-08-06"]["price_sources"] == {"catalog:genai-prices@0.2.5": 1}
    assert models["acme-llm-7b"]["price_sources"] == {"unpriced": 1} and models["acme-llm-7b"]["calls"] == 1
    alerts = wait_for(lambda: api.get("/v1/alerts", agent_id=agent_id).json()["items"])
    assert [a["kind"] for a in alerts] == ["unpriced_model"] and "acme-llm-7b" in alerts[0]["message"]


def test_hard_limit_stops_the_agent_and_tells_it(
    stack, publisher, firestore, api, agent_id, tenant, commands_seen
) -> None:
    register(publisher, firestore, agent_id, tenant=tenant, budget={"hourly_usd": "0.10", "daily_usd": "5"})
    for i in range(3):  # $0.04 each: the third batch crosses $0.10
        publish(publisher, batch(agent_id, [record(i * 10 + j, cost="0.01") for j in range(4)]))
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d.get("holds", {}).get("budget") and d)
    assert doc["status"] == "suspended" and doc["status_hold"] == "budget"
    command = wait_for(lambda: [c for c in commands_seen if c.agent_id == agent_id])
    assert [c.command.value for c in command] == ["budget_exhausted"]
    assert command[0].until is not None and command[0].until > datetime.now(UTC)
    usage = api.get(f"/v1/agents/{agent_id}/usage").json()
    hour = usage["periods"]["hour"]
    assert Decimal(hour["spend_usd"]) == Decimal("0.12") and hour["remaining_usd"] == "0"
    kinds = sorted(a["kind"] for a in api.get("/v1/alerts", agent_id=agent_id).json()["items"])
    # 50%, 80% and 100% thresholds of the hourly limit, the soft limit (80%), the hard limit: each once.
    assert kinds.count("budget_threshold") == 3 and kinds.count("budget_exhausted") == 1
    assert kinds.count("budget_soft_limit") == 1

    # Raising the budget through the API lifts the hold at once and tells the agent.
    raised = api.send("PUT", f"/v1/agents/{agent_id}/budget", {"hourly_usd": "1", "daily_usd": "5"})
    assert raised.status_code == 200, raised.text
    wait_for(lambda: any(c.command.value == "budget_restored" for c in commands_seen if c.agent_id == agent_id))
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and "budget" not in doc["holds"] and doc["status"] == "active"


def test_breaker_opens_on_failures_and_closes_after_successful_trials(
    stack, publisher, firestore, api, agent_id, tenant, commands_seen
) -> None:
    register(publisher, firestore, agent_id, tenant=tenant)
    assert api.send("PUT", f"/v1/agents/{agent_id}/protection", {"breaker_cooldown_s": 1}).status_code == 200
    publish(publisher, batch(agent_id, [record(j, success=False) for j in range(6)]))
    wait_for(lambda: any(c.command.value == "breaker_open" for c in commands_seen if c.agent_id == agent_id))
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and doc["holds"]["breaker"]["reason"] == "6 calls failed in a row"

    # After the cooldown the SDK lets trial calls through (half-open); successes close the breaker.
    wait_for(lambda: datetime.now(UTC) > doc["holds"]["breaker"]["until"] + timedelta(seconds=0.2))
    publish(publisher, batch(agent_id, [record(100 + j) for j in range(3)]))
    wait_for(lambda: any(c.command.value == "breaker_closed" for c in commands_seen if c.agent_id == agent_id))
    assert "breaker" not in (agent_doc(firestore, agent_id) or {})["holds"]


def test_runaway_loop_pauses_the_agent(stack, publisher, firestore, api, agent_id, tenant, commands_seen) -> None:
    register(publisher, firestore, agent_id, tenant=tenant)
    assert api.send("PUT", f"/v1/tenants/{tenant}/protection", {"runaway_calls_per_minute": 50}).status_code == 200
    at = datetime.now(UTC).replace(second=30)
    publish(publisher, batch(agent_id, [record(j, at=at, cost="0.0001") for j in range(60)]))
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["holds"].get("pause") and d)
    assert doc["status"] == "suspended" and "runaway loop: 60 calls in minute" in doc["holds"]["pause"]["reason"]
    wait_for(lambda: any(c.command.value == "pause" for c in commands_seen if c.agent_id == agent_id))
    resumed = api.send("POST", f"/v1/agents/{agent_id}/resume", {"reason": "fixed the loop"})
    assert resumed.status_code == 200, resumed.text
    wait_for(lambda: any(c.command.value == "resume" for c in commands_seen if c.agent_id == agent_id))


def test_bad_cost_batches_are_rejected_with_a_reason_and_the_stream_goes_on(
    stack, publisher, firestore, api, agent_id, tenant
) -> None:
    register(publisher, firestore, agent_id, tenant=tenant)
    good = batch(agent_id, [record(1)])
    body, attrs = signed_encode(good)  # signed by the agent: what is wrong is only what the test changes
    negative = body.replace(b'"input_tokens":100', b'"input_tokens":-5')
    duplicated = signed_encode(good)[0].replace(b'"records":[', b'"records":[' + _record_json(good) + b",")
    other = f"other-{agent_id}"
    mixed = dict(attrs, agent_id=other)  # the attribute says one agent, the body another
    publish_raw(publisher, EventType.COST, negative, attrs)
    publish_raw(publisher, EventType.COST, duplicated, attrs)
    publish_raw(publisher, EventType.COST, body, mixed)
    publish(publisher, batch(f"never-{agent_id[3:]}", [record(2)]))  # an agent nobody registered
    publish(publisher, batch(agent_id, [record(3, at=datetime.now(UTC) - timedelta(days=2))]))  # a clock 2 days off
    publish(publisher, good)

    def codes() -> list[str]:
        items = api.get("/v1/rejections", agent_id=agent_id).json()["items"]
        return sorted(r["code"] for r in items)

    assert wait_for(lambda: len(c := codes()) == 3 and c) == [
        "implausible_time",
        "schema_violation",
        "schema_violation",
    ]
    wait_for(lambda: api.get("/v1/rejections", agent_id=other).json()["items"])
    wait_for(lambda: api.get("/v1/rejections", agent_id=f"never-{agent_id[3:]}").json()["items"], timeout=60)
    assert month_usage(api, agent_id)["calls"] == 1


def _record_json(good: CostBatch) -> bytes:
    return good.records[0].model_dump_json().encode()


def test_a_tenant_at_its_hard_limit_holds_every_agent_until_the_budget_is_raised(
    stack, publisher, firestore, api, tenant, commands_seen
) -> None:
    spender, idle = f"sp-{uuid.uuid4().hex[:10]}", f"id-{uuid.uuid4().hex[:10]}"
    for agent in (spender, idle):
        register(publisher, firestore, agent, tenant=tenant)
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "0.10"}).status_code == 200
    for i in range(3):  # $0.04 a batch: the third takes the tenant past $0.10
        publish(publisher, batch(spender, [record(i * 10 + j, cost="0.01") for j in range(4)]))

    def held(agent: str) -> bool:
        return "tenant_budget" in ((agent_doc(firestore, agent) or {}).get("holds") or {})

    wait_for(lambda: held(spender) and held(idle))  # the idle agent too: it shares the tenant's budget
    for agent in (spender, idle):
        assert (agent_doc(firestore, agent) or {})["status"] == "suspended"
    wait_for(lambda: {c.agent_id for c in commands_seen if c.command.value == "budget_exhausted"} >= {spender, idle})
    usage = api.get(f"/v1/tenants/{tenant}/usage").json()["periods"]["day"]
    assert Decimal(usage["spend_usd"]) == Decimal("0.12") and usage["remaining_usd"] == "0"

    # Raising the tenant's budget lifts every agent's tenant hold at once.
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "10"}).status_code == 200
    wait_for(lambda: not held(spender) and not held(idle))
    wait_for(lambda: {c.agent_id for c in commands_seen if c.command.value == "budget_restored"} >= {spender, idle})
    assert all((agent_doc(firestore, a) or {})["status"] == "active" for a in (spender, idle))


def test_an_agent_that_keeps_calling_through_a_hold_is_told_again(
    stack, publisher, firestore, api, agent_id, tenant, commands_seen
) -> None:
    import time

    register(publisher, firestore, agent_id, tenant=tenant)
    paused = api.send("POST", f"/v1/agents/{agent_id}/pause", {"reason": "investigating"})
    assert paused.status_code == 200, paused.text
    first = wait_for(lambda: [c for c in commands_seen if c.agent_id == agent_id and c.command.value == "pause"])
    time.sleep(2.5)  # past FLEET_RESEND_AFTER_S (2 s in these tests): the agent should have stopped
    publish(publisher, batch(agent_id, [record(1)]))  # ... but it is still calling: it never heard
    again = wait_for(lambda: len(s := [c for c in commands_seen if c.agent_id == agent_id]) >= 2 and s)
    assert [c.command_id for c in again] == [first[0].command_id] * 2  # the same command, the same id


def test_the_sdk_refuses_calls_once_the_fleet_stops_the_agent_at_its_hard_limit(
    stack, firestore, api, tenant, tmp_path
) -> None:
    """The whole loop with the real SDK: record calls, the hard limit is reached, the agent's own
    CommandListener receives budget_exhausted, and its recorder refuses the next call."""
    import time

    from fleet_agent import CallRefused, FleetAgent
    from fleet_agent.contracts import BudgetSpec

    agent_id = f"sdk-{uuid.uuid4().hex[:10]}"
    reg = registration_for(agent_id, tenant, BudgetSpec(hourly_usd=Decimal("0.50")))
    # Without leases: this is the after-the-fact hold (budget_exhausted); leases stop the agent earlier,
    # with lease_exhausted (tests/integration/test_leases.py).
    with FleetAgent(reg, project=PROJECT, leases=False, **sdk_identity(tmp_path, agent_id, tenant)) as agent:
        agent.listen()  # enrolling: started by register(), on the subscription the fleet made for the agent
        agent.register()
        wait_for(lambda: agent_doc(firestore, agent_id))
        made, refused = 0, None
        deadline = time.monotonic() + 60
        while refused is None and time.monotonic() < deadline:
            try:
                with agent.costs.call("answer", model="gpt-4o") as call:
                    call.tokens(100, 20)
                    call.cost("0.01")  # 50 calls reach the limit
                made += 1
            except CallRefused as exc:
                refused = exc
            time.sleep(0.02)
        assert refused is not None, f"the SDK never refused ({made} calls made)"
        assert "budget_exhausted" in str(refused) and refused.until is not None
        assert made >= 50  # the limit is reached at the 50th call; how soon after is measured by make bench
        doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d.get("holds", {}).get("budget") and d)
        assert doc["status"] == "suspended"
        with pytest.raises(CallRefused), agent.costs.call("answer", model="gpt-4o"):
            pytest.fail("the model must not be called while the agent is stopped")

    def spent() -> Decimal:
        return Decimal(api.get(f"/v1/agents/{agent_id}/usage").json()["periods"]["hour"]["spend_usd"])

    wait_for(lambda: spent() == Decimal("0.01") * made)  # every call made was counted, once


def registration_for(agent_id: str, tenant: str, budget: Any) -> Any:
    return registration(agent_id, tenant=tenant, budget=budget)


def test_the_month_document_counts_each_model_per_day_with_failures_and_repeats(
    stack, firestore, tenant, tmp_path
) -> None:
    """The real SDK flags repeated requests; fleet-costs adds per-model day counters to the agent's
    month document (``xDD.<model>.<counter>``), which the report's readers parse back."""
    from fleet_agent import FleetAgent

    from shared.domain.usage import ModelDay
    from shared.store import usage as usage_store

    model = "anthropic/claude-3.5-sonnet:beta"
    agent_id = f"sdk-{uuid.uuid4().hex[:10]}"
    started = datetime.now(UTC)
    reg = registration(agent_id, tenant=tenant)
    # Without leases: this is about the month document's counters, not about waiting for a first grant.
    with FleetAgent(reg, project=PROJECT, leases=False, **sdk_identity(tmp_path, agent_id, tenant)) as agent:
        agent.register()
        wait_for(lambda: agent_doc(firestore, agent_id))
        for prompt in ["hello", "bye", "hello", "hello"]:  # the 2nd and 3rd "hello" are repeats
            with agent.costs.call("answer", model="gpt-4o", request_key=prompt) as call:
                call.tokens(100, 20)
                call.cost("0.01")
        with pytest.raises(RuntimeError), agent.costs.call("answer", model=model, request_key="why") as call:
            call.tokens(10, 0)
            call.cost("0.002")
            raise RuntimeError("provider down")
        with agent.costs.call("answer", model=model, request_key="why") as call:  # a failure is not cached
            call.tokens(10, 5)
            call.cost("0.003")
    day = started.date()
    if datetime.now(UTC).date() != day:
        pytest.skip("the calls straddled midnight UTC")
    doc_ref = firestore.collection("usage").document(f"a.{agent_id}.{day:%Y-%m}")

    def counted() -> dict[str, Any] | None:
        doc = doc_ref.get()
        models = (doc.to_dict() or {}).get(f"x{day:%d}", {}) if doc.exists else {}
        return models if sum(m.get("calls", 0) for m in models.values()) == 6 else None

    stored = wait_for(counted, timeout=60)
    nanos = 1_000_000_000
    # src: the priced calls per price source (here the agent's own cost)
    assert stored == {
        "gpt-4o": {"calls": 4, "input_tokens": 400, "output_tokens": 80, "usd_nanos": 4 * nanos // 100,
                   "repeats": 2, "repeat_usd_nanos": 2 * nanos // 100, "src": {"agent": 4}},
        model: {"calls": 2, "failures": 1, "input_tokens": 20, "output_tokens": 5, "usd_nanos": 5 * nanos // 1000,
                "failed_usd_nanos": 2 * nanos // 1000, "src": {"agent": 2}},
    }  # fmt: skip
    models = usage_store.agent_day_models(agent_id, day)
    assert models["gpt-4o"] == ModelDay(calls=4, input_tokens=400, output_tokens=80, usd_nanos=40_000_000,
                                        repeats=2, repeat_usd_nanos=20_000_000, sources={"agent": 4})  # fmt: skip
    assert (models[model].failures, models[model].failed_usd_nanos, models[model].repeats) == (1, 2_000_000, 0)
    assert usage_store.agent_month_models(agent_id, f"{day:%Y-%m}") == {f"{day:%d}": models}
    assert usage_store.agent_day_models(agent_id, day + timedelta(days=1)) == {}
