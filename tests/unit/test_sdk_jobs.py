"""fleet_agent.jobs.JobReporter against a fake publisher: no emulator, no network."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fleet_agent import JobReporter
from fleet_agent.contracts import SCHEMA_VERSION, Envelope, JobPhase

from tests.unit.test_sdk_client import FakePublisher

SDK = Path(__file__).resolve().parents[2] / "sdk"
JOB = "j-0123456789abcdef0123"
AGENT = "agent-1"


def reporter(publisher: FakePublisher | None = None, **kwargs: Any) -> JobReporter:
    return JobReporter(JOB, AGENT, project="proj", publisher=publisher or FakePublisher(), **kwargs)


def test_reports_decode_as_job_progress_with_the_right_attributes() -> None:
    publisher = FakePublisher()
    r = reporter(publisher, attempt=2)
    r.started("warming up")
    r.progress(1, 3, loss=0.5, val_accuracy=0.8)
    r.progress(2, 3, loss=0.4)
    assert r.succeeded(accuracy=0.9, train_rows=100) == "4"

    for topic, data, attrs in publisher.messages:
        assert topic == "projects/proj/topics/job-progress"
        assert attrs == {"agent_id": AGENT, "event_type": "job_progress", "schema_version": SCHEMA_VERSION}
        Envelope.model_validate_json(data)
    started, first, second, done = publisher.reports()
    assert (started.phase, started.message, started.step) == (JobPhase.STARTED, "warming up", None)
    assert (first.phase, first.step, first.total_steps, first.metrics) == (
        JobPhase.PROGRESS,
        1,
        3,
        {"loss": 0.5, "val_accuracy": 0.8},
    )
    assert second.metrics == {"loss": 0.4}
    # the final report carries the last step reached and its metrics as floats
    assert (done.phase, done.step, done.total_steps) == (JobPhase.SUCCEEDED, 2, 3)
    assert done.metrics == {"accuracy": 0.9, "train_rows": 100.0}
    assert {(p.job_id, p.agent_id, p.attempt) for p in publisher.reports()} == {(JOB, AGENT, 2)}
    assert r.last_report == done
    assert r.final_phase is JobPhase.SUCCEEDED


def test_failed_report_carries_the_message_cut_to_the_contract() -> None:
    publisher = FakePublisher()
    r = reporter(publisher)
    r.failed("x" * 2000, step_time_s=1.5)
    (report,) = publisher.reports()
    assert report.phase is JobPhase.FAILED
    assert len(report.message) == 500 and report.message.endswith("...")
    assert report.metrics == {"step_time_s": 1.5}


def test_seq_strictly_increases_also_across_reporter_instances() -> None:
    publisher = FakePublisher()
    first = reporter(publisher)
    for step in range(1, 200):
        first.progress(step, loss=1.0 / step)
    first.failed("preempted")
    # a second attempt of the same run (here in the same process: the worst case for a clock)
    second = reporter(publisher, attempt=1)
    second.started()
    for step in range(1, 200):
        second.progress(step)
    second.succeeded()
    seqs = [report.seq for report in publisher.reports()]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert seqs[0] > 1_600_000_000 * 10**6  # microseconds since the epoch: above any earlier process's


def test_seq_is_unique_across_threads() -> None:
    publisher = FakePublisher()
    reporters = [reporter(publisher) for _ in range(4)]

    def work(r: JobReporter) -> None:
        for step in range(100):
            r.progress(step)

    threads = [threading.Thread(target=work, args=(r,)) for r in reporters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [report.seq for report in publisher.reports()]
    assert len(set(seqs)) == len(seqs) == 400


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_are_refused_naming_the_metric(bad: float) -> None:
    publisher = FakePublisher()
    r = reporter(publisher)
    with pytest.raises(ValueError, match="val_loss"):
        r.progress(1, 2, loss=0.1, val_loss=bad)
    with pytest.raises(ValueError, match="auc"):
        r.succeeded(auc=bad)
    assert publisher.messages == []  # nothing half-sent
    assert r.final_phase is None


@pytest.mark.parametrize("bad", ["0.5", True, None, [1.0]])
def test_metrics_must_be_numbers(bad: Any) -> None:
    with pytest.raises(ValueError, match="loss"):
        reporter().progress(1, loss=bad)


def test_any_real_number_is_accepted_as_a_float() -> None:
    from fractions import Fraction

    np = pytest.importorskip("numpy")
    publisher = FakePublisher()
    reporter(publisher).progress(1, count=3, share=Fraction(1, 4), auc=np.float64(0.75), rows=np.int64(7))
    assert publisher.reports()[0].metrics == {"count": 3.0, "share": 0.25, "auc": 0.75, "rows": 7.0}
    with pytest.raises(ValueError, match="auc"):
        reporter().progress(1, auc=np.float64("nan"))


def test_no_report_after_the_final_one() -> None:
    r = reporter()
    r.succeeded(accuracy=1.0)
    with pytest.raises(RuntimeError, match="already reported succeeded"):
        r.progress(3)
    with pytest.raises(RuntimeError, match="already reported"):
        r.failed("late")


def test_final_report_waits_for_pubsub_and_a_failed_publish_may_be_retried() -> None:
    publisher = FakePublisher(auto_resolve=False)
    r = reporter(publisher)
    done = threading.Event()
    results: list[str] = []

    def finish() -> None:
        results.append(r.succeeded(accuracy=0.5))
        done.set()

    thread = threading.Thread(target=finish)
    thread.start()
    assert not done.wait(0.2)  # blocked until Pub/Sub accepts
    publisher.futures[0].set_result("m-1")
    thread.join(2)
    assert results == ["m-1"]

    failing = FakePublisher(fail_with=RuntimeError("down"))
    r2 = reporter(failing)
    with pytest.raises(RuntimeError, match="down"):
        r2.failed("boom")
    assert r2.final_phase is None  # not accepted: reporting again is allowed
    failing.fail_with = None
    r2.failed("boom")
    first, second = failing.reports()
    assert second.seq > first.seq


def test_close_waits_for_progress_reports_and_stops_only_its_own_publisher() -> None:
    publisher = FakePublisher(auto_resolve=False)
    r = reporter(publisher)
    r.progress(1, 2)
    r.progress(2, 2)
    assert r.pending == 2
    assert r.close(timeout=0.05) is False  # still pending at the timeout
    threading.Timer(0.1, publisher.resolve_all).start()
    assert r.close(timeout=5) is True
    assert r.pending == 0
    assert publisher.stopped is False  # given, not created: the caller's to stop
    with pytest.raises(RuntimeError, match="closed"):
        r.progress(3)


def test_context_manager_reports_an_exception_as_failed_and_reraises() -> None:
    publisher = FakePublisher()
    with pytest.raises(KeyError), reporter(publisher) as r:
        r.started()
        r.progress(1, 5, loss=0.7)
        raise KeyError("missing column")
    phases = [p.phase for p in publisher.reports()]
    assert phases == [JobPhase.STARTED, JobPhase.PROGRESS, JobPhase.FAILED]
    failed = publisher.reports()[-1]
    assert failed.phase is JobPhase.FAILED
    assert failed.message == "KeyError('missing column')"
    assert failed.step == 1
    with pytest.raises(RuntimeError, match="closed"):
        r.progress(2)


def test_context_manager_leaves_a_finished_or_cleanly_exiting_run_alone() -> None:
    publisher = FakePublisher()
    with pytest.raises(ValueError), reporter(publisher) as r:
        r.succeeded(accuracy=0.9)
        raise ValueError("after the end")
    with pytest.raises(SystemExit), reporter(publisher):
        sys.exit(0)
    with reporter(publisher):
        pass
    assert [p.phase for p in publisher.reports()] == [JobPhase.SUCCEEDED]


def test_topic_names_and_paths() -> None:
    publisher = FakePublisher()
    assert reporter(publisher, topic="prod-job-progress").topic == "projects/proj/topics/prod-job-progress"
    path = "projects/other/topics/jp"
    r = JobReporter(JOB, AGENT, topic=path, publisher=publisher)
    assert (r.topic, r.project) == (path, "other")


def test_constructor_checks_ids_attempt_and_project(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="job_id"):
        JobReporter("job-1", AGENT, project="p", publisher=FakePublisher())
    with pytest.raises(ValueError, match="agent_id"):
        JobReporter(JOB, "A!", project="p", publisher=FakePublisher())
    with pytest.raises(ValueError, match="attempt"):
        reporter(attempt=-1)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GCLOUD_PROJECT", raising=False)
    with pytest.raises(ValueError, match="GOOGLE_CLOUD_PROJECT"):
        JobReporter(JOB, AGENT, publisher=FakePublisher())


def test_from_env_reads_the_launchers_variables() -> None:
    env = {
        "FLEET_JOB_ID": JOB,
        "FLEET_AGENT_ID": AGENT,
        "GOOGLE_CLOUD_PROJECT": "proj",
        "FLEET_JOB_PROGRESS_TOPIC": "fleet-job-progress",
        "FLEET_JOB_ATTEMPT": "3",
    }
    r = JobReporter.from_env(env, publisher=FakePublisher())
    assert (r.job_id, r.agent_id, r.project, r.attempt) == (JOB, AGENT, "proj", 3)
    assert r.topic == "projects/proj/topics/fleet-job-progress"

    cloud_run = {
        "FLEET_JOB_ID": JOB,
        "FLEET_AGENT_ID": AGENT,
        "GOOGLE_CLOUD_PROJECT": "p",
        "CLOUD_RUN_TASK_ATTEMPT": "1",
    }
    r = JobReporter.from_env(cloud_run, publisher=FakePublisher())
    assert (r.attempt, r.topic) == (1, "projects/p/topics/job-progress")
    # the fleet's own variable wins over Cloud Run's
    assert JobReporter.from_env({**cloud_run, "FLEET_JOB_ATTEMPT": "0"}, publisher=FakePublisher()).attempt == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_AGENT_ID": AGENT}, "FLEET_JOB_ID not set"),
        ({"FLEET_JOB_ID": JOB}, "FLEET_AGENT_ID not set"),
        ({}, "FLEET_JOB_ID and FLEET_AGENT_ID not set"),
        ({"FLEET_JOB_ID": " ", "FLEET_AGENT_ID": AGENT}, "FLEET_JOB_ID not set"),
        ({"FLEET_JOB_ID": JOB, "FLEET_AGENT_ID": AGENT, "FLEET_JOB_ATTEMPT": "two"}, "FLEET_JOB_ATTEMPT"),
        ({"FLEET_JOB_ID": "nope", "FLEET_AGENT_ID": AGENT}, "job_id"),
    ],
)
def test_from_env_errors_are_clear(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobReporter.from_env({"GOOGLE_CLOUD_PROJECT": "p", **env}, publisher=FakePublisher())


def test_importing_fleet_agent_jobs_does_not_load_pubsub() -> None:
    code = (
        "import sys, fleet_agent.jobs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'"
        " or m.startswith(('google.cloud.pubsub', 'google.api_core'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SDK.parent / "docs"
    )
    assert out.stdout.strip() == "[]"
