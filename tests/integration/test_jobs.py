"""Training jobs through the real path: the REST API and Slack app served by functions-framework,
Firestore and Pub/Sub emulators, launches by ``fleet-actions``, the reconcile tick (``jobs-reconcile``)
and the runs' own progress reports. Local runs are real processes (jobs/train.py with scikit-learn);
GKE and Cloud Run are reached through their client libraries against the local fakes of conftest.

Every tenant here requires signed events: its agent enrolls with a token, a run signs its reports with
its job's own key (FLEET_JOB_KEY, handed to it at launch), and a job's settlement is signed by the fleet.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fleet_agent.contracts import JobProgress
from fleet_agent.identity import AgentKey

from shared.training import job_keys
from tests.integration.conftest import Api, CloudFakes, Slack, SlackApp, approval_message, tick, wait_for
from tests.integration.helpers import agent_doc, enrollment_token, make_key, publish, registration

pytestmark = pytest.mark.integration

APPROVER, OPERATOR = "UJAPPR01", "UJOPER01"
FAST = {"rows": 1500, "val_fraction": 0.25}


@pytest.fixture
def tenant(api: Api) -> str:
    name = f"j{uuid.uuid4().hex[:10]}"
    roles = {APPROVER: "approver", OPERATOR: "operator"}
    assert api.send("PUT", f"/v1/tenants/{name}/roles", {"roles": roles}).status_code == 200
    reply = api.send("PUT", f"/v1/tenants/{name}/identity", {"policy": "required"})
    assert reply.status_code == 200, reply.text
    return name


@pytest.fixture
def agent_key() -> AgentKey:
    return AgentKey.generate()


@pytest.fixture
def agent(stack: Any, publisher: Any, firestore: Any, tenant: str, agent_id: str, agent_key: AgentKey) -> str:
    """An agent enrolled with a token: its tenant requires signed events."""
    claim = {"public_key": agent_key.public_key, "enrollment_token": enrollment_token(stack, tenant)}
    reg = registration(agent_id, tenant=tenant, owner="owner@example.com", identity=claim, sent_at=datetime.now(UTC))
    publish(publisher, reg, signer=agent_key)
    wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["identity"].get("keys"))
    return agent_id


def job_key(stack: Any, job_id: str) -> AgentKey:
    """The key the fleet handed to the job's run (derived from the fleet key: shared/training/job_keys.py)."""
    return job_keys.derive(stack.env["FLEET_COMMAND_KEY"].replace("\\n", "\n").encode(), job_id)


def submit(api: Api, agent: str, **fields: Any) -> dict[str, Any]:
    body = {"agent_id": agent, "requester": "alice@example.com", "name": "it-train", **fields}
    reply = api.send("POST", "/v1/jobs", body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def job(api: Api, job_id: str) -> dict[str, Any]:
    reply = api.get(f"/v1/jobs/{job_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def until_state(api: Api, publisher: Any, job_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    """Tick the reconcile job until the job is in one of ``states``."""

    def check() -> dict[str, Any] | None:
        tick(publisher, "jobs-reconcile")
        time.sleep(0.5)
        found = job(api, job_id)
        return found if found["state"] in states else None

    return dict(wait_for(check, timeout=timeout, every=0.5))


def test_the_built_in_workload_runs_locally_and_reports_its_metrics(api: Api, publisher: Any, agent: str) -> None:
    created = submit(api, agent, hyperparameters={"epochs": 4}, training_config=FAST, priority=7)
    assert created["backend"] == "local" and created["estimate"]["usd"] == "0.0000"
    assert created["state"] in ("queued", "admitted")
    launched = wait_for(lambda: job(api, created["id"])["handle"])
    assert launched["backend"] == "local"

    done = until_state(api, publisher, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["result"]["phase"] == "succeeded"
    assert 0.6 < done["result"]["accuracy"] <= 1 and done["result"]["train_rows"] > 0
    assert done["progress"]["step"] == 4 and done["progress"]["total_steps"] == 4
    states = [e["to_state"] for e in done["history"] if e["kind"] == "state"]
    assert states[0] == "queued" and states[1] == "admitted" and states[-1] == "succeeded"
    assert [e["kind"] for e in done["history"]].count("launched") == 1
    assert Decimal(done["cost_usd"]) == 0 and done["started_at"] and done["finished_at"]
    listed = api.get("/v1/jobs", agent_id=agent).json()["items"]
    assert [j["id"] for j in listed] == [created["id"]]
    audit = api.get("/v1/audit", target=created["id"]).json()["items"]
    assert {"job.submit", "job.admit", "job.launch", "job.succeeded"} <= {a["action"] for a in audit}


def test_quota_waits_say_why_never_fitting_jobs_are_refused_and_cancel_frees_quota(
    api: Api, publisher: Any, agent: str, stack: Any
) -> None:
    gpus = {"gpu": 2, "cpu": 2, "memory_gb": 4}
    slow = {**FAST, "step_sleep_s": 1}
    first = submit(api, agent, resources=gpus, hyperparameters={"epochs": 120}, training_config=slow)
    assert first["state"] == "admitted"
    second = submit(api, agent, name="second", resources={"gpu": 1})
    assert second["state"] == "queued" and second["position"] == 1
    assert "quota of user alice@example.com: 2 of 2 GPU in use, this job asks 1" in second["reason"]

    never = api.send(
        "POST", "/v1/jobs", {"agent_id": agent, "requester": "alice@example.com", "name": "x", "resources": {"gpu": 3}}
    )
    assert never.status_code == 409 and "allows 2 in all" in never.json()["error"]["reason"]

    # A running process is stopped; the waiting job takes its quota at once.
    wait_for(lambda: job(api, first["id"])["handle"])
    run_dir = Path(job(api, first["id"])["handle"]["name"])
    wait_for(lambda: (run_dir / "pid").exists())
    cancelled = api.send("POST", f"/v1/jobs/{first['id']}/cancel", {"reason": "wrong data"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and "wrong data" in cancelled.json()["reason"]
    exit_doc = wait_for(lambda: (run_dir / "exit.json").exists() and json.loads((run_dir / "exit.json").read_text()))
    assert exit_doc["phase"] == "cancelled"
    assert job(api, second["id"])["state"] in ("admitted", "running", "succeeded")
    again = api.send("POST", f"/v1/jobs/{first['id']}/cancel", {})
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["reason"]
    api.send("POST", f"/v1/jobs/{second['id']}/cancel", {})


def test_an_expensive_gke_job_waits_for_approval_runs_survives_a_preemption_and_is_charged(
    api: Api, publisher: Any, agent: str, tenant: str, slack: Slack, slack_app: SlackApp, cloud: CloudFakes
) -> None:
    settings = {"backends": ["gke", "cloudrun", "local"], "approval_threshold_usd": 2}
    assert api.send("PUT", f"/v1/tenants/{tenant}/jobs", settings).status_code == 200
    asked = submit(
        api,
        agent,
        name="a100-finetune",
        backend="gke",
        resources={"gpu": 1, "gpu_type": "nvidia-tesla-a100", "cpu": 8, "memory_gb": 20, "spot": True},
        max_runtime_s=7200,
        priority=9,
    )
    assert asked["state"] == "awaiting_approval" and "approval threshold" in asked["reason"]
    assert asked["estimate"]["machine"] == "a2-highgpu-1g" and asked["estimate"]["spot"] is True
    message = approval_message(slack, asked["approval_id"])
    shown = json.dumps(message)
    assert f"${Decimal(asked['estimate']['usd']):,.2f}" in shown and "a2-highgpu-1g" in shown

    slack_app.click("approval_approve", asked["approval_id"], APPROVER, message)
    launched = wait_for(lambda: job(api, asked["id"])["handle"], timeout=30)
    namespace, name = launched["name"].split("/")
    assert namespace == f"fleet-{tenant}"
    sent = cloud.k8s.job(namespace, name)
    pod = sent["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {  # the pool of the machine it was priced on (docs/jobs.md "Node pools")
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
        "cloud.google.com/gke-spot": "true",
        "node.kubernetes.io/instance-type": asked["estimate"]["machine"],
    }
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert sent["spec"]["activeDeadlineSeconds"] == 7200
    assert sent["metadata"]["labels"]["fleet-job-id"] == asked["id"]

    cloud.k8s.set_running(namespace, name)
    running = until_state(api, publisher, asked["id"], "running")
    assert running["started_at"]
    cloud.k8s.preempt(namespace, name)
    preempted = wait_for(
        lambda: (tick(publisher, "jobs-reconcile"), time.sleep(0.5), job(api, asked["id"]))[-1]["preemptions"] == 1
    )
    assert preempted
    cloud.k8s.set_running(namespace, name)
    cloud.k8s.complete(namespace, name)
    done = until_state(api, publisher, asked["id"], "succeeded", "failed")
    assert done["state"] == "succeeded" and done["preemptions"] == 1
    assert [e["kind"] for e in done["history"]].count("preemption") == 1
    # Seconds of an A100 spot node: the actual cost is charged to the agent once, through fleet-costs.
    assert job(api, asked["id"])["cost_usd"] == done["cost_usd"]
    assert Decimal(done["cost_usd"]) > 0
    spent = wait_for(lambda: Decimal(api.get(f"/v1/agents/{agent}/usage").json()["periods"]["month"]["spend_usd"]))
    assert spent == Decimal(done["cost_usd"])
    approvals = api.get(f"/v1/approvals/{asked['approval_id']}").json()
    assert approvals["kind"] == "training" and approvals["state"] == "approved"


def test_a_denied_job_is_cancelled_and_a_cloud_run_job_is_followed_to_the_end(
    api: Api, publisher: Any, agent: str, tenant: str, slack: Slack, slack_app: SlackApp, cloud: CloudFakes
) -> None:
    settings = {"backends": ["cloudrun", "gke", "local"], "approval_threshold_usd": 1, "default_backend": "cloudrun"}
    assert api.send("PUT", f"/v1/tenants/{tenant}/jobs", settings).status_code == 200
    big = submit(api, agent, name="l4", resources={"gpu": 1, "cpu": 4, "memory_gb": 16}, max_runtime_s=7200)
    assert big["state"] == "awaiting_approval" and big["backend"] == "cloudrun"
    slack_app.click("approval_deny", big["approval_id"], APPROVER, approval_message(slack, big["approval_id"]))
    denied = wait_for(lambda: (j := job(api, big["id"]))["state"] == "cancelled" and j, timeout=30)
    assert f"denied by slack:{APPROVER}" in denied["reason"]

    small = submit(api, agent, name="cpu-run", resources={"cpu": 2, "memory_gb": 4}, max_runtime_s=600)
    assert small["state"] == "admitted" and small["backend"] == "cloudrun"
    handle = wait_for(lambda: job(api, small["id"])["handle"])
    created = cloud.cloudrun.job(handle["name"])
    assert created is not None and created["labels"]["fleet-job-id"] == small["id"]
    execution = next(iter(cloud.cloudrun.executions(handle["name"])))
    cloud.cloudrun.start(execution)
    until_state(api, publisher, small["id"], "running")
    assert len(cloud.cloudrun.executions(handle["name"])) == 1
    cloud.cloudrun.succeed(execution)
    done = until_state(api, publisher, small["id"], "succeeded", "failed")
    assert done["state"] == "succeeded"
    # Settled: the Cloud Run job is deleted (a region keeps a limited number of them).
    wait_for(lambda: cloud.cloudrun.job(handle["name"]) is None)


def test_a_launch_lost_after_admission_is_relaunched_once_by_the_tick(
    api: Api, publisher: Any, agent: str, tenant: str, firestore: Any, cloud: CloudFakes
) -> None:
    assert api.send("PUT", f"/v1/tenants/{tenant}/jobs", {"backends": ["gke", "local"]}).status_code == 200
    # The first launch attempt meets a 503: fleet-actions fails, Pub/Sub redelivers, one Job results.
    cloud.k8s.fail_next(503, method="POST", path="/jobs")
    retried = submit(api, agent, name="retried", backend="gke", resources={"gpu": 1, "gpu_type": "nvidia-l4"})
    handle = wait_for(lambda: job(api, retried["id"])["handle"], timeout=60)
    namespace, name = handle["name"].split("/")
    posts = [r for r in cloud.k8s.requests("POST") if r["path"].endswith("/jobs") and name in json.dumps(r["body"])]
    assert len(posts) == 2 and cloud.k8s.job(namespace, name) is not None
    attempts = job(api, retried["id"])
    assert attempts["launch_attempts"] == 2 and "launch_failed" in [e["kind"] for e in attempts["history"]]

    # A pass that committed the admission and crashed before handing the launch over: the tick launches.
    lost = submit(api, agent, name="lost", backend="gke", resources={"gpu": 1, "gpu_type": "nvidia-l4"})
    ref = firestore.collection("jobs").document(lost["id"])
    wait_for(lambda: ref.get().to_dict().get("handle"))
    k8s_name = ref.get().to_dict()["handle"]["name"].split("/")[1]
    cloud.k8s.jobs()  # the first run exists; now forget the handle as if the launch had never been recorded
    ref.update({"handle": None, "launched_at": None, "admitted_at": datetime.now(UTC) - timedelta(seconds=30)})
    relaunched = wait_for(
        lambda: (tick(publisher, "jobs-reconcile"), time.sleep(0.5), job(api, lost["id"]))[-1]["handle"], timeout=30
    )
    assert relaunched["name"].endswith(k8s_name)
    same = [j for j in cloud.k8s.jobs(namespace) if j["metadata"]["name"] == k8s_name]
    assert len(same) == 1  # the retried launch found the run it started: never a second one
    for job_id in (retried["id"], lost["id"]):
        api.send("POST", f"/v1/jobs/{job_id}/cancel", {})


def test_progress_reports_are_idempotent_and_unknown_jobs_are_rejected(
    api: Api, publisher: Any, agent: str, firestore: Any, stack: Any, tenant: str, agent_key: AgentKey
) -> None:
    created = submit(
        api, agent, name="reports", training_config={**FAST, "step_sleep_s": 1}, hyperparameters={"epochs": 60}
    )
    now = datetime.now(UTC)

    def report(seq: int, step: int) -> JobProgress:
        return JobProgress(
            agent_id=agent,
            job_id=created["id"],
            seq=seq,
            at=now,
            phase="progress",
            step=step,
            metrics={"loss": 1 / step},
        )

    key = job_key(stack, created["id"])
    wait_for(lambda: job(api, created["id"])["handle"])
    big = 2**53 - 100  # above any clock-based seq of the real run (µs), and still signable (RFC 8785)
    publish(publisher, report(big + 2, 50), signer=key, tenant=tenant)
    wait_for(lambda: (job(api, created["id"])["progress"] or {}).get("step") == 50)
    publish(publisher, report(big + 2, 50), signer=key, tenant=tenant)  # a redelivery
    publish(publisher, report(big + 1, 40), signer=key, tenant=tenant)  # late and reordered
    # Not the job's key: unsigned, or signed by the agent's own key (the job's key alone proves a report).
    publish(publisher, report(big + 3, 55), signed=False)
    publish(publisher, report(big + 4, 56), signer=agent_key, tenant=tenant)
    for code in ("unsigned", "unknown_key"):
        assert wait_for(lambda c=code: api.get("/v1/rejections", code=c, claimed_agent_id=agent).json()["items"])
    assert job(api, created["id"])["progress"]["step"] == 50
    stranger = JobProgress(agent_id=agent, job_id="j-00000000000000000000", seq=1, at=now, phase="started")
    publish(publisher, stranger, signer=key, tenant=tenant)
    rejected = wait_for(lambda: api.get("/v1/rejections", code="unknown_job", agent_id=agent).json()["items"])
    assert "does not exist" in rejected[0]["reason"]
    api.send("POST", f"/v1/jobs/{created['id']}/cancel", {})


def test_slack_users_train_list_and_cancel_jobs(
    api: Api, agent: str, tenant: str, slack_app: SlackApp, slack: Slack
) -> None:
    reply = slack_app.command(f"train {agent} slack-run cpu=2 memory=4 hours=0.5 priority=8", OPERATOR)
    text = json.dumps(reply)
    assert reply["response_type"] == "in_channel" and "slack-run" in text and "local" in text
    listed = api.get("/v1/jobs", agent_id=agent).json()["items"]
    assert len(listed) == 1 and listed[0]["requester"] == OPERATOR and listed[0]["requested_via"] == f"slack:{OPERATOR}"
    job_id = listed[0]["id"]
    shown = json.dumps(slack_app.command(f"job {job_id}", OPERATOR))
    assert job_id in shown and "priority 8" in shown
    assert job_id in json.dumps(slack_app.command(f"jobs {agent}", OPERATOR))
    bad = json.dumps(slack_app.command(f"train {agent} x gpus=2", OPERATOR))
    assert "unknown option" in bad and "gpu_type" in bad
    cancelled = json.dumps(slack_app.command(f"cancel {job_id} not needed", OPERATOR))
    assert "cancelled" in cancelled
    assert job(api, job_id)["state"] == "cancelled"
    # The requester hears how it ended, by direct message.
    assert wait_for(lambda: slack.about(job_id, "chat.postMessage"))


def test_operator_keys_submit_as_themselves_and_see_only_their_tenant(
    api: Api, agent: str, tenant: str, stack: Any, publisher: Any, firestore: Any
) -> None:
    def key(name: str, role: str, scope: str) -> str:
        return make_key(stack, name, role, scope)

    operator = key(f"ops-{tenant}", "operator", tenant)
    body = {"agent_id": agent, "name": "mine", "resources": {"gpu": 1}, "training_config": FAST}
    other = api.send("POST", "/v1/jobs", {**body, "requester": "someone@example.com"}, key=operator)
    assert other.status_code == 403 and f"submits as api:ops-{tenant}" in other.json()["error"]["reason"]
    mine = api.send("POST", "/v1/jobs", body, key=operator)
    assert mine.status_code == 200, mine.text
    assert mine.json()["requester"] == f"api:ops-{tenant}"
    # A key of another tenant sees and cancels nothing of this one.
    stranger = key(f"ops-{tenant}-x", "operator", f"{tenant}x")
    assert api.get(f"/v1/jobs/{mine.json()['id']}", key=stranger).status_code == 404
    assert api.send("POST", f"/v1/jobs/{mine.json()['id']}/cancel", {}, key=stranger).status_code == 404
    assert api.get("/v1/jobs", key=stranger).json()["items"] == []
    image_only = api.send("POST", "/v1/jobs", {**body, "name": "img", "image": "python:3.12"}, key=operator)
    assert image_only.status_code == 400 and "runs a command, not an image" in image_only.json()["error"]["reason"]
    api.send("POST", f"/v1/jobs/{mine.json()['id']}/cancel", {})


def test_cancelling_a_job_that_awaits_approval_withdraws_its_request(
    api: Api, agent: str, tenant: str, slack: Slack
) -> None:
    assert (
        api.send(
            "PUT", f"/v1/tenants/{tenant}/jobs", {"approval_threshold_usd": 0.5, "backends": ["gke", "local"]}
        ).status_code
        == 200
    )
    asked = submit(
        api, agent, name="big", backend="gke", resources={"gpu": 1, "gpu_type": "nvidia-l4"}, max_runtime_s=7200
    )
    assert asked["state"] == "awaiting_approval"
    approval_message(slack, asked["approval_id"])
    cancelled = api.send("POST", f"/v1/jobs/{asked['id']}/cancel", {"reason": "not needed"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    closed = api.get(f"/v1/approvals/{asked['approval_id']}").json()
    assert closed["state"] == "expired" and "Withdrawn: the job was cancelled by api:" in closed["applied"]
    # Its message is edited: no Approve button is left to click.
    edited = wait_for(lambda: slack.about(asked["approval_id"], "chat.update"))
    assert "Withdrawn" in json.dumps(edited[-1]["params"])
