"""Reports: the pure builders and suggestion rules, Block Kit, the chart, the Firestore adapter with
fakes (reads counted), sending once (run) with a fake Slack, and the two API routes."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from google.api_core import exceptions

from shared.api import core, router
from shared.api.reports import EARLIEST_AT
from shared.domain import report_daily as daily_domain
from shared.domain import report_hourly as hourly_domain
from shared.domain import report_suggestions as suggestion_rules
from shared.domain import reports as domain
from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.pricing import Price, PriceTable, to_nanos
from shared.domain.usage import ModelDay, Totals
from shared.platform import metering
from shared.services import report_messages, reports
from shared.slack import web_api
from shared.store import agents as agent_store
from shared.store import api_keys, config, db
from shared.store import episodes as episode_store
from shared.store import jobs as job_store
from tests.unit.test_http_api import assert_error
from tests.unit.test_http_api_costs import PRINCIPALS, send

TICK = datetime(2026, 11, 21, 10, 0, 5, tzinfo=UTC)  # the hourly tick: reports 09:00-10:00
HOUR = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DAILY_TICK = datetime(2026, 11, 21, 9, 0, 3, tzinfo=UTC)  # 09:00 Europe/London: reports 2026-11-20
USD = 1_000_000_000
PRICES = PriceTable(
    prices={
        "gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001")),
        "gpt-4o-mini": Price(Decimal("0.00000015"), Decimal("0.0000006")),
        "gpt-4.1": Price(Decimal("0.000002"), Decimal("0.000008")),
        "gpt-4.1-mini": Price(Decimal("0.0000004"), Decimal("0.0000016")),
        "gpt-4.1-nano": Price(Decimal("0.0000001"), Decimal("0.0000004")),
        "claude-sonnet-4": Price(Decimal("0.000003"), Decimal("0.000015")),
        "claude-3-5-haiku": Price(Decimal("0.0000008"), Decimal("0.000004")),
    }
)


def agent(agent_id: str, tenant: str = "acme", status: State = State.ACTIVE, **fields: Any) -> AgentRecord:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    data: dict[str, Any] = {
        "agent_id": agent_id,
        "tenant": tenant,
        "name": agent_id.upper(),
        "agent_type": "llm",
        "version": "1.0.0",
        "owner": "team",
        "status": status,
        "status_since": base,
        "registered_at": base,
        "last_registered_at": base,
    }
    data.update(fields)
    return AgentRecord(**data)


def usd(amount: str, calls: int = 0, failures: int = 0) -> Totals:
    return Totals(usd_nanos=to_nanos(Decimal(amount)), calls=calls, failures=failures)


def model_day(calls: int, input_tokens: int, output_tokens: int, price: Price | None = None, **extra: int) -> ModelDay:
    cost = price.cost_nanos(input_tokens, output_tokens) if price else extra.pop("usd_nanos", 0)
    return ModelDay(calls=calls, input_tokens=input_tokens, output_tokens=output_tokens, usd_nanos=cost, **extra)


# --- periods ------------------------------------------------------------------------------------


def test_periods_are_the_last_complete_utc_hour_and_day() -> None:
    assert domain.report_hour(TICK).key == "2026-11-21T09"
    assert domain.report_hour(datetime(2026, 12, 1, 0, 1, tzinfo=UTC)).key == "2026-11-30T23"
    assert domain.report_day(DAILY_TICK).key == "2026-11-20"
    assert domain.day_keys(domain.report_day(DAILY_TICK))[0] == "2026-11-13"
    assert domain.months_needed(domain.report_day(DAILY_TICK)) == ["2026-11"]
    assert domain.months_needed(domain.report_day(datetime(2026, 12, 3, 9, tzinfo=UTC))) == ["2026-11", "2026-12"]


# --- the hourly summary -------------------------------------------------------------------------


def hourly_fleet() -> list[AgentRecord]:
    in_hour = HOUR + timedelta(minutes=20)
    return [
        agent("busy-one"),
        agent("degraded-1", status=State.DEGRADED, status_since=in_hour, status_cause="heartbeat"),
        agent("stopped-1", status=State.OFFLINE, status_cause="heartbeat"),  # a graceful stop
        agent("lost-1", status=State.OFFLINE, status_cause="system", status_reason="no heartbeat <10 min>"),
        agent(
            "paused-1",
            status=State.SUSPENDED,
            status_since=in_hour,
            status_cause="operator",
            status_reason="runaway",
            holds={"pause": {"command": "pause"}},
        ),
        agent("breaker-1", holds={"breaker": {"command": "breaker_open"}}),
        agent("flipper-1", status=State.IDLE, status_since=in_hour, status_cause="heartbeat"),
        agent("new-1", tenant="globex", registered_at=in_hour, status_since=in_hour, status_changes=[in_hour]),
        agent("gone-1", status=State.DECOMMISSIONED),
        agent("late-1", liveness="late"),
    ]


def test_hourly_lists_only_what_is_unhealthy_or_changed_with_spend_and_top_agents() -> None:
    hour = {
        "busy-one": usd("4.5", calls=100, failures=2),
        "degraded-1": usd("0.25", calls=10, failures=5),
        "new-1": usd("1", calls=10),
        "flipper-1": usd("0.5", calls=1),
        "breaker-1": usd("0.1", calls=3),
        "paused-1": usd("0.05", calls=1),
        "lost-1": usd("0.01", calls=1),
    }
    episodes: list[dict[str, Any]] = [
        {"id": "e1", "tenant": "acme", "agent_id": "lost-1", "rule": "liveness", "severity": "high",
         "state": "open", "opened_at": HOUR + timedelta(minutes=5), "title": "Agent silent"},
        {"id": "e2", "tenant": "acme", "agent_id": None, "rule": "fleet_offline", "severity": "critical",
         "state": "open", "opened_at": HOUR - timedelta(hours=3), "title": "Many agents offline"},
    ]  # fmt: skip
    report = hourly_domain.build_hourly(
        agents=hourly_fleet(),
        hour=hour,
        previous={"busy-one": usd("5.12")},
        episodes=episodes,
        at=TICK,
        generated_at=TICK,
    )
    assert report.period == "2026-11-21T09" and report.starts_at == HOUR and report.agents == 9
    assert report.totals.spend_usd == "6.41" and report.totals.calls == 126 and report.totals.failures == 7
    assert report.totals.success_rate == round(119 / 126, 4)
    assert report.previous.spend_usd == "5.12" and report.spend_change_pct == 25.2
    # worst first; a graceful stop and a decommissioned agent are not problems
    assert [h.agent_id for h in report.unhealthy] == ["paused-1", "lost-1", "degraded-1", "breaker-1", "late-1"]
    assert report.unhealthy[0].holds == ["pause"] and report.unhealthy[3].status == "active"
    assert report.unhealthy[4].liveness == "late" and report.unhealthy[3].liveness is None
    # a new agent and a suspension are news; an agent's own idle flip is not
    assert {(c.agent_id, c.kind) for c in report.changes} == {
        ("new-1", "registered"),
        ("paused-1", "status"),
        ("degraded-1", "status"),
    }
    assert [e.id for e in report.episodes] == ["e2", "e1"] and report.episodes[1].new
    assert [a.agent_id for a in report.top_agents] == ["busy-one", "new-1", "flipper-1", "degraded-1", "breaker-1"]
    assert report.top_agents[0].spend_usd == "4.5"


def test_hourly_for_one_tenant_sees_only_that_tenant() -> None:
    episodes = [{"id": "e9", "tenant": "acme", "rule": "x", "severity": "warning", "state": "open", "title": "t"}]
    report = hourly_domain.build_hourly(
        agents=hourly_fleet(),
        hour={"new-1": usd("1", calls=10), "busy-one": usd("4", calls=1)},
        previous={},
        episodes=episodes,
        at=TICK,
        generated_at=TICK,
        tenant="globex",
    )
    assert report.tenant == "globex" and report.agents == 1
    assert report.totals.spend_usd == "1" and report.spend_change_pct is None
    assert report.unhealthy == [] and report.episodes == [] and [a.agent_id for a in report.top_agents] == ["new-1"]


# --- the daily report ---------------------------------------------------------------------------


def test_daily_shows_tenants_and_agents_against_budgets_with_the_trend() -> None:
    agents = [
        agent("a1", budget={"daily_usd": "10", "monthly_usd": "100"}),
        agent("a2"),
        agent("g1", tenant="globex"),
    ]
    days = {
        "a1": {"2026-11-20": usd("9", calls=90, failures=9), "2026-11-19": usd("6"), "2026-11-13": usd("7"),
               "2026-11-01": usd("50"), "2026-10-31": usd("1000")},
        "a2": {"2026-11-20": usd("1", calls=10), "2026-11-21": usd("99", calls=1)},  # today: not in the report
        "g1": {"2026-11-19": usd("2", calls=4)},
    }  # fmt: skip
    report = daily_domain.build_daily(
        agents=agents,
        days=days,
        tenant_budgets={"acme": {"daily_usd": "20", "monthly_usd": "1000"}, "globex": None},
        models={},
        prices=PRICES,
        at=DAILY_TICK,
        generated_at=DAILY_TICK,
    )
    assert report.day == "2026-11-20" and report.totals.spend_usd == "10" and report.totals.calls == 100
    assert report.previous_day.spend_usd == "8" and report.change_pct == 25.0
    assert report.average_usd == "2.142857142" and report.change_vs_average_pct == 366.7
    assert report.month_to_date_usd == "75"
    acme, globex = report.tenants
    assert acme.tenant == "acme" and acme.spend_usd == "10" and acme.agents == 2
    assert acme.daily.budget_usd == "20" and acme.daily.used_pct == 50.0
    assert acme.month_to_date_usd == "73" and acme.monthly.used_pct == 7.3
    assert globex.spend_usd == "0" and globex.change_pct == -100.0 and globex.daily.budget_usd is None
    assert [a.agent_id for a in report.agents] == ["a1", "a2"]  # g1 had no calls on the day
    a1 = report.agents[0]
    assert a1.daily.used_pct == 90.0 and a1.monthly.budget_usd == "100" and a1.month_to_date_usd == "72"
    assert a1.success_rate == 0.9 and a1.change_pct == 50.0
    assert [d.day for d in report.trend] == [f"2026-11-{d}" for d in range(13, 21)]
    assert report.trend[-2].by_tenant == {"acme": "6", "globex": "2"} and report.trend[1].by_tenant == {}


# --- suggestions --------------------------------------------------------------------------------


def test_family_and_cheaper_alternative() -> None:
    assert suggestion_rules.family("openai/gpt-4o-mini") == "gpt" and suggestion_rules.family("o4-mini") == "o"
    assert suggestion_rules.family("claude-3-5-haiku") == "claude"
    # the priciest of the family that costs at most 35% as much for the same tokens
    assert suggestion_rules.cheaper_alternative("gpt-4o", 100_000, 10_000, PRICES, None) == ("gpt-4.1-mini", 56_000_000)
    assert suggestion_rules.cheaper_alternative("claude-sonnet-4", 1000, 100, PRICES, None) == (
        "claude-3-5-haiku",
        1_200_000,
    )
    assert suggestion_rules.cheaper_alternative("gpt-4.1-nano", 1000, 100, PRICES, None) is None
    assert suggestion_rules.cheaper_alternative("mystery-model", 1000, 100, PRICES, None) is None


def test_expensive_model_for_short_calls_suggests_the_cheaper_one_with_the_saving() -> None:
    gpt4o = PRICES.lookup("gpt-4o")
    found = suggestion_rules.suggestions("bot-1", "acme", {"gpt-4o": model_day(100, 100_000, 10_000, gpt4o)}, PRICES)
    assert len(found) == 1
    saving, s = found[0]
    assert s.kind == "cheaper_model" and s.model == "gpt-4o" and s.alternative == "gpt-4.1-mini"
    assert s.calls == 100 and s.spend_usd == "0.35" and s.estimated_saving_usd == "0.294" and saving == 294_000_000
    assert "bot-1" in s.message and "gpt-4.1-mini" in s.message and "100 output tokens" in s.message


@pytest.mark.parametrize(
    ("model", "calls", "input_tokens", "output_tokens"),
    [
        ("gpt-4o", 100, 100_000, 50_000),  # long outputs (500 a call)
        ("gpt-4o", 10, 10_000, 1_000),  # too few calls
        ("gpt-4o-mini", 1000, 10_000_000, 100_000),  # a cheap model already
        ("gpt-4o", 100, 10_000, 5_000),  # cheap calls ($0.00075 each)
        ("mystery-model", 100, 100_000, 10_000),  # no price, no alternative
    ],
)
def test_no_model_suggestion_outside_the_thresholds(
    model: str, calls: int, input_tokens: int, output_tokens: int
) -> None:
    price = PRICES.lookup(model) or Price(Decimal("0.00001"), Decimal("0.0001"))
    counters = model_day(calls, input_tokens, output_tokens, price)
    assert suggestion_rules.suggestions("bot-1", "acme", {model: counters}, PRICES) == []


def test_repeats_and_failure_cost() -> None:
    repeated = model_day(200, 0, 0, usd_nanos=2 * USD, repeats=40, repeat_usd_nanos=USD // 2)
    [(saving, s)] = suggestion_rules.suggestions("bot-1", "acme", {"some-model": repeated}, PRICES)
    assert s.kind == "cache_repeats" and s.calls == 40 and s.estimated_saving_usd == "0.5" and saving == USD // 2
    few = model_day(200, 0, 0, usd_nanos=2 * USD, repeats=5, repeat_usd_nanos=USD // 2)
    assert suggestion_rules.suggestions("bot-1", "acme", {"m": few}, PRICES) == []

    def failing(spend: str, failed: str) -> list[str]:
        counters = model_day(50, 0, 0, usd_nanos=to_nanos(Decimal(spend)), failures=10,
                             failed_usd_nanos=to_nanos(Decimal(failed)))  # fmt: skip
        return [
            s.estimated_saving_usd for _, s in suggestion_rules.suggestions("bot-1", "acme", {"m": counters}, PRICES)
        ]

    assert failing("30", "1.2") == ["1.2"]  # over $1 a day
    assert failing("1", "0.2") == ["0.2"]  # 20% of the spend
    assert failing("0.1", "0.05") == []  # a share, but below $0.10
    assert failing("10", "0.5") == []  # 5%, under $1


def test_daily_suggestions_are_sorted_by_saving_and_summed() -> None:
    gpt4o = PRICES.lookup("gpt-4o")
    models = {
        "a1": {"gpt-4o": model_day(100, 100_000, 10_000, gpt4o, repeats=50, repeat_usd_nanos=175_000_000)},
        "a2": {"m": model_day(10, 0, 0, usd_nanos=3 * USD, failures=5, failed_usd_nanos=2 * USD)},
    }
    report = daily_domain.build_daily(
        agents=[agent("a1"), agent("a2")],
        days={"a1": {"2026-11-20": usd("0.35", calls=100)}, "a2": {"2026-11-20": usd("3", calls=10)}},
        tenant_budgets={},
        models=models,
        prices=PRICES,
        at=DAILY_TICK,
        generated_at=DAILY_TICK,
    )
    assert [(s.agent_id, s.kind) for s in report.suggestions] == [
        ("a2", "failure_cost"),
        ("a1", "cheaper_model"),
        ("a1", "cache_repeats"),
    ]
    assert report.potential_saving_usd == "2.469"


# --- display and Block Kit ----------------------------------------------------------------------


def test_money_and_change_for_people() -> None:
    assert domain.money(1234_567_000_000) == "$1,234.57" and domain.money("0.0042") == "$0.0042"
    assert domain.money(0) == "$0" and domain.money("0.00000001") == "<$0.0001"
    assert domain.change(12.5) == "▲ 12.5%" and domain.change(-3.0) == "▼ 3%" and domain.change(None) == ""


def _texts(blocks: list[dict[str, Any]]) -> str:
    out = []
    for b in blocks:
        if "text" in b:
            out.append(b["text"]["text"])
        out.extend(e["text"] for e in b.get("elements", []))
    return "\n".join(out)


def _valid_blocks(blocks: list[dict[str, Any]]) -> None:
    assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= 150
    assert blocks[-1]["type"] == "context"
    assert len(blocks) <= 50
    for b in blocks:
        if b["type"] == "section":
            assert b["text"]["type"] == "mrkdwn" and 0 < len(b["text"]["text"]) <= 3000


def test_hourly_block_kit() -> None:
    report = hourly_domain.build_hourly(
        agents=hourly_fleet() + [agent(f"sick-{n:02d}", status=State.DEGRADED) for n in range(15)],
        hour={"busy-one": usd("4.5", calls=100, failures=2)},
        previous={"busy-one": usd("3")},
        episodes=[],
        at=TICK,
        generated_at=TICK,
    )
    text, blocks = report_messages.hourly_message(report)
    _valid_blocks(blocks)
    body = _texts(blocks)
    assert "$4.50" in body and "▲ 50%" in body and "Needs attention (20)" in body and "… and 10 more" in body
    assert "&lt;10 min&gt;" in body and "<10 min>" not in body  # mrkdwn escaped
    assert "Top agents by spend" in body and "`busy-one`" in body
    assert text.startswith("Hourly summary 2026-11-21T09: $4.50 spent")

    late = hourly_domain.build_hourly(
        agents=[agent("late-1", liveness="late")], hour={}, previous={}, episodes=[], at=TICK, generated_at=TICK
    )
    assert "`late-1` (acme) *active* since 01 Nov 00:00 · heartbeats: late" in _texts(
        report_messages.hourly_message(late)[1]
    )

    quiet = hourly_domain.build_hourly(
        agents=[agent("ok-1")], hour={}, previous={}, episodes=[], at=TICK, generated_at=TICK
    )
    _, blocks = report_messages.hourly_message(quiet)
    _valid_blocks(blocks)
    assert "All agents healthy" in _texts(blocks)


def daily_report() -> daily_domain.DailyReport:
    gpt4o = PRICES.lookup("gpt-4o")
    return daily_domain.build_daily(
        agents=[agent("a1", budget={"daily_usd": "0.25"}), agent("g1", tenant="globex")],
        days={
            "a1": {f"2026-11-{d}": usd(str(d / 100), calls=d) for d in range(13, 21)},
            "g1": {f"2026-11-{d}": usd("0.1", calls=1) for d in range(13, 21)},
        },
        tenant_budgets={"acme": {"daily_usd": "1"}},
        models={"a1": {"gpt-4o": model_day(100, 100_000, 10_000, gpt4o)}},
        prices=PRICES,
        at=DAILY_TICK,
        generated_at=DAILY_TICK,
    )


def test_daily_block_kit() -> None:
    text, blocks = report_messages.daily_message(daily_report())
    _valid_blocks(blocks)
    body = _texts(blocks)
    assert "Daily cost report · Fri 20 Nov 2026" in blocks[0]["text"]["text"]
    assert "*acme* $0.20" in body and "day 20% of $1.00" in body
    assert "Agents near or over budget (1)" in body and "day 80% of $0.25 :warning:" in body
    assert "Suggestions" in body and "gpt-4.1-mini" in body
    assert text.startswith("Daily cost report 2026-11-20: $0.30 spent")


def test_daily_chart_is_a_png() -> None:
    png = report_messages.daily_chart(daily_report())
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    one = daily_domain.build_daily(agents=[], days={}, tenant_budgets={}, models={}, prices=PRICES, at=DAILY_TICK,
                             generated_at=DAILY_TICK, tenant="acme")  # fmt: skip
    assert report_messages.daily_chart(one).startswith(b"\x89PNG")


def test_matplotlib_is_not_imported_with_the_module() -> None:
    import subprocess

    code = (
        "import sys, shared.services.reports; "
        "assert 'matplotlib' not in sys.modules; assert 'slack_sdk' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the adapter, with a fake Firestore ---------------------------------------------------------


class Snap:
    def __init__(self, doc_id: str, data: dict[str, Any] | None, update_time: int = 0) -> None:
        self.id = doc_id
        self.exists = data is not None
        self._data = data
        self.update_time = update_time

    def to_dict(self) -> dict[str, Any] | None:
        return dict(self._data) if self._data is not None else None


@dataclass
class Option:
    last_update_time: int


class Ref:
    def __init__(self, fs: FakeFirestore, path: str) -> None:
        self.fs, self.path = fs, path
        self.id = path.rsplit("/", 1)[-1]

    def document(self, doc_id: str) -> Ref:
        return Ref(self.fs, f"{self.path}/{doc_id}")

    def get(self, **options: Any) -> Snap:
        return Snap(self.id, self.fs.docs.get(self.path), self.fs.times.get(self.path, 0))

    def create(self, data: dict[str, Any], **options: Any) -> None:
        if self.path in self.fs.docs:
            raise exceptions.AlreadyExists(self.path)
        self.fs.put(self.path, dict(data))

    def update(self, data: dict[str, Any], option: Option | None = None, **options: Any) -> None:
        if self.path not in self.fs.docs:
            raise exceptions.NotFound(self.path)
        if option is not None and option.last_update_time != self.fs.times[self.path]:
            raise exceptions.FailedPrecondition(self.path)
        if self.fs.fail_updates:
            self.fs.fail_updates -= 1
            raise exceptions.ServiceUnavailable("firestore down")
        self.fs.put(self.path, {**self.fs.docs[self.path], **data})

    def delete(self, **options: Any) -> None:
        self.fs.docs.pop(self.path, None)


@dataclass
class FakeFirestore:
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)
    clock: int = 0
    fail_updates: int = 0

    def put(self, path: str, data: dict[str, Any]) -> None:
        self.clock += 1
        self.docs[path], self.times[path] = data, self.clock

    def collection(self, name: str) -> Ref:
        return Ref(self, name)

    def get_all(self, refs: list[Ref], **options: Any) -> list[Snap]:
        return [ref.get() for ref in refs]

    def write_option(self, last_update_time: int) -> Option:
        return Option(last_update_time)


def month_doc(agent_id: str, tenant: str, month: str, fields: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"scope": "agent", "agent_id": agent_id, "tenant": tenant, "month": month}
    for name, value in fields.items():
        if isinstance(value, Totals):
            data[name] = value.as_dict()
        else:  # xDD: model -> ModelDay
            data[name] = {model: counters.as_dict() for model, counters in value.items()}
    return data


@dataclass
class Fleet:
    fs: FakeFirestore
    agents: list[AgentRecord]
    episodes: list[dict[str, Any]] = field(default_factory=list)
    episode_queries: list[dict[str, Any]] = field(default_factory=list)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    slack_down: list[str] = field(default_factory=list)  # methods that fail once each


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Fleet:
    fs = FakeFirestore()
    f = Fleet(fs=fs, agents=[agent(f"agent-{n}", tenant="acme" if n < 3 else "globex") for n in range(5)])
    gpt4o = PRICES.lookup("gpt-4o")
    for n, a in enumerate(f.agents):
        fields: dict[str, Any] = {"d20": usd(str(n + 1), calls=10 * (n + 1)), "h2109": usd(f"0.{n + 1}", calls=n + 1),
                                  "h2108": usd("0.1", calls=1)}  # fmt: skip
        if n == 0:
            fields["x20"] = {"gpt-4o": model_day(100, 100_000, 10_000, gpt4o)}
        fs.docs[f"usage/a.{a.agent_id}.2026-11"] = month_doc(a.agent_id, a.tenant, "2026-11", fields)

    def list_agents(*, tenant: str | None, status: str | None, page_size: int, after: str | None) -> Any:
        rows = [a for a in f.agents if tenant is None or a.tenant == tenant]
        rows = [a for a in rows if after is None or a.agent_id > after]
        page = rows[:page_size]
        metering.count(reads=max(1, len(page)))
        return page, (page[-1].agent_id if len(rows) > page_size else None)

    def list_episodes(**query: Any) -> list[dict[str, Any]]:
        f.episode_queries.append(query)
        rows = [e for e in f.episodes if query.get("tenant") is None or e["tenant"] == query["tenant"]]
        metering.count(reads=max(1, len(rows)))
        return rows

    def read_tenant(name: str) -> config.TenantConfig:
        metering.count(reads=1)
        data = f.tenants.get(name, {})
        return config.TenantConfig(name, data.get("budget"), None, {}, {})

    def global_prices() -> dict[str, Price]:
        metering.count(reads=1)
        return dict(PRICES.prices)

    def post(channel: str, text: str, blocks: Any = None, thread_ts: str | None = None) -> web_api.Posted:
        if "post" in f.slack_down:
            f.slack_down.remove("post")
            raise web_api.SlackUnavailable("down", retry_after=3)
        f.posts.append({"channel": channel, "text": text, "blocks": blocks, "thread_ts": thread_ts})
        return web_api.Posted("C0REPORTS1", f"1700000000.{len(f.posts):06d}")

    def upload(
        channel: str, content: bytes, filename: str, title: str, comment: Any = None, thread_ts: Any = None
    ) -> None:
        if "upload" in f.slack_down:
            f.slack_down.remove("upload")
            raise web_api.SlackUnavailable("down")
        f.uploads.append({"channel": channel, "content": content, "filename": filename, "thread_ts": thread_ts})

    monkeypatch.setattr(db, "client", lambda: fs)
    monkeypatch.setattr(
        job_store, "relaunched_since", lambda at, tenant=None: []
    )  # tests/unit/test_checkpoints_report.py
    monkeypatch.setattr(agent_store, "list_agents", list_agents)
    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    monkeypatch.setattr(config, "read_tenant", read_tenant)
    monkeypatch.setattr(config, "global_prices", global_prices)
    monkeypatch.setattr(web_api, "post", post)
    monkeypatch.setattr(web_api, "upload", upload)
    monkeypatch.setattr(reports, "AGENT_PAGE", 2)
    monkeypatch.setattr(reports, "_clock", lambda: TICK)
    monkeypatch.delenv(reports.CHANNEL_ENV, raising=False)
    return f


def test_hourly_reads_agents_their_month_documents_and_open_episodes(fleet: Fleet) -> None:
    fleet.episodes = [{"id": "e1", "tenant": "acme", "agent_id": "agent-1", "rule": "liveness", "severity": "high",
                       "state": "open", "opened_at": HOUR, "title": "Agent silent"}]  # fmt: skip
    with metering.metered() as meter:
        report = reports.hourly(TICK)
    assert report.totals.spend_usd == "1.5" and report.totals.calls == 15 and report.previous.spend_usd == "0.5"
    assert [a.agent_id for a in report.top_agents][:2] == ["agent-4", "agent-3"]
    assert [e.id for e in report.episodes] == ["e1"]
    assert fleet.episode_queries == [{"state": "open", "limit": reports.EPISODE_LIMIT}]
    # 5 agents (3 pages) + 5 month documents + 1 episode
    assert meter.reads == 5 + 5 + 1

    with metering.metered() as meter:
        scoped = reports.hourly(TICK, tenant="globex")
    assert scoped.totals.spend_usd == "0.9" and scoped.episodes == [] and meter.reads == 2 + 2 + 1


def test_hourly_at_the_first_hour_of_a_month_reads_the_previous_month_too(fleet: Fleet) -> None:
    with metering.metered() as meter:
        report = reports.hourly(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))
    assert report.period == "2026-12-01T00" and meter.reads == 5 + 5 + 5 + 1


def test_daily_reads_and_builds_from_the_same_month_documents(fleet: Fleet) -> None:
    fleet.tenants["acme"] = {"budget": {"daily_usd": "5"}}
    with metering.metered() as meter:
        report = reports.daily(DAILY_TICK)
    assert report.day == "2026-11-20" and report.totals.spend_usd == "15" and report.totals.calls == 150
    assert [t.tenant for t in report.tenants] == ["globex", "acme"]  # biggest spend first
    assert report.tenants[1].spend_usd == "6" and report.tenants[1].daily.used_pct == 120.0
    assert [(s.agent_id, s.kind) for s in report.suggestions] == [("agent-0", "cheaper_model")]
    # 5 agents + 5 month documents (the model counters are in them) + 2 tenants + the price table
    assert meter.reads == 5 + 5 + 2 + 1
    with metering.metered() as meter:
        reports.daily(datetime(2026, 12, 3, 9, tzinfo=UTC))
    assert meter.reads == 5 + 5 * 2 + 2 + 1  # the trend reaches into November


# --- run: sent once -----------------------------------------------------------------------------


def test_hourly_run_is_sent_once_however_often_the_tick_comes(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reports.CHANNEL_ENV, "#ops-reports")
    first = reports.run("hourly-summary", TICK)
    assert first["outcome"] == "sent" and first["period"] == "2026-11-21T09" and first["spend_usd"] == "1.5"
    assert len(fleet.posts) == 1 and fleet.posts[0]["channel"] == "#ops-reports"
    assert fleet.posts[0]["blocks"][0]["type"] == "header"
    stored = fleet.fs.docs["reports/hourly-summary.2026-11-21T09"]
    assert stored["state"] == "sent" and stored["ts"] == first["ts"] and stored["channel"] == "C0REPORTS1"
    again = reports.run("hourly-summary", TICK + timedelta(minutes=3))
    assert again == {"job": "hourly-summary", "period": "2026-11-21T09", "outcome": "already_sent"}
    assert len(fleet.posts) == 1
    # a tick stamped a moment before the hour still reports the hour that starts then
    assert reports.run("hourly-summary", TICK - timedelta(seconds=6))["outcome"] == "already_sent"


def test_run_when_slack_is_down_raises_and_does_not_mark_it_sent(fleet: Fleet) -> None:
    fleet.slack_down.append("post")
    with pytest.raises(web_api.SlackUnavailable):
        reports.run("hourly-summary", TICK)
    assert "reports/hourly-summary.2026-11-21T09" not in fleet.fs.docs
    assert reports.run("hourly-summary", TICK)["outcome"] == "sent" and len(fleet.posts) == 1


def test_daily_run_posts_then_the_chart_in_the_thread_and_retries_only_the_chart(fleet: Fleet) -> None:
    fleet.slack_down.append("upload")
    with pytest.raises(web_api.SlackUnavailable):
        reports.run("daily-report", DAILY_TICK)
    stored = fleet.fs.docs["reports/daily-report.2026-11-20"]
    assert stored["state"] == "posted" and len(fleet.posts) == 1 and fleet.uploads == []
    done = reports.run("daily-report", DAILY_TICK)
    assert done["outcome"] == "sent" and done["suggestions"] == 1
    assert len(fleet.posts) == 1  # not posted twice
    [chart] = fleet.uploads
    assert chart["thread_ts"] == done["ts"]
    assert chart["channel"] == "C0REPORTS1" and chart["content"].startswith(b"\x89PNG")
    assert chart["filename"] == "daily-report-2026-11-20.png"
    assert fleet.fs.docs["reports/daily-report.2026-11-20"]["state"] == "sent"


def test_run_while_another_instance_sends_it_retries_later_and_takes_over_an_expired_claim(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = "reports/hourly-summary.2026-11-21T09"
    fleet.fs.put(path, {"state": "claimed", "lease_until": TICK + timedelta(minutes=4)})
    with pytest.raises(reports.ReportBusy):
        reports.run("hourly-summary", TICK)
    assert fleet.posts == []
    monkeypatch.setattr(reports, "_clock", lambda: TICK + timedelta(minutes=5))
    assert reports.run("hourly-summary", TICK)["outcome"] == "sent" and len(fleet.posts) == 1


def test_run_refused_by_slack_is_recorded_and_not_retried(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise web_api.SlackRefused("channel_not_found")

    monkeypatch.setattr(web_api, "post", refuse)
    assert reports.run("hourly-summary", TICK)["outcome"] == "refused"
    assert fleet.fs.docs["reports/hourly-summary.2026-11-21T09"]["error"] == "channel_not_found"
    assert reports.run("hourly-summary", TICK)["outcome"] == "already_sent"


def test_run_keeps_the_ts_when_recording_the_send_fails(fleet: Fleet) -> None:
    fleet.fs.fail_updates = 1  # the "sent" write fails; releasing the claim keeps the message's ts
    with pytest.raises(exceptions.ServiceUnavailable):
        reports.run("hourly-summary", TICK)
    stored = fleet.fs.docs["reports/hourly-summary.2026-11-21T09"]
    assert stored["state"] == "posted" and stored["ts"] and len(fleet.posts) == 1
    assert reports.run("hourly-summary", TICK)["outcome"] == "sent"
    assert len(fleet.posts) == 1  # not posted again


def test_run_rejects_an_unknown_job() -> None:
    with pytest.raises(ValueError, match="unknown report job"):
        reports.run("weekly", TICK)


# --- the API ------------------------------------------------------------------------------------


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, datetime, str | None]]:
    calls: list[tuple[str, datetime, str | None]] = []
    now = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)

    def hourly(at: datetime, tenant: str | None = None) -> hourly_domain.HourlyReport:
        calls.append(("hourly", at, tenant))
        return hourly_domain.build_hourly(agents=hourly_fleet(), hour={"busy-one": usd("1", calls=2)}, previous={},
                                   episodes=[], at=at, generated_at=now, tenant=tenant)  # fmt: skip

    def daily(at: datetime, tenant: str | None = None) -> daily_domain.DailyReport:
        calls.append(("daily", at, tenant))
        return daily_report()

    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(reports, "hourly", hourly)
    monkeypatch.setattr(reports, "daily", daily)
    monkeypatch.setattr(core, "now", lambda: now)
    return calls


def test_api_reports_are_the_slack_content_as_json(api: list[tuple[str, datetime, str | None]]) -> None:
    reply = send("/v1/reports/hourly", who="viewer")
    assert reply.status == 200, reply.text
    assert reply.json["kind"] == "hourly" and reply.json["period"] == "2026-11-21T09"
    assert reply.json["totals"]["spend_usd"] == "1" and reply.json["starts_at"] == "2026-11-21T09:00:00Z"
    assert {"unhealthy", "changes", "episodes", "top_agents"} <= set(reply.json)
    reply = send("/v1/reports/daily", who="viewer", at="2026-11-20T12:00:00Z")
    assert reply.status == 200, reply.text
    assert reply.json["day"] == "2026-11-20" and reply.json["suggestions"][0]["kind"] == "cheaper_model"
    assert api[-1] == ("daily", datetime(2026, 11, 20, 12, tzinfo=UTC), None)
    send("/v1/reports/hourly", who="viewer", at="2026-11-21T08:30:00+01:00")
    assert api[-1][1] == datetime(2026, 11, 21, 7, 30, tzinfo=UTC)


def test_api_reports_are_scoped_to_the_keys_tenant(api: list[tuple[str, datetime, str | None]]) -> None:
    assert send("/v1/reports/hourly", who="acme-viewer").status == 200
    assert api[-1][2] == "acme"
    assert send("/v1/reports/daily", who="acme-viewer", tenant="acme").status == 200
    assert api[-1][2] == "acme"
    assert_error(send("/v1/reports/daily", who="acme-viewer", tenant="globex"), 403, "forbidden")
    assert send("/v1/reports/daily", who="viewer", tenant="globex").status == 200
    assert api[-1][2] == "globex"
    assert_error(send("/v1/reports/daily", tenant="Not A Tenant"), 400, "bad_request")


def test_api_report_at_must_be_a_past_iso_time(api: list[tuple[str, datetime, str | None]]) -> None:
    assert_error(send("/v1/reports/hourly", at="yesterday"), 400, "bad_request")
    assert_error(send("/v1/reports/hourly", at="2027-01-01T00:00:00Z"), 400, "bad_request")
    assert api == []


@pytest.mark.parametrize(
    "at",
    [
        "0001-01-01T00:02:00Z",  # schemathesis's find: the day before underflowed (500)
        "0001-01-01T00:30:00",  # the hour before, too
        "0001-01-31T23:59:59Z",  # the day exists, but not the week before it
        "0001-01-01T00:00:00+05:00",  # no time in UTC at all
    ],
)
def test_api_report_at_too_early_is_a_400_not_a_500(api: list[tuple[str, datetime, str | None]], at: str) -> None:
    for name in ("hourly", "daily"):
        reply = send(f"/v1/reports/{name}", at=at)
        assert_error(reply, 400, "bad_request")
        assert reply.json["error"]["reason"].startswith("at ")
    assert api == []


def test_api_report_at_from_the_earliest_on_is_served(api: list[tuple[str, datetime, str | None]]) -> None:
    assert send("/v1/reports/daily", at="0001-02-01T00:00:00Z").status == 200
    assert api[-1][1] == EARLIEST_AT
    # ... and the periods the real reports compute from it stay within the calendar.
    day = domain.report_day(EARLIEST_AT)
    assert domain.months_needed(day) and domain.day_keys(day) and domain.report_hour(EARLIEST_AT)


def test_api_reports_are_in_the_openapi_document() -> None:
    doc = router.openapi_document()
    for name in ("hourly", "daily"):
        op = doc["paths"][f"/v1/reports/{name}"]["get"]
        assert [p["name"] for p in op["parameters"]] == ["tenant", "at"]
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ReportView")
    assert "CostSuggestion" in doc["components"]["schemas"]
