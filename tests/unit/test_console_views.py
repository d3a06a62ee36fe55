"""The console's view models (shared/console/agent_view.py, spend_view.py): panels from the API's views,
escaping of hostile values left to the template, the panel registry, the agent's commands from its audit
entries, spend rows and projections."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from shared.api.bodies import HistoryView
from shared.api.bodies.costs import AgentUsageView
from shared.console import agent_view, spend_view
from shared.console.agent_view import AgentData
from shared.console.formats import duration, usd
from shared.domain.periods import Period
from shared.domain.usage import ModelDay

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
HOSTILE = "<script>window.__xss=1</script>"


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def agent(**extra: Any) -> dict[str, Any]:
    return {
        "agent_id": "agent-1",
        "tenant": "acme",
        "name": HOSTILE,
        "status": "healthy",
        "status_since": iso(NOW - timedelta(hours=1)),
        "last_heartbeat_at": iso(NOW - timedelta(seconds=20)),
        "version": "1.2.0",
        **extra,
    }


def samples(n: int = 30) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        metrics = {"error_rate": 0.01 * (i % 5), "latency_ms_p95": 100.0 + i, "cpu_pct": 50.0, "tokens_per_s": 12}
        status = "degraded" if 10 <= i < 15 else "healthy"
        out.append({"seq": i, "at": iso(NOW - timedelta(minutes=n - i)), "status": status, "metrics": metrics})
    return out


def usage() -> dict[str, Any]:
    def period(key: str, spend: str, budget: str | None, resets: datetime) -> dict[str, Any]:
        return {
            "period": key,
            "spend_usd": spend,
            "tokens": 1000,
            "input_tokens": 600,
            "output_tokens": 400,
            "calls": 10,
            "failures": 1,
            "unpriced_calls": 0,
            "success_rate": 0.9,
            "budget_usd": budget,
            "remaining_usd": None if budget is None else str(max(Decimal(budget) - Decimal(spend), Decimal(0))),
            "budget_tokens": None,
            "remaining_tokens": None,
            "starts_at": iso(NOW),
            "resets_at": iso(resets),
        }

    return {
        "agent_id": "agent-1",
        "tenant": "acme",
        "periods": {
            "month": period("2026-12", "12.5", "100", datetime(2027, 1, 1, tzinfo=UTC)),
            "hour": period("2026-12-06T12", "0.0012", None, NOW + timedelta(hours=1)),
            "day": period("2026-12-06", "6", "5", datetime(2026, 12, 7, tzinfo=UTC)),
        },
        "holds": {
            "budget": {
                "command": "budget_exhausted",
                "reason": HOSTILE,
                "until": iso(datetime(2026, 12, 7, tzinfo=UTC)),
            },
            "pause": {"command": "pause", "reason": "maintenance", "until": None},
        },
        "budget": None,
        "budget_source": "api",
        "lease": {
            "epoch": "e1",
            "lease_id": "e1.3",
            "granted_usd": "1.5",
            "charged_usd": "1.2",
            "granted_tokens": None,
            "started_at": iso(NOW - timedelta(minutes=5)),
            "expires_at": iso(NOW + timedelta(minutes=10)),
            "returns_at": iso(NOW + timedelta(minutes=15)),
        },
    }


def alerts() -> list[dict[str, Any]]:
    def alert(n: int, state: str, agent_id: str | None = "agent-1") -> dict[str, Any]:
        return {
            "id": f"a{n}",
            "rule": "error_rate",
            "title": HOSTILE,
            "severity": "warning",
            "state": state,
            "tenant": "acme",
            "agent_id": agent_id,
            "message": "m",
            "opened_at": iso(NOW - timedelta(hours=n)),
        }

    return [alert(1, "resolved"), alert(2, "open"), alert(3, "resolved"), alert(4, "open", "agent-2")]


def data() -> AgentData:
    return AgentData.of(agent(), NOW, {"agent_id": "agent-1", "samples": samples()}, usage(), alerts())


def by_name(panels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in panels}


def test_panels_in_order_with_templates() -> None:
    panels = agent_view.panels(data())
    assert [p["name"] for p in panels] == ["status", "metrics", "spend", "holds", "episodes"]
    assert all(p["template"] == f"panels/{p['name']}.html" for p in panels)


def test_panel_registry_one_function_adds_a_panel() -> None:
    name = "test_extra"
    try:

        @agent_view.panel(name)
        def extra(d: AgentData) -> dict[str, Any]:
            return {"title": "Extra", "agent": d.agent["agent_id"]}

        got = by_name(agent_view.panels(data()))[name]
        assert got == {"name": name, "template": f"panels/{name}.html", "title": "Extra", "agent": "agent-1"}
        with pytest.raises(ValueError):
            agent_view.panel(name)(extra)
        assert [p["name"] for p in agent_view.panels(data(), only=[name])] == [name]
    finally:
        agent_view._PANELS.pop(name, None)


def test_panels_without_usage_are_left_out() -> None:
    names = [p["name"] for p in agent_view.panels(AgentData.of(agent(), NOW))]
    assert names == ["status", "metrics", "episodes"]


def test_status_timeline_newest_first() -> None:
    status = by_name(agent_view.panels(data()))["status"]
    entries = status["timeline"]
    assert [(e["status"], e["source"]) for e in entries] == [
        ("healthy", "reported"),
        ("degraded", "reported"),
        ("healthy", "reported"),
        ("healthy", "server"),
    ]
    assert [e["ago"] for e in entries] == ["15m ago", "20m ago", "30m ago", "1h 00m ago"]
    assert status["last_heartbeat_ago"] == "20s ago"


def test_metric_series_and_charts() -> None:
    metrics = by_name(agent_view.panels(data()))["metrics"]
    keys = [c["key"] for c in metrics["charts"]]
    assert keys == ["error_rate", "latency", "cpu", "tokens"]  # memory never reported: no chart
    error = metrics["charts"][0]
    assert error["unit"] == "%" and error["threshold"] == pytest.approx(20.0)
    assert error["last"] == pytest.approx(4.0)
    assert "<svg" in error["svg"] and "chart-threshold" in error["svg"]
    latency = agent_view.series(samples(), agent_view.METRICS[1])
    assert latency[0][1] == 100.0 and latency[-1][0] == NOW - timedelta(minutes=1)


def test_spend_periods_holds_and_lease() -> None:
    panels = by_name(agent_view.panels(data()))
    periods = panels["spend"]["periods"]
    assert [p["period"] for p in periods] == ["hour", "day", "month"]
    hour, day, month = periods
    assert hour["spend"] == "$0.0012" and hour["budget"] is None and hour["used_ratio"] is None
    assert day["over"] and day["used_ratio"] == 1.0 and day["remaining"] == "$0.00" and day["resets_in"] == "in 12h 00m"
    assert month["used_ratio"] == pytest.approx(0.125) and month["remaining"] == "$87.50"
    assert panels["spend"]["lease"]["expires_in"] == "in 10m"
    holds = panels["holds"]["holds"]
    assert [(h["name"], h["lifts_in"]) for h in holds] == [("budget", "in 12h 00m"), ("pause", "until lifted")]
    assert holds[0]["reason"] == HOSTILE  # raw: the template escapes it


def test_episodes_open_and_recent_of_this_agent() -> None:
    episodes = by_name(agent_view.panels(data()))["episodes"]
    assert [e["id"] for e in episodes["open"]] == ["a2"]
    assert [e["id"] for e in episodes["recent"]] == ["a1", "a3"]


def test_episodes_read_twice_are_shown_once_with_the_pages_note() -> None:
    both = [*alerts(), *alerts()]  # the open call and the newest-of-any-state call overlap
    notes = {"episodes": "Showing the newest 20 open episodes; the agent may have more."}
    episodes = by_name(agent_view.panels(AgentData.of(agent(), NOW, None, None, both, notes=notes)))["episodes"]
    assert [e["id"] for e in episodes["open"]] == ["a2"] and [e["id"] for e in episodes["recent"]] == ["a1", "a3"]
    assert episodes["note"] == notes["episodes"]


def audit_entry(n: int, action: str, outcome: str, **details: Any) -> dict[str, Any]:
    at = iso(NOW - timedelta(minutes=n))
    return {"id": f"x{n}", "at": at, "actor": f"api:k{n}", "action": action, "target": "agent-1",
            "outcome": outcome, "tenant": "acme", "details": details}  # fmt: skip


def test_commands_from_the_agents_audit_entries() -> None:
    entries = [
        audit_entry(1, "agent.hold.pause", "placed", reason=HOSTILE),
        audit_entry(2, "agent.transition", "applied", to="busy"),
        audit_entry(3, "agent.hold.budget", "lifted", reason="budget period reset"),
        audit_entry(4, "agent.release", "applied", reason="checked"),
        audit_entry(5, "agent.key_rotate", "rotated"),
        audit_entry(6, "agent.transition", "refused", to="decommissioned", reason="retire"),
        audit_entry(7, "agent.hold.quarantine", "placed", reason="odd"),
        audit_entry(8, "agent.upgrade", "applied"),
        audit_entry(9, "agent.hold.unknown", "placed"),
    ]
    panel = by_name(agent_view.panels(AgentData.of(agent(), NOW, audit=entries)))["commands"]
    rows = [(c["command"], c["actor"], c["outcome"], c["reason"]) for c in panel["commands"]]
    assert rows == [
        ("pause", "api:k1", "placed", HOSTILE),  # raw: the template escapes it
        ("budget_restored", "api:k3", "lifted", "budget period reset"),
        ("release", "api:k4", "applied", "checked"),
        ("key_rotated", "api:k5", "rotated", ""),
        ("decommission", "api:k6", "refused", "retire"),
        ("quarantine", "api:k7", "placed", "odd"),
    ]
    assert panel["commands"][0]["ago"] == "1m ago" and panel["note"] is None


def test_commands_are_cut_to_the_newest_and_say_why_when_unreadable() -> None:
    many = [audit_entry(n, "agent.hold.pause", "placed") for n in range(1, 30)]
    panel = by_name(agent_view.panels(AgentData.of(agent(), NOW, audit=many)))["commands"]
    assert [c["at"] for c in panel["commands"]] == [NOW - timedelta(minutes=n) for n in range(1, 11)]
    refused = AgentData.of(agent(), NOW, notes={"commands": "Not available to your role"})
    assert by_name(agent_view.panels(refused))["commands"] == {
        "name": "commands",
        "template": "panels/commands.html",
        "title": "Recent commands",
        "commands": [],
        "note": "Not available to your role",
    }
    empty = by_name(agent_view.panels(AgentData.of(agent(), NOW, audit=[])))["commands"]
    assert empty["commands"] == [] and empty["note"] is None


def test_reset_lease_and_hold_times_are_also_absolute_utc() -> None:
    panels = by_name(agent_view.panels(data()))
    day = panels["spend"]["periods"][1]
    assert (day["resets_in"], day["resets_utc"]) == ("in 12h 00m", "2026-12-07 00:00:00 UTC")
    assert panels["spend"]["lease"]["expires_utc"] == "2026-12-06 12:10:00 UTC"
    assert [h["lifts_utc"] for h in panels["holds"]["holds"]] == ["2026-12-07 00:00:00 UTC", None]
    assert agent_view.stamp(datetime(2026, 12, 6, 13, 0, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-12-06 12:00:00 UTC"
    )


def test_accepts_the_api_views_themselves() -> None:
    history = HistoryView.model_validate({"agent_id": "agent-1", "samples": samples()})
    view = AgentUsageView.model_validate(usage())
    from_models = agent_view.panels(AgentData.of(agent(), NOW, history, view, alerts()))
    from_dicts = agent_view.panels(data())
    assert by_name(from_models)["metrics"] == by_name(from_dicts)["metrics"]
    assert by_name(from_models)["holds"] == by_name(from_dicts)["holds"]


def test_formats() -> None:
    assert usd(None) == "—" and usd(Decimal("1234.5")) == "$1,234.50" and usd(Decimal(0)) == "$0.00"
    assert usd(Decimal("0.00001234")) == "$0.000012" and usd(Decimal("0.000000001")) == "$0.000000001"
    assert usd(Decimal("0.08")) == "$0.08" and usd(Decimal("0.5")) == "$0.50" and usd(Decimal("0.4237")) == "$0.4237"
    assert usd(Decimal("0.0012")) == "$0.0012" and usd(Decimal("0.12345")) == "$0.1234"
    assert usd(Decimal("-0.3")) == "$-0.30"
    assert duration(59) == "59s" and duration(3600 + 5 * 60) == "1h 05m" and duration(2 * 86400 + 3600) == "2d 01h"


# ---- spend view


def day(usd_value: str, **extra: int) -> ModelDay:
    return ModelDay(usd_nanos=int(Decimal(usd_value) * 1_000_000_000), calls=1, **extra)


def test_month_days_from_store_shape() -> None:
    got = spend_view.month_days("2026-12", {"05": {"m1": {"usd_nanos": 5, "calls": 1}}, "06": {"m1": day("1")}})
    assert got == {date(2026, 12, 5): {"m1": ModelDay(calls=1, usd_nanos=5)}, date(2026, 12, 6): {"m1": day("1")}}


def test_rows_today_against_previous_days() -> None:
    agents = {
        "agent-2": {date(2026, 12, 6): {"gpt": day("3")}},
        "agent-1": {
            date(2026, 12, 4): {"m1": day("1"), "m2": day("0.5")},
            date(2026, 12, 5): {"m1": day("3")},
            date(2026, 12, 6): {"m1": day("4")},
            date(2026, 11, 1): {"m1": day("99")},  # outside the window
        },
    }
    got = spend_view.rows(agents, date(2026, 12, 6), days=2)
    assert [(r.agent_id, r.model) for r in got] == [("agent-1", "m1"), ("agent-1", "m2"), ("agent-2", "gpt")]
    m1 = got[0].as_dict()
    assert m1["today"] == "$4.00" and m1["previous"] == ["$1.00", "$3.00"] and m1["previous_avg"] == "$2.00"
    assert m1["change"] == 1.0
    assert got[2].as_dict()["change"] is None  # nothing before: no ratio
    totals = spend_view.daily_totals(agents, date(2026, 12, 6), days=2)
    assert totals == [
        (date(2026, 12, 4), 1_500_000_000),
        (date(2026, 12, 5), 3_000_000_000),
        (date(2026, 12, 6), 7_000_000_000),
    ]


def test_projection_arithmetic() -> None:
    # Noon: half the day elapsed, $3 spent -> $6 by midnight.
    p = spend_view.project(Decimal(3), Period.DAY, NOW, Decimal(5))
    assert p.elapsed_share == 0.5 and p.projected_usd == Decimal(6) and p.over
    assert p.row(NOW)["remaining"] == "$2.00" and p.row(NOW)["projected"] == "$6.00"
    # December 6, noon: 5.5 of 31 days elapsed.
    m = spend_view.project(Decimal("5.5"), Period.MONTH, NOW, Decimal(100))
    assert m.projected_usd == Decimal("31.000000") and not m.over
    assert m.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    # Too early in the period to say.
    early = spend_view.project(Decimal(1), Period.DAY, datetime(2026, 12, 6, 0, 1, tzinfo=UTC))
    assert early.projected_usd is None and not early.over
    assert early.row(NOW)["budget"] is None and early.row(NOW)["remaining"] is None


def test_spend_view_page() -> None:
    agents = {"agent-1": {date(2026, 12, 1): {"m1": day("2")}, date(2026, 12, 6): {"m1": day("3"), "m2": day("1")}}}
    # The API's periods, not the breakdown: the tenant spent more than the listed agents (a cut list).
    periods = {
        "day": {"spend_usd": "5.0000", "budget_usd": "9.0000", "remaining_usd": "4.0000"},
        "month": {"spend_usd": "11.0000", "budget_usd": "50.0000"},
        "hour": {"spend_usd": "1.0000", "budget_usd": None},
    }
    page = spend_view.spend_view(HOSTILE, agents, NOW, periods)
    assert page["agents"] == [{"agent_id": "agent-1", "today": "$4.00"}]
    assert [d["spend"] for d in page["days"]][-1] == "$4.00" and len(page["days"]) == spend_view.DAYS + 1
    today, month = page["projections"]
    assert today["period"] == "day" and today["spent"] == "$5.00" and today["budget"] == "$9.00"
    assert today["projected"] == "$10.00" and today["over"] and today["remaining"] == "$4.00"
    # Dec 6 noon: 5.5 of 31 days elapsed; $11 -> $62.00 against $50.
    assert month["spent"] == "$11.00" and month["budget"] == "$50.00" and month["projected"] == "$62.00"
    assert month["over"]
    assert "<script" not in page["chart"] and "&lt;script&gt;" in page["chart"]
    # The chart's budget line is the API's daily budget.
    assert page["chart"] == spend_view.spend_view(HOSTILE, agents, NOW, {"day": {"budget_usd": "9"}})["chart"]
    assert page["chart"] != spend_view.spend_view(HOSTILE, agents, NOW, None)["chart"]


def test_spend_view_without_the_apis_periods_has_no_projection() -> None:
    agents = {"agent-1": {date(2026, 12, 6): {"m1": day("3")}}}
    page = spend_view.spend_view("acme", agents, NOW, {"month": {"spend_usd": "7", "budget_usd": None}})
    assert [(p["period"], p["spent"], p["budget"]) for p in page["projections"]] == [("month", "$7.00", None)]
    assert spend_view.spend_view("acme", agents, NOW, None)["projections"] == []
