"""`make bench`, liveness sweep section: reads and time of one sweep over a large fleet, and Slack
notices under concurrent minute jobs.

    python -m tests.bench.sweep      # this section alone (a few minutes)

1. 10,000 agent documents (real ``AgentRecord``s through ``agent_store.to_stored``) are written
   straight to the Firestore emulator, across 10 tenants: 9,900 healthy (``sweep_at`` ahead) and
   100 late (last heartbeat 4 intervals of 30 s ago, ``sweep_at`` passed). Seeding is not counted.
2. One ``shared.services.sweep.sweep(now)`` in this process, metered (``metering.metered()``): Firestore reads,
   writes and wall time. The baseline, in the same run: the naive design, streaming every agent
   document and checking ``sweep_at`` in Python. Then ``shared.services.sweep.run(now)`` (sweep, root
   alerts, the Slack outbox to an in-process fake Slack) for the same agents, and for a fresh set
   of 100 late agents (the whole minute job: sweep and notify).
3. Concurrency: a fresh set of 100 late agents, then ``run(now)`` from 4 threads started together
   (a barrier). Slack messages are counted per liveness episode (top-level ``chat.postMessage``
   calls listing the agent; a grouped message counts once for each agent it lists), and every
   notice of the ``notifications`` collection is read back.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from emulators.stack import FAKE_SLACK_TOKEN, ROOT, Stack
from shared.platform import metering

AGENTS = int(os.environ.get("BENCH_SWEEP_AGENTS", 10_000))
LATE = int(os.environ.get("BENCH_SWEEP_LATE", 100))
TENANTS = 10
INTERVAL_S = 30
#: Late agents last heard from this many intervals ago (the late rung is 3 missed intervals).
LATE_INTERVALS = 4
THREADS = int(os.environ.get("BENCH_SWEEP_THREADS", 4))
BATCH = 500
#: Samples in each agent's ring (``recent``), as a heartbeating agent has: documents of a real size.
RING = 10
STATE_DIR = ROOT / ".stack-bench-sweep"

#: Ids of the agents of each set: ``bench-sweep-<set>-<tenant>-<n>``; fixed width, so no id is a
#: prefix of another and a message is searched for them with one pattern.
ID_PATTERN = re.compile(r"bench-sweep-[a-z]+-\d{2}-\d{5}")


def tenant_name(t: int) -> str:
    return f"bench-sweep-t{t:02d}"


def agent_id(group: str, t: int, n: int) -> str:
    return f"bench-sweep-{group}-{t:02d}-{n:05d}"


def agent_doc(agent: str, tenant: str, last_heartbeat: datetime) -> dict[str, Any]:
    from shared.domain.agent_record import AgentRecord, Liveness
    from shared.domain.lifecycle import State
    from shared.domain.liveness import deadline
    from shared.store import agents as agent_store

    registered = last_heartbeat - timedelta(hours=1)
    recent = {}
    for k in range(RING):
        at = last_heartbeat - timedelta(seconds=INTERVAL_S * (RING - 1 - k))
        recent[f"s{k:02d}"] = {
            "seq": k + 1, "at": at.isoformat(), "sent_at": at.isoformat(), "status": "busy",
            "metrics": {"cpu_pct": 40.0, "memory_pct": 50.0, "error_rate": 0.01, "latency_ms_p95": 800.0,
                        "active_tasks": 2, "completed_tasks": k, "failed_tasks": 0, "tokens_per_s": 12.5},
        }  # fmt: skip
    record = AgentRecord(
        agent_id=agent, tenant=tenant, name=agent, agent_type="llm", version="1", owner="bench",
        heartbeat_interval_s=INTERVAL_S, status=State.ACTIVE, status_since=registered, registered_at=registered,
        last_registered_at=registered, versions=["1"], last_heartbeat_at=last_heartbeat, last_seq=RING,
        heartbeats=RING, late_after=last_heartbeat + timedelta(seconds=3 * INTERVAL_S), liveness=Liveness.OK,
        sweep_at=deadline(last_heartbeat, INTERVAL_S, Liveness.LATE), recent=recent,
    )  # fmt: skip
    return agent_store.to_stored(record.to_doc())


def seed(docs: list[tuple[str, dict[str, Any]]]) -> float:
    """Write the documents in batches of 500, four batches at a time; returns the seconds taken."""
    from shared.store import agents as agent_store
    from shared.store import db

    client = db.client()

    def commit(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        batch = client.batch()
        for agent, doc in chunk:
            batch.set(client.collection(agent_store.AGENTS).document(agent), doc)
        batch.commit()

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(commit, [docs[i : i + BATCH] for i in range(0, len(docs), BATCH)]))
    return time.perf_counter() - start


def late_set(group: str, now: datetime, count: int = LATE) -> list[tuple[str, dict[str, Any]]]:
    """``count`` late agents, spread evenly over the tenants (10 each with 100)."""
    last = now - timedelta(seconds=LATE_INTERVALS * INTERVAL_S)
    return [
        (a, agent_doc(a, tenant_name(i % TENANTS), last))
        for i in range(count)
        for a in [agent_id(group, i % TENANTS, i // TENANTS)]
    ]


def healthy_set(now: datetime, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Agents heard from within the last interval: ``sweep_at`` 60 to 90 s ahead."""
    return [
        (a, agent_doc(a, tenant_name(i % TENANTS), now - timedelta(seconds=i % INTERVAL_S)))
        for i in range(count)
        for a in [agent_id("ok", i % TENANTS, i // TENANTS)]
    ]


@contextmanager
def counting_tenant_reads() -> Iterator[Counter[str]]:
    """Counts reads of tenant settings (``tenants/{tenant}``, cached per instance for 10 s)."""
    from shared.store import config as config_store

    counts: Counter[str] = Counter()
    original = config_store.read_tenant

    def read_tenant(name: str) -> Any:
        counts[name] += 1
        return original(name)

    config_store.read_tenant = read_tenant  # type: ignore[assignment]
    try:
        yield counts
    finally:
        config_store.read_tenant = original


def cold_instance() -> None:
    """Forget what this process cached (agents, tenant settings): each measurement starts as a new
    instance would."""
    from shared.store import agents as agent_store
    from shared.store import config as config_store

    agent_store.cache.clear()
    config_store.cache.clear()


@dataclass
class Measured:
    label: str
    seconds: float
    reads: int
    writes: int
    conflicts: int = 0
    due: int = 0
    tenant_reads: int = 0
    slack_posts: int = 0
    slack_calls: int = 0
    result: dict[str, Any] = field(default_factory=dict)


def naive(now: datetime) -> tuple[Measured, int]:
    """The baseline: stream every agent document, in pages of the sweep's size, and check ``sweep_at``
    in Python (the cheapest check: no parsing into a record, no writes). Returns the measurement and
    the agents found due."""
    import shared.services.sweep
    from shared.store import agents as agent_store
    from shared.store import db

    due = 0
    with metering.metered() as meter:
        start = time.perf_counter()
        query = db.client().collection(agent_store.AGENTS).order_by("__name__").limit(shared.services.sweep.PAGE)
        last = None
        while True:
            docs = list((query.start_after(last) if last is not None else query).stream(**db.call_options()))
            metering.count(reads=max(1, len(docs)))
            for doc in docs:
                sweep_at = (doc.to_dict() or {}).get("sweep_at")
                if sweep_at is not None and sweep_at <= now:
                    due += 1
            if len(docs) < shared.services.sweep.PAGE:
                break
            last = docs[-1]
        seconds = time.perf_counter() - start
    return Measured("naive: stream every agent, check `sweep_at` in Python (baseline)", seconds,
                    meter.reads, meter.writes, due=due), due  # fmt: skip


def measure(label: str, fake: Any, call: Callable[[], Any]) -> Measured:

    cold_instance()
    fake.clear()
    with counting_tenant_reads() as tenants, metering.metered() as meter:
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
    calls = fake.calls()
    out = Measured(
        label, seconds, meter.reads, meter.writes, meter.conflicts, tenant_reads=sum(tenants.values()),
        slack_posts=sum(1 for c in calls if c["method"] == "chat.postMessage"), slack_calls=len(calls),
    )  # fmt: skip
    if hasattr(result, "as_dict"):
        out.due = result.due
        out.result = result.as_dict()
    else:
        out.due = result["due"]
        out.result = result
    return out


def message_text(call: dict[str, Any]) -> str:
    params = call.get("params") or {}
    return str(params.get("text") or "") + json.dumps(params.get("blocks") or [], ensure_ascii=False)


@dataclass
class Concurrent:
    threads: int
    seconds: float
    episodes: int
    notices: int
    notice_states: Counter[str]
    attempts: Counter[int]
    per_episode: list[int]
    duplicates: int
    missing: int
    unnamed_groups: int
    top_level_posts: int
    grouped_posts: int
    conflicts: int
    lost_claims: int
    reads: int
    writes: int
    moved: int
    errors: list[str]
    other_notices: int
    #: Per thread: agents it moved, messages it posted, notices it claimed and lost.
    by_thread: list[tuple[int, int, int]] = field(default_factory=list)


def concurrent(fake: Any, agents: list[str], job: Callable[[], dict[str, Any]]) -> Concurrent:
    """``job`` from THREADS threads released together; then Slack messages and notices are counted."""
    from shared.store import db
    from shared.store import episodes as episode_store

    cold_instance()
    fake.clear()
    barrier = threading.Barrier(THREADS)
    meters: list[Any] = [None] * THREADS
    results: list[dict[str, Any]] = [{} for _ in range(THREADS)]
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            with metering.metered() as meter:
                meters[i] = meter
                results[i] = job()
        except Exception as exc:  # reported, not raised: the other threads' figures still count
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start

    wanted = set(agents)
    per_agent: Counter[str] = Counter({a: 0 for a in agents})
    top_level = grouped = unnamed = 0
    for call in fake.calls("chat.postMessage"):
        params = call.get("params") or {}
        response = call.get("response") or {}
        if params.get("thread_ts") or call.get("failed") or not response.get("ok"):
            continue
        text = message_text(call)
        named = set(ID_PATTERN.findall(text)) & wanted
        if not named:
            continue
        top_level += 1
        if len(named) > 1:
            grouped += 1
        if "more" in text and "… and" in text:
            unnamed += 1
        for agent in named:
            per_agent[agent] += 1

    client = db.client()
    notices = [d.to_dict() or {} for d in client.collection(episode_store.NOTIFICATIONS).stream()]
    ours = [n for n in notices if n.get("agent_id") in wanted]
    episodes = [d.to_dict() or {} for d in client.collection(episode_store.EPISODES).stream()]
    our_episodes = {e["id"] for e in episodes if e.get("agent_id") in wanted}
    counts = list(per_agent.values())
    return Concurrent(
        threads=THREADS, seconds=seconds, episodes=len(our_episodes), notices=len(ours),
        notice_states=Counter(str(n.get("state")) for n in ours),
        attempts=Counter(int(n.get("attempts") or 0) for n in ours),
        per_episode=counts, duplicates=sum(max(0, c - 1) for c in counts), missing=sum(1 for c in counts if c == 0),
        unnamed_groups=unnamed, top_level_posts=top_level, grouped_posts=grouped,
        conflicts=sum(m.conflicts for m in meters if m), lost_claims=sum(
            int((r.get("notifications") or {}).get("lost_claims", 0)) for r in results),
        reads=sum(m.reads for m in meters if m), writes=sum(m.writes for m in meters if m),
        moved=sum(sum((r.get("moved") or {}).values()) for r in results), errors=errors,
        other_notices=sum(1 for n in ours if n.get("event") != "open"),
        by_thread=[(sum((r.get("moved") or {}).values()), int((r.get("notifications") or {}).get("sent", 0)),
                    int((r.get("notifications") or {}).get("lost_claims", 0))) for r in results],
    )  # fmt: skip


def figures() -> list[tuple[str, Callable[[Concurrent], str]]]:
    def states(c: Concurrent) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.notice_states.items()))

    def claims(c: Concurrent) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(c.attempts.items()))

    def threads(c: Concurrent) -> str:
        return " · ".join(f"{moved}/{sent}/{lost}" for moved, sent, lost in c.by_thread)

    return [
        ("wall time (barrier to last thread done)", lambda c: f"{c.seconds:.2f} s"),
        ("liveness episodes (one per late agent)", lambda c: str(c.episodes)),
        ("notices in `notifications` (events other than `open`)", lambda c: f"{c.notices} ({c.other_notices})"),
        ("notice states", states),
        ("claims per notice (`attempts`: count of notices)", claims),
        ("top-level Slack messages naming these agents (of which grouped)",
         lambda c: f"{c.top_level_posts} ({c.grouped_posts})"),
        ("messages per episode, min / max", lambda c: f"{min(c.per_episode)} / {max(c.per_episode)}"),
        ("duplicates / missing", lambda c: f"{c.duplicates} / {c.missing}"),
        ("grouped messages naming only some of their agents", lambda c: str(c.unnamed_groups)),
        ("per thread: agents moved / messages posted / claims lost", threads),
        ("conflicts (precondition failures, db meters summed over threads)", lambda c: str(c.conflicts)),
        ("Firestore reads / writes, summed over threads", lambda c: f"{c.reads:,} / {c.writes:,}"),
        ("errors", lambda c: "; ".join(c.errors) or "none"),
    ]  # fmt: skip


def describe() -> list[str]:
    return [
        f"{AGENTS:,} agent documents (real `AgentRecord`s, {RING} heartbeat samples each) written straight to the "
        f"Firestore emulator across {TENANTS} tenants: {AGENTS - LATE:,} healthy (`sweep_at` 60 to 90 s ahead) and "
        f"{LATE} late (last heartbeat {LATE_INTERVALS} intervals of {INTERVAL_S} s ago, `sweep_at` passed); seeding "
        "is not counted. One `shared.services.sweep.sweep(now)` runs in the benchmark's process, metered with "
        "`metering.metered()`, as a new instance would (agent and tenant caches empty). The baseline, in the same run "
        "just before it, streams every agent document (pages of 300, like the sweep's query) and checks "
        "`sweep_at` in Python (no parsing into a record, no writes: the naive design at its cheapest). "
        "`run(now)` is the whole minute job (sweep, root alerts, the Slack outbox to an in-process fake Slack). "
        f"Concurrency: {LATE} fresh late agents, then `run(now)` from {THREADS} threads released together by a "
        f"barrier; then {LATE} more late agents swept once and the outbox flushed (`notifier.flush(now)`) from "
        f"{THREADS} threads at once. Threads of one process share its agent and tenant caches, unlike separate "
        "instances. Slack messages are counted per liveness episode (top-level `chat.postMessage` calls naming "
        "the agent, a grouped message counted once for each agent it names), and every notice of the "
        "`notifications` collection is read back.",
    ]


def main(report: Callable[[str], None] = print) -> list[str]:
    from emulators.fake_slack import FakeSlack

    stack = Stack(STATE_DIR, create_admin_key=False)
    fake: FakeSlack | None = None
    saved = {k: os.environ.get(k) for k in ("SLACK_API_URL", "SLACK_BOT_TOKEN")}
    try:
        print("starting the stack ...", file=sys.stderr)
        env = stack.up()
        os.environ.update({k: v for k, v in env.items() if not k.startswith("FLEET_")})
        fake = FakeSlack().start()
        os.environ["SLACK_API_URL"] = fake.url
        os.environ["SLACK_BOT_TOKEN"] = FAKE_SLACK_TOKEN

        from shared.platform import settings
        from shared.slack import web_api
        from shared.store import db

        settings.get.cache_clear()
        db._client = None  # built again, for this stack's emulator
        web_api.reset()
        import shared.services.sweep
        from shared.services import notifier

        now = datetime.now(UTC).replace(microsecond=0)
        print(f"seeding {AGENTS:,} agents ({LATE} late) ...", file=sys.stderr)
        seconds = seed(healthy_set(now, AGENTS - LATE) + late_set("a", now))
        print(f"  seeded in {seconds:.1f} s", file=sys.stderr)

        print("naive scan (baseline) ...", file=sys.stderr)
        naive(now)  # warm-up, not reported (the emulator is a JVM)
        base, found = naive(now)
        print(f"  {base.reads} reads, {base.seconds:.2f} s, {found} due", file=sys.stderr)
        print("one sweep ...", file=sys.stderr)
        swept = measure(
            "indexed sweep: `shared.services.sweep.sweep(now)`", fake, lambda: shared.services.sweep.sweep(now)
        )
        print(f"  {swept.reads} reads, {swept.writes} writes, {swept.seconds:.2f} s, {swept.due} due",
              file=sys.stderr)  # fmt: skip
        print("the minute job right after (nothing due; the outbox sent) ...", file=sys.stderr)
        after = measure(f"`run(now)` right after: nothing due, the {LATE} notices sent", fake,
                        lambda: shared.services.sweep.run(now))  # fmt: skip

        now_b = now + timedelta(seconds=1)
        seed(late_set("b", now_b))
        print("the whole minute job, 100 fresh late agents ...", file=sys.stderr)
        whole = measure(f"`run(now)` with {LATE} fresh late agents: sweep and notify", fake,
                        lambda: shared.services.sweep.run(now_b))  # fmt: skip

        now_c = now + timedelta(seconds=2)
        fresh = late_set("c", now_c)
        seed(fresh)
        print(f"{THREADS} minute jobs at once, 100 fresh late agents ...", file=sys.stderr)
        conc = concurrent(fake, [a for a, _ in fresh], lambda: shared.services.sweep.run(now_c))

        # The outbox alone under contention: one sweep writes 100 notices, then THREADS flushes at once.
        now_d = now + timedelta(seconds=3)
        fresh_d = late_set("d", now_d)
        seed(fresh_d)
        shared.services.sweep.sweep(now_d)
        print(f"{THREADS} outbox flushes at once, 100 pending notices ...", file=sys.stderr)
        flushes = concurrent(fake, [a for a, _ in fresh_d], lambda: {"notifications": notifier.flush(now_d).as_dict()})
    finally:
        if fake is not None:
            fake.stop()
        stack.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from shared.slack import web_api
        from shared.store import db

        web_api.reset()
        db._client = None  # this stack's emulator is gone

    def row(m: Measured) -> str:
        notes = m.result.get("notifications") if m.result else None
        sent = f"{notes.get('sent', 0)} messages ({notes.get('grouped', 0)} notices grouped)" if notes else "-"
        return (
            f"| {m.label} | {m.due} | {m.reads:,} | {m.tenant_reads} | {m.writes:,} | {m.conflicts} | "
            f"{m.seconds:.2f} | {sent} |"
        )

    lines = [
        f"| {AGENTS:,} agents, {LATE} late | due | Firestore reads | of which tenant settings | writes | conflicts "
        "| seconds | Slack |",
        "|---|---|---|---|---|---|---|---|",
        row(base),
        row(swept),
        f"| **indexed sweep / naive** | | **{swept.reads / base.reads:.1%}** | | | | "
        f"**{swept.seconds / base.seconds:.0%}** | |",
        row(after),
        row(whole),
        "",
        f"| {LATE} fresh late agents, {THREADS} threads at once | `run(now)` x {THREADS} | `notifier.flush(now)` x "
        f"{THREADS} (after one sweep) |",
        "|---|---|---|",
        *(f"| {name} | {get(conc)} | {get(flushes)} |" for name, get in figures()),
    ]
    for line in lines:
        report(line)
    return lines


def machine(started: datetime, command: str) -> str:
    return (
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{command}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}."
    )


if __name__ == "__main__":
    started = datetime.now(UTC)
    body = main(report=lambda line: None)
    print("\n".join([machine(started, "python -m tests.bench.sweep"), "", *describe(), "", *body]))
