"""Budget leases through the real path with real SDK agents (FleetAgent, enrolled and signing; the fleet's
signed ``lease`` commands on each agent's own subscription): a shared tenant budget is never passed by
concurrent agents, a dead agent's lease returns to the pool, a lost lease command is repaired, a hold
revokes the lease and a resume brings a new one, an SDK spending beyond its lease is caught and paused,
and an agent cut off from the fleet stops at what it was granted (fail closed).

The stack's leases last ``FLEET_LEASE_TTL_S`` = 15 s and return ``FLEET_LEASE_GRACE_S`` = 3 s later
(tests/integration/conftest.py). Calls are priced exactly (gpt-4o: $0.0000025 per input token, $0.00001 per
output token), so a call's worst case equals its cost and an honest agent never reports ``over``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fleet_agent import CallRefused, FleetAgent
from fleet_agent.contracts import Command, CommandType, seq_of
from fleet_agent.leases import Reservation

from tests.integration.conftest import tick, wait_for
from tests.integration.helpers import PROJECT, agent_doc, registration, sdk_identity

pytestmark = pytest.mark.integration

#: (prompt tokens = max tokens' input side, output tokens) of exactly priced calls on gpt-4o.
CENT = (1000, 750)  # $0.0025 + $0.0075 = $0.01
MILL = (100, 75)  # $0.00025 + $0.00075 = $0.001
HALF_CENT = (1000, 250)  # $0.0025 + $0.0025 = $0.005


def new_tenant(api: Any, hourly_usd: str) -> str:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    reply = api.send("PUT", f"/v1/tenants/{tenant}/budget", {"hourly_usd": hourly_usd})
    assert reply.status_code == 200, reply.text
    return tenant


class Applied:
    """The commands an agent applied (its listener's ``on_command``), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: list[Command] = []

    def __call__(self, _agent_id: str, command: Command) -> None:
        with self._lock:
            self.commands.append(command)

    def leases(self) -> list[Command]:
        with self._lock:
            return [c for c in self.commands if c.command is CommandType.LEASE and c.lease is not None]

    def granted_usd(self, epoch: str) -> Decimal:
        """The sum of the lease amounts of ``epoch`` applied (each lease id once). A grant of another epoch
        may have been ignored (one issued before the latest applied: a late registration grant)."""
        amounts = {
            c.lease.lease_id: c.lease.usd
            for c in self.leases()
            if c.lease is not None and c.lease.lease_id.startswith(f"{epoch}.")
        }
        return sum(amounts.values(), Decimal(0))

    def kinds(self) -> list[str]:
        with self._lock:
            return [c.command.value for c in self.commands]


def start_agent(
    tmp_path: Path,
    tenant: str,
    *,
    prepare: Callable[[FleetAgent], None] | None = None,
    on_command: Applied | None = None,
    await_lease: bool = True,
    **kw: Any,
) -> FleetAgent:
    """A new SDK agent of ``tenant`` (leases on, the default), listening and registered, holding the lease
    its registration got (unless not ``await_lease``). ``prepare(agent)`` runs before it listens (e.g. to
    patch its recorder)."""
    agent_id = f"ls-{uuid.uuid4().hex[:10]}"
    agent = FleetAgent(
        registration(agent_id, tenant=tenant), project=PROJECT, **sdk_identity(tmp_path, agent_id, tenant), **kw
    )
    if prepare is not None:
        prepare(agent)
    agent.listen(on_command)
    agent.register()
    if await_lease:
        # A call made before the registration's grant arrives asks holding no lease: the fleet starts
        # another epoch, and the registration's grant, issued earlier, is ignored when it arrives.
        try:
            wait_for(lambda: agent.costs.lease is not None)
        except AssertionError:
            agent.close()  # not left streaming for the rest of the session
            raise
    return agent


def spend(agent: FleetAgent, tokens: tuple[int, int] = CENT) -> None:
    """One exactly priced call: its worst case (``prompt_tokens``, ``max_tokens``) is what it costs."""
    with agent.costs.call("answer", model="gpt-4o", prompt_tokens=tokens[0], max_tokens=tokens[1]) as call:
        call.tokens(*tokens)


def spend_until_ok(agent: FleetAgent, tokens: tuple[int, int] = CENT, timeout: float = 30.0) -> list[CallRefused]:
    """Call until one call goes through; returns the refusals met on the way."""
    refused: list[CallRefused] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            spend(agent, tokens)
            return refused
        except CallRefused as exc:
            refused.append(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"no call went through within {timeout}s: {[str(r) for r in refused]}") from exc
            time.sleep(0.1)


def agent_usage(api: Any, agent_id: str) -> dict[str, Any]:
    reply = api.get(f"/v1/agents/{agent_id}/usage")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def tenant_usage(api: Any, tenant: str) -> dict[str, Any]:
    reply = api.get(f"/v1/tenants/{tenant}/usage")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def hour(api: Any, tenant: str) -> tuple[int, Decimal, Decimal]:
    """The tenant's hour: (calls counted, spend, lease reserve)."""
    usage = tenant_usage(api, tenant)
    counted = usage["periods"]["hour"]
    reserved = Decimal(usage["reserved"]["hour"]["reserved_usd"]) if "hour" in usage["reserved"] else Decimal(0)
    return int(counted["calls"]), Decimal(counted["spend_usd"]), reserved


def test_concurrent_sdk_agents_never_pass_a_shared_tenant_budget(stack, api, tmp_path) -> None:
    tenant = new_tenant(api, "0.50")
    agents = [start_agent(tmp_path, tenant) for _ in range(4)]
    made = [0] * len(agents)
    refusals: list[CallRefused | None] = [None] * len(agents)

    def run(i: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                spend(agents[i])
            except CallRefused as exc:
                if exc.reason == "unknown_model" and made[i] == 0:
                    continue  # the registration's lease prices no model yet: the request asked for gpt-4o
                refusals[i] = exc
                return
            made[i] += 1

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(agents))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for agent in agents:
            agent.close()  # flushes every record
    assert [r.reason if r else None for r in refusals] == ["lease_exhausted"] * len(agents), refusals
    counted = wait_for(lambda: (h := hour(api, tenant))[0] == sum(made) and h, timeout=60)
    spent = counted[1]
    assert spent == Decimal("0.01") * sum(made)  # every call counted, once
    assert Decimal("0.45") <= spent <= Decimal("0.50"), (made, spent)
    assert all(m > 0 for m in made), made  # each agent got a share


def test_a_dead_agents_lease_returns_to_the_pool(stack, publisher, api, tmp_path) -> None:
    tenant = new_tenant(api, "0.012")
    first = start_agent(tmp_path, tenant)
    try:
        spend_until_ok(first, MILL)  # the first call asks for gpt-4o's price
        spend(first, MILL)
        made = 2
    finally:
        first.close()  # its last batch leaves; then it is silent (close ends no lease)
    _calls, spent, reserved = wait_for(lambda: (h := hour(api, tenant))[0] == made and h, timeout=60)
    assert spent == Decimal("0.002")
    assert reserved > spent  # the unspent part of its lease is still held for it
    lease = agent_usage(api, first.agent_id)["lease"]
    assert lease is not None and Decimal(lease["charged_usd"]) == reserved
    room_before = Decimal("0.012") - reserved

    returns_at = datetime.fromisoformat(lease["returns_at"]).timestamp()
    time.sleep(max(0.0, returns_at - time.time()) + 0.5)  # TTL 15 s after its latest grant, then 3 s of grace

    def returned() -> bool:
        # The close's batch may be granted a top-up just after it was counted, moving returns_at a little
        # later than the lease read above: tick until a sweep finds it due, as the minute job would.
        tick(publisher, "liveness-sweep")
        return hour(api, tenant)[2] == spent  # the reserve is exactly the spend again

    wait_for(returned, timeout=30, every=2.0)
    assert agent_usage(api, first.agent_id)["lease"] is None

    second = start_agent(tmp_path, tenant)
    try:
        refused = spend_until_ok(second, HALF_CENT)  # needs more than the room was before the return
        assert all(r.reason == "unknown_model" for r in refused), refused
        granted = Decimal(agent_usage(api, second.agent_id)["lease"]["granted_usd"])
        assert room_before < Decimal("0.005") <= granted <= Decimal("0.012") - spent
    finally:
        second.close()


@pytest.mark.parametrize("drop_seq", [1, 2], ids=["registration-grant", "first-top-up"])
def test_a_lost_lease_command_is_repaired(stack, api, tmp_path, drop_seq: int) -> None:
    """The agent misses one lease command (the registration's grant, or the first top-up, which prices the
    model): the fleet re-sends the latest lease to a batch naming an older one, or the SDK asks again."""
    tenant = new_tenant(api, "5")
    applied = Applied()
    dropped: list[Command] = []

    def lose_one(agent: FleetAgent) -> None:
        recorder = agent.costs
        apply = recorder.apply

        def lossy(command: Command) -> bool:
            lease = command.lease
            if command.command is CommandType.LEASE and lease and seq_of(lease.lease_id) == drop_seq and not dropped:
                dropped.append(command)
                return False  # as if it never arrived
            return apply(command)

        recorder.apply = lossy  # type: ignore[method-assign]

    agent = start_agent(tmp_path, tenant, prepare=lose_one, on_command=applied, await_lease=drop_seq != 1)
    try:
        refused = spend_until_ok(agent)  # the first call asks for the model's price: the top-up is lost
        assert dropped
        assert all(r.reason in ("lease_exhausted", "unknown_model") for r in refused), refused
        spend(agent)  # and the agent goes on

        def same_lease() -> tuple[str, str] | None:
            held, fleet = agent.costs.lease, agent_usage(api, agent.agent_id)["lease"]
            return (held.lease_id, fleet["lease_id"]) if held and fleet and held.lease_id == fleet["lease_id"] else None

        wait_for(same_lease, timeout=10)  # the agent holds the fleet's latest (a grant may still be on its way)
        lost = dropped[0].lease
        assert lost is not None
        again = [c.lease.lease_id for c in applied.leases() if c.lease]
        # Repaired either way: the lost grant came again (re-sent under its id), or a later one replaced it.
        resent = lost.lease_id in again
        assert resent or any(i != lost.lease_id for i in again), again
    finally:
        agent.close()


def test_a_pause_revokes_the_lease_and_a_resume_brings_a_new_epoch(stack, api, tmp_path) -> None:
    tenant = new_tenant(api, "5")
    agent = start_agent(tmp_path, tenant)
    try:
        spend_until_ok(agent)
        before = agent.costs.lease
        assert before is not None
        paused = api.send("POST", f"/v1/agents/{agent.agent_id}/pause", {"reason": "investigating"})
        assert paused.status_code == 200, paused.text
        wait_for(lambda: agent.costs.lease is None)  # the pause command ended the lease at once
        with pytest.raises(CallRefused) as refused, agent.costs.call("answer", model="gpt-4o", max_tokens=750):
            pytest.fail("the model must not be called while the agent is paused")
        assert refused.value.reason == "pause"

        resumed = api.send("POST", f"/v1/agents/{agent.agent_id}/resume", {"reason": "done"})
        assert resumed.status_code == 200, resumed.text
        refusals = spend_until_ok(agent)  # refused until the resume arrives, then a new lease is asked for
        assert all(r.reason == "pause" for r in refusals), refusals
        after = agent.costs.lease
        # A new grant, not the revoked balance revived: a new epoch, or (asked within 10 s of the epoch's
        # start, when the fleet tops the epoch up rather than churn epochs) a later grant of it, which the
        # SDK starts afresh from (its balance is that grant alone).
        assert after is not None and after.lease_id != before.lease_id
        fleet = agent_usage(api, agent.agent_id)["lease"]
        assert fleet is not None and fleet["epoch"] == after.epoch
    finally:
        agent.close()


def test_an_sdk_spending_beyond_its_lease_is_caught_and_paused(stack, firestore, api, tmp_path, monkeypatch) -> None:
    """A broken SDK: its admission lets every call through as if its worst case were reserved, so calls
    are spent under the lease far beyond its balance, and it reports no ``over``. The fleet counts the
    spend exactly, sees it beyond the lease's grants, alerts ``lease_exceeded`` and pauses the agent."""
    tenant = new_tenant(api, "100")
    agent = start_agent(tmp_path, tenant)
    try:
        spend_until_ok(agent, MILL)  # an honest first call: the model priced, a lease in hand
        lease = agent.costs.lease
        assert lease is not None
        wallet = agent.costs._wallet
        assert wallet is not None

        def admit_anything(_wallet: Any, _model: str, _max: int | None, _prompt: int | None) -> Reservation:
            epoch = wallet.current()
            assert epoch is not None
            return Reservation(epoch, usd=10**12, tokens=10**9, input_femto=0, output_femto=0)  # "fits", over 0

        monkeypatch.setattr(agent.costs, "_admit", admit_anything)
        beyond = int(lease.balance_usd / Decimal("0.01")) * 3 + 3  # three times the balance, in $0.01 calls
        for _ in range(beyond):
            with agent.costs.call("answer", model="gpt-4o", prompt_tokens=CENT[0], max_tokens=CENT[1]) as call:
                call.tokens(*CENT)
                call.cost("0.01")
        assert agent.costs.lease is not None and agent.costs.lease.over_usd == 0  # it says nothing
        agent.costs.flush()

        doc = wait_for(lambda: (d := agent_doc(firestore, agent.agent_id)) and "pause" in d.get("holds", {}) and d)
        assert "lease_exceeded" in doc["holds"]["pause"]["reason"]
        alerts = api.get("/v1/alerts", agent_id=agent.agent_id, rule="lease_exceeded").json()
        assert alerts["items"], alerts
        spent = Decimal("0.001") + Decimal("0.01") * beyond
        wait_for(lambda: Decimal(agent_usage(api, agent.agent_id)["periods"]["hour"]["spend_usd"]) == spent)
        wait_for(lambda: agent.costs.lease is None)  # the pause reached the SDK and ended its lease
        with pytest.raises(CallRefused) as refused, agent.costs.call("answer", model="gpt-4o"):
            pytest.fail("a paused agent must not call")
        assert refused.value.reason == "pause"
    finally:
        agent.close()


def test_an_offline_agent_stops_at_its_lease(stack, api, tmp_path) -> None:
    tenant = new_tenant(api, "5")
    applied = Applied()
    agent = start_agent(tmp_path, tenant, on_command=applied, lease_wait_s=0.5)
    try:
        spend_until_ok(agent, MILL)  # prices gpt-4o and takes a top-up
        listener = agent.listener
        assert listener is not None
        listener.close()  # cut off: no grant reaches the agent from now on
        held = agent.costs.lease
        assert held is not None
        granted = applied.granted_usd(held.epoch)
        assert granted > 0 and held.balance_usd == granted - Decimal("0.001")
        made, refused, took = 1, None, 0.0
        deadline = time.monotonic() + 60
        while refused is None and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                spend(agent, MILL)
                made += 1
            except CallRefused as exc:
                refused, took = exc, time.monotonic() - began
        assert refused is not None and refused.reason == "lease_exhausted", refused
        assert 0.45 <= took <= 3.0, took  # it waited lease_wait_s (0.5 s) for a grant that never came
        assert applied.granted_usd(held.epoch) == granted  # nothing arrived after the cut
        assert Decimal("0.001") * made <= granted
        agent.costs.flush()
        wait_for(lambda: agent_usage(api, agent.agent_id)["periods"]["hour"]["calls"] == made)
        counted = Decimal(agent_usage(api, agent.agent_id)["periods"]["hour"]["spend_usd"])
        assert counted == Decimal("0.001") * made and counted <= granted
        assert granted - counted < Decimal("0.001")  # it spent what it had, not less
    finally:
        agent.close()


def test_a_leased_agent_whose_calls_fail_is_stopped_by_its_breaker(stack, api, tmp_path) -> None:
    """Failed calls leave the SDK within a second (not at the 30 s flush of leased batches), so the breaker
    (5 failures in a row by default) stops the agent after a handful of failures, not dozens."""
    tenant = new_tenant(api, "5")
    agent = start_agent(tmp_path, tenant)
    failed = 0
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with agent.costs.call("answer", model="gpt-4o", prompt_tokens=100, max_tokens=100):
                    failed += 1
                    raise TimeoutError("the model timed out")
            except TimeoutError:
                pass
            except CallRefused as exc:
                assert exc.reason == "breaker_open", exc
                break
            assert time.monotonic() < deadline, f"not stopped after {failed} failed calls"
            time.sleep(0.1)  # 10 failing calls a second
        assert 5 <= failed <= 30, failed
    finally:
        agent.close()
