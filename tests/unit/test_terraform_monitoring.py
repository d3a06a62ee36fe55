"""terraform/monitoring.tf against the code (issue 21): the log-based metrics, the alert policies and the dashboard
exist, and every metric's filter and extractors match the log lines the code really writes.

The lines are produced by the real code paths (an agent event accepted with a pause, rejected, failing; a dead
letter; a malformed work item; the minute job's tick, fresh and stale; a Slack call refused for its token; an HTTP
request), captured through the fleet's own JSON formatter and turned into the LogEntry Cloud Run makes of a JSON
line on stdout (``severity`` lifted out, the rest in ``jsonPayload``). The filters are then evaluated on them by
:func:`matches`, which knows the small subset of the Logging query language the filters are written in and
fails on anything else, so a filter cannot drift into syntax this test does not check."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import flask
import hcl2
import pytest
from fleet_agent.contracts import Command, CommandType, EventType

from shared.domain.agent_record import Plan
from shared.domain.rejections import Code, Rejected
from shared.pipeline import fleet_actions, handlers, ticks
from shared.pipeline.decoding import PushedMessage
from shared.platform import logs, topology
from shared.slack import web_api
from shared.store import rejections

TF = Path(__file__).resolve().parents[2] / "terraform"
METRICS = {"invocations", "rejections", "enforcement_latency", "slack_failures", "scheduled_runs"}
POLICIES = {"dead_letters", "error_ratio", "slack_auth", "no_sweep"}


def _literal(value: Any) -> Any:
    """A literal HCL string as python-hcl2 keeps it (quoted, escaped like JSON) -> its value."""
    if isinstance(value, str) and value.startswith('"') and "${" not in value:
        return json.loads(value)
    return value


@pytest.fixture(scope="module")
def monitoring() -> dict[str, Any]:
    with (TF / "monitoring.tf").open() as handle:
        doc = hcl2.load(handle)
    resources: dict[str, dict[str, Any]] = {}
    for block in doc["resource"]:
        for rtype, named in block.items():
            for name, body in named.items():
                resources[f"{_literal(rtype)}.{_literal(name)}"] = body
    local_values: dict[str, Any] = {}
    for block in doc["locals"]:
        local_values.update(block)
    return {"resources": resources, "locals": local_values}


def _of_type(monitoring: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k.split(".")[1]: v for k, v in monitoring["resources"].items() if k.startswith(rtype + ".")}


def _one(block: Any) -> dict[str, Any]:
    return block[0] if isinstance(block, list) else block


# --- a tiny evaluator of the filters' subset of the Logging query language ----------------------------------

_TERM = re.compile(r'^(?P<path>[A-Za-z_][\w.]*)(?:(?P<present>:\*)|(?P<op>=~|=)(?P<value>"[^"]*"))$')


def _field(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(filter_text: str, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` passes ``filter_text``: terms joined by AND, each ``path:*`` (the field is
    present), ``path="v"`` or ``path=~"regex"`` (searched, as Cloud Logging does)."""
    for term in filter_text.split(" AND "):
        found = _TERM.match(term.strip())
        assert found is not None, f"a term outside the subset this test evaluates: {term!r}"
        value = _field(entry, found["path"])
        if found["present"]:
            ok = value is not None
        elif found["op"] == "=~":
            ok = value is not None and re.search(json.loads(found["value"]), str(value)) is not None
        else:
            ok = value is not None and str(value) == json.loads(found["value"])
        if not ok:
            return False
    return True


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    found = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    assert found is not None, extractor
    return _field(entry, found.group(1))


# --- the lines the code writes -------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.formatter = logs.JsonFormatter()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def _entry(line: dict[str, Any], service: str) -> dict[str, Any]:
    """What Cloud Logging stores of a JSON line a Cloud Run service wrote on stdout."""
    payload = {k: v for k, v in line.items() if k not in ("severity", "time")}
    return {
        "severity": line["severity"],
        "jsonPayload": payload,
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": service}},
    }


def _message(raw: bytes = b"{}", age_s: float = 1.5, **attributes: str) -> PushedMessage:
    return PushedMessage(
        message_id="m-1", published_at=datetime.now(UTC) - timedelta(seconds=age_s), raw=raw, attributes=attributes
    )


@pytest.fixture(scope="module")
def written() -> Iterator[dict[str, dict[str, Any]]]:
    """The real lines of each case, by case name, as LogEntries."""
    capture = _Lines()
    fleet = logging.getLogger("fleet")
    fleet.addHandler(capture)
    patch = pytest.MonkeyPatch()
    out: dict[str, dict[str, Any]] = {}

    def take(case: str, service: str) -> None:
        assert capture.lines, case
        out[case] = _entry(capture.lines[-1], service)
        capture.lines.clear()

    try:
        patch.setattr(rejections, "record", lambda rejected, **fields: fields)
        patch.setattr(
            handlers, "decode", lambda message, expected: SimpleNamespace(event=SimpleNamespace(agent_id="a-1"))
        )
        pause = Command(
            agent_id="a-1",
            command=CommandType.PAUSE,
            reason="runaway",
            issued_at=datetime.now(UTC),
            command_id="cmd-pause-1",
        )
        handlers.handle_push(_message(), EventType.COST, lambda decoded: Plan(commands=[pause]))
        take("enforced", "fleet-costs")

        def refuse(decoded: Any) -> Plan:
            raise Rejected(Code.SCHEMA_VIOLATION, "no", agent_id="a-1")

        handlers.handle_push(_message(), EventType.HEARTBEAT, refuse)
        take("rejected", "fleet-heartbeats")

        def broken(decoded: Any) -> Plan:
            raise RuntimeError("Firestore down")

        with pytest.raises(RuntimeError):
            handlers.handle_push(_message(), EventType.HEARTBEAT, broken)
        take("failed", "fleet-heartbeats")

        handlers.handle_dead_letter(_message(b"{}", CloudPubSubDeadLetterSourceDeliveryCount="15", agent_id="a-1"))
        take("dead_letter", "fleet-dead-letters")

        fleet_actions.handle(_message(b"[]"))
        take("malformed_action", "fleet-actions")

        sweep = next(s for s in topology.load().schedules if s.name == "liveness-sweep")
        patch.setitem(ticks.JOBS, "liveness-sweep", lambda job, now: {"marked": 0})
        ticks.handle(_message(json.dumps({"job": sweep.name}).encode(), age_s=1), sweep.function)
        take("sweep_done", sweep.function)
        ticks.handle(_message(json.dumps({"job": sweep.name}).encode(), age_s=sweep.max_age_s + 60), sweep.function)
        take("sweep_stale", sweep.function)

        def invalid_auth(web: Any) -> Any:
            # lazy: slack_sdk only for the Slack case, as in the adapter
            from slack_sdk.errors import SlackApiError

            response = SimpleNamespace(status_code=200, data={"ok": False, "error": "invalid_auth"}, headers={})
            raise SlackApiError("invalid_auth", response)

        patch.setattr(web_api, "client", lambda: object())
        with pytest.raises(web_api.SlackRefused):
            web_api._call("chat.postMessage", invalid_auth)
        take("slack_auth", "fleet-sweep")

        # lazy: the Slack app's request entry point loads Bolt; only this case needs it
        from shared.slack import app as slack_app

        with flask.Flask(__name__).test_request_context("/slack/events", method="GET"):
            assert slack_app.handle(flask.request).status_code == 405
        take("http", "fleet-slack")
    finally:
        patch.undo()
        fleet.removeHandler(capture)
    yield out


# --- the contract ---------------------------------------------------------------------------------------------

#: The cases each metric counts (every other case must not match it).
COUNTS = {
    "invocations": {"enforced", "rejected", "failed", "dead_letter", "malformed_action", "sweep_done", "http"},
    "rejections": {"rejected", "dead_letter", "malformed_action"},
    "enforcement_latency": {"enforced", "rejected"},
    "slack_failures": {"slack_auth"},
    "scheduled_runs": {"sweep_done", "sweep_stale"},
}


def test_the_metrics_exist_with_a_label_extractor_for_every_label(monitoring: dict[str, Any]) -> None:
    metrics = _of_type(monitoring, "google_logging_metric")
    assert set(metrics) == METRICS == set(COUNTS)
    for key, body in metrics.items():
        assert _literal(body["name"]) == f"fleet/{key}"
        descriptor = _one(body["metric_descriptor"])
        labels = {_literal(_one(label)["key"]) for label in descriptor["labels"]}
        assert labels == set(body["label_extractors"]), key
        distribution = _literal(descriptor["value_type"]) == "DISTRIBUTION"
        assert distribution == (key == "enforcement_latency"), key
        assert ("value_extractor" in body) == distribution and ("bucket_options" in body) == distribution, key


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_each_metric_matches_the_lines_the_code_writes_and_only_those(
    monitoring: dict[str, Any], written: dict[str, dict[str, Any]], metric: str
) -> None:
    body = _of_type(monitoring, "google_logging_metric")[metric]
    query = _literal(body["filter"])
    matched = {case for case, entry in written.items() if matches(query, entry)}
    assert matched == COUNTS[metric]
    # Every extractor reads a field that at least one of those lines really has.
    extractors = {k: _literal(v) for k, v in body["label_extractors"].items()}
    if "value_extractor" in body:
        extractors["value"] = _literal(body["value_extractor"])
    for label, extractor in extractors.items():
        assert any(extract(extractor, written[case]) is not None for case in matched), (metric, label)


def test_the_values_the_alert_policies_look_for_are_the_ones_the_code_logs(
    monitoring: dict[str, Any], written: dict[str, dict[str, Any]]
) -> None:
    settings = {k: _literal(v) for k, v in monitoring["locals"]["monitoring"].items()}
    labels = {
        name: {k: _literal(v) for k, v in body["label_extractors"].items()}
        for name, body in _of_type(monitoring, "google_logging_metric").items()
    }
    assert extract(labels["rejections"]["code"], written["dead_letter"]) == settings["dead_letter_code"]
    assert settings["dead_letter_code"] == Code.DELIVERY_EXHAUSTED.value
    assert extract(labels["slack_failures"]["failure"], written["slack_auth"]) == settings["auth_failure"]
    assert extract(labels["invocations"]["severity"], written["failed"]) == "ERROR"
    assert extract(labels["invocations"]["severity"], written["rejected"]) != "ERROR"  # refusals are not errors
    done = written["sweep_done"]
    assert extract(labels["scheduled_runs"]["job"], done) == settings["sweep_job"]
    assert extract(labels["scheduled_runs"]["outcome"], done) == "done"
    assert settings["sweep_job"] in {s.name for s in topology.load().schedules}
    # The enforcement latency: a number of milliseconds, about the message's age; the commands it issued.
    latency = _literal(_of_type(monitoring, "google_logging_metric")["enforcement_latency"]["value_extractor"])
    assert 1000 <= extract(latency, written["enforced"]) < 60_000
    assert extract(labels["enforcement_latency"]["enforced"], written["enforced"]) == "pause"


def test_the_alert_policies_watch_the_fleet_and_notify_the_channels_of_the_variable(
    monitoring: dict[str, Any],
) -> None:
    policies = _of_type(monitoring, "google_monitoring_alert_policy")
    assert set(policies) == POLICIES
    for name, body in policies.items():
        assert body["notification_channels"] == "${var.monitoring_notification_channels}", name
        assert _one(body["documentation"])["content"], name
    settings = {k: _literal(v) for k, v in monitoring["locals"]["monitoring"].items()}
    assert settings["sweep_absent_for"] == "300s"

    def condition(name: str, kind: str) -> dict[str, Any]:
        return _one(_one(policies[name]["conditions"])[kind])

    assert "local.fleet_metric.rejections" in condition("dead_letters", "condition_threshold")["filter"]
    ratio = condition("error_ratio", "condition_threshold")
    assert (
        "metric.label.severity" in ratio["filter"]
        and ratio["denominator_filter"] == "${local.fleet_metric.invocations}"
    )
    assert "local.monitoring.auth_failure" in condition("slack_auth", "condition_threshold")["filter"]
    absent = condition("no_sweep", "condition_absent")
    assert (
        "local.monitoring.sweep_job" in absent["filter"]
        and absent["duration"] == "${local.monitoring.sweep_absent_for}"
    )
    variables = (TF / "variables.tf").read_text()
    assert 'variable "monitoring_notification_channels"' in variables


def test_the_dashboard_charts_every_metric(monitoring: dict[str, Any]) -> None:
    (dashboard,) = _of_type(monitoring, "google_monitoring_dashboard").values()
    assert "local.dashboard_charts" in dashboard["dashboard_json"]
    charted = {
        m
        for chart in monitoring["locals"]["dashboard_charts"]
        for m in re.findall(r"fleet_metric\.(\w+)", chart["filter"])
    }
    assert charted == METRICS


def test_terraform_renders_the_policies_filters_and_the_dashboard(monitoring: dict[str, Any], tmp_path: Path) -> None:
    """The real Terraform evaluates monitoring.tf's locals (``terraform console`` needs no provider for them; the
    metrics' names stand in for the resources' ``name``): the alert policies' Monitoring filters name the metric
    types and the values the code logs, and the dashboard's JSON has a chart of a real metric per entry."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")
    text = (TF / "monitoring.tf").read_text()
    names = {k: _literal(v["name"]) for k, v in _of_type(monitoring, "google_logging_metric").items()}
    blocks = re.findall(r"^locals \{\n.*?^\}\n", text, re.M | re.S)
    module = "".join(blocks)
    for key, name in names.items():
        module = module.replace(f"google_logging_metric.{key}.name", json.dumps(name))
    dashboard = re.search(r"^  dashboard_json = (jsonencode\(\{\n.*?^  \}\))\n", text, re.M | re.S)
    assert dashboard is not None
    policies = _of_type(monitoring, "google_monitoring_alert_policy")
    filters = {}
    for name, body in policies.items():
        condition = _one(_one(body["conditions"]))
        kind = next(k for k in condition if k.startswith("condition_"))
        filters[name] = _one(condition[kind])["filter"]  # the raw HCL string, templates and all
    rendered = "\n".join(
        [
            "locals {",
            f"  rendered_dashboard = {dashboard.group(1)}",
            "  rendered_filters = {",
            *(f"    {k} = {v}" for k, v in filters.items()),
            "  }",
            "}",
        ]
    )
    (tmp_path / "main.tf").write_text('variable "environment" {\n  default = "prod"\n}\n' + module + rendered + "\n")
    expr = "jsonencode({dashboard = local.rendered_dashboard, filters = local.rendered_filters})"
    done = subprocess.run(
        ["terraform", "console"], input=expr, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(json.loads(done.stdout.strip().splitlines()[-1]))
    types = {
        m: f'metric.type="logging.googleapis.com/user/{n}" AND resource.type="cloud_run_revision"'
        for m, n in names.items()
    }
    assert got["filters"] == {
        "dead_letters": types["rejections"] + ' AND metric.label.code="delivery_exhausted"',
        "error_ratio": types["invocations"] + ' AND metric.label.severity="ERROR"',
        "slack_auth": types["slack_failures"] + ' AND metric.label.failure="auth"',
        "no_sweep": types["scheduled_runs"] + ' AND metric.label.job="liveness-sweep" AND metric.label.outcome="done"',
    }
    board = json.loads(got["dashboard"])
    tiles = board["mosaicLayout"]["tiles"]
    assert len(tiles) == len(monitoring["locals"]["dashboard_charts"])
    charted = set()
    for tile in tiles:
        (data,) = tile["widget"]["xyChart"]["dataSets"]
        query = data["timeSeriesQuery"]["timeSeriesFilter"]
        charted |= {m for m, t in types.items() if query["filter"].startswith(t)}
        assert query["aggregation"]["perSeriesAligner"] in ("ALIGN_RATE", "ALIGN_DELTA")
        assert tile["xPos"] + tile["width"] <= board["mosaicLayout"]["columns"]
    assert charted == METRICS
