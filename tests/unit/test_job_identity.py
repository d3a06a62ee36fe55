"""The fleet's own events for training jobs (docs/security.md, "Jobs and settlements"): each job's own key
(derived at launch, its public half on the job, the private half handed to the run alone: process env,
Kubernetes Secret owned by the Job, Cloud Run env), reports proven by it while the job runs and with no
agent read, and job settlements signed by the fleet key, the only key believed for a ``job.`` batch."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, EventType, JobProgress, encode
from fleet_agent.identity import AgentKey, event_signing_bytes, verify
from fleet_agent.jobs import JobReporter

from shared.domain import identity
from shared.domain.identity import IdentityConfig, Policy
from shared.domain.jobs import Job, JobState
from shared.domain.rejections import Code, Rejected
from shared.launchers.gke_manifest import job_manifest, secret_manifest
from shared.pipeline.decoding import Decoded, PushedMessage, decode
from shared.platform import fleet_key
from shared.services import accounting
from shared.store import agents as agent_store
from shared.store import config
from shared.store import jobs as job_store
from shared.training import follow, job_keys, launch, progress
from tests.unit.test_identity_paths import _Counted, agent, batch
from tests.unit.test_identity_paths import store as store
from tests.unit.test_launcher_gke import gpu_spec
from tests.unit.test_sdk_client import FakePublisher

NOW = datetime.now(UTC).replace(microsecond=0)
FLEET = AgentKey.generate()


@pytest.fixture(autouse=True)
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentKey]:
    monkeypatch.setenv("FLEET_COMMAND_KEY", FLEET.to_pem().decode().replace("\n", "\\n"))
    fleet_key.reset()
    yield FLEET
    fleet_key.reset()


def job(**changes: Any) -> Job:
    data: dict[str, Any] = {
        "id": "j-00000001", "tenant": "acme", "agent_id": "chat-1", "requester": "api:ann", "requested_via": "api:ann",
        "name": "train", "resources": {}, "priority": 5, "max_runtime_s": 3600, "backend": "local",
        "estimate": {"usd": "1"}, "state": "running", "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    return Job.model_validate({**data, **changes})


def report(seq: int = 1, phase: str = "progress") -> JobProgress:
    return JobProgress.model_validate(
        {"job_id": "j-00000001", "agent_id": "chat-1", "phase": phase, "seq": seq, "at": NOW.isoformat()}
    )


def decoded(event: Any, signer: AgentKey | None, *, at: datetime = NOW, tenant: str = "acme") -> Decoded:
    body, attrs = encode(event, signer=signer, tenant=tenant if signer else None)
    return decode(PushedMessage("m-1", at, body, attrs), EventType(attrs["event_type"]))


# --- the job's key --------------------------------------------------------------------------------


def test_a_jobs_key_is_the_same_on_every_launch_attempt_and_differs_per_job_and_fleet() -> None:
    first = job_keys.for_job("j-00000001")
    assert first is not None
    assert job_keys.for_job("j-00000001").public_key == first.public_key  # type: ignore[union-attr]
    assert job_keys.for_job("j-00000002").public_key != first.public_key  # type: ignore[union-attr]
    assert job_keys.derive(AgentKey.generate().to_pem(), "j-00000001").public_key != first.public_key


def test_the_launch_writes_the_public_half_before_the_run_starts_and_hands_the_private_half_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = {"job": job(state="admitted")}
    order: list[str] = []

    def change(job_id: str, step: Any) -> Job | None:
        decided = step(stored["job"])
        if decided is not None:
            stored["job"] = decided[0]
            order.append("key" if decided[0].job_key and not decided[0].handle else "handle")
        return stored["job"]

    specs: list[Any] = []

    class Launcher:
        def launch(self, spec: Any) -> Any:
            assert stored["job"].job_key is not None, "the public half is stored before the run can report"
            order.append("launch")
            specs.append(spec)
            return launch.Handle("local", "/tmp/run", {})

    monkeypatch.setattr(job_store, "get", lambda job_id: stored["job"])
    monkeypatch.setattr(job_store, "change", change)
    monkeypatch.setattr(launch.registry, "get", lambda backend: Launcher())
    monkeypatch.setattr(launch.config, "jobs", lambda tenant: launch.domain.JobsConfig())
    assert launch.launch("j-00000001", NOW) == "launched"
    assert order == ["key", "launch", "handle"]
    spec = specs[0]
    assert "FLEET_JOB_KEY" not in spec.env and "FLEET_JOB_KEY" not in repr(spec), "secrets kept apart"
    env = {**spec.env, **spec.secrets}
    reporter = JobReporter.from_env(env, publisher=FakePublisher())
    assert reporter._signer is not None and reporter._signer.public_key == stored["job"].job_key
    reporter.close(timeout=1)


def test_on_gke_the_key_is_in_a_secret_owned_by_the_job_never_in_the_job() -> None:
    spec = replace(gpu_spec(), secrets={"FLEET_JOB_KEY": "-----BEGIN PRIVATE KEY-----\\nabc"})
    manifest = job_manifest(spec, "fleet-acme")
    env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "abc" not in json.dumps(manifest)
    ref = {"name": "FLEET_JOB_KEY", "valueFrom": {"secretKeyRef": {"name": spec.name, "key": "FLEET_JOB_KEY"}}}
    assert ref in env
    secret = secret_manifest(spec, "fleet-acme", "uid-1")
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": spec.name, "uid": "uid-1"}
    ]
    assert secret["stringData"] == {"FLEET_JOB_KEY": "-----BEGIN PRIVATE KEY-----\\nabc"}


def test_on_the_fake_cluster_the_secret_is_made_once_and_deleted_with_the_job(gke: Any, k8s: Any) -> None:
    from tests.unit.test_launcher_gke import new_launcher

    spec = replace(gpu_spec(), secrets={"FLEET_JOB_KEY": "pem"})
    launcher = new_launcher(gke)
    handle = launcher.launch(spec)
    again = new_launcher(gke).launch(spec)  # a retried launch (after a crash) adopts the Job and its Secret
    assert again == handle
    with k8s.state.lock:
        ((key, secret),) = k8s.state.secrets.items()
        owner = k8s.state.jobs[("fleet-acme", spec.name)]["metadata"]["uid"]
    assert key == ("fleet-acme", spec.name) and base64.b64decode(secret["data"]["FLEET_JOB_KEY"]) == b"pem"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == owner
    launcher.cancel(handle)
    with k8s.state.lock:
        assert k8s.state.secrets == {}, "deleted with its Job"


def test_a_secret_left_by_an_older_job_of_the_same_name_is_replaced_by_one_this_job_owns(gke: Any, k8s: Any) -> None:
    from tests.unit.test_launcher_gke import new_launcher

    spec = replace(gpu_spec(), secrets={"FLEET_JOB_KEY": "pem"})
    with k8s.state.lock:  # an older Job's Secret, not yet garbage-collected
        k8s.state.create_namespace({"metadata": {"name": "fleet-acme"}})
        k8s.state.create_secret("fleet-acme", secret_manifest(replace(spec, secrets={"FLEET_JOB_KEY": "old"}),
                                                              "fleet-acme", "uid-of-an-older-job"))  # fmt: skip
    new_launcher(gke).launch(spec)
    with k8s.state.lock:
        secret = k8s.state.secrets[("fleet-acme", spec.name)]
        owner = k8s.state.jobs[("fleet-acme", spec.name)]["metadata"]["uid"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == owner
    assert base64.b64decode(secret["data"]["FLEET_JOB_KEY"]) == b"pem"


# --- reports: the job's key, while the job runs ---------------------------------------------------


@pytest.fixture
def job_doc(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The job as stored; reports change it; no agent is read."""
    state: dict[str, Any] = {"job": job(job_key=job_keys.for_job("j-00000001").public_key)}  # type: ignore[union-attr]

    def change(job_id: str, step: Any) -> Job | None:
        decided = step(state["job"])
        if decided is not None:
            state["job"] = decided[0]
        return state["job"]

    monkeypatch.setattr(job_store, "change", change)
    monkeypatch.setattr(agent_store, "current", lambda *a: pytest.fail("no agent read for a report"))
    monkeypatch.setattr(agent_store, "read", lambda *a: pytest.fail("no agent read for a report"))
    monkeypatch.setattr(config, "identity", lambda tenant: IdentityConfig(policy=state.get("policy", Policy.REQUIRED)))
    return state


def test_a_report_signed_by_the_jobs_key_is_recorded(job_doc: dict[str, Any]) -> None:
    key = job_keys.for_job("j-00000001")
    progress.process(decoded(report(seq=3), key))
    assert job_doc["job"].progress["seq"] == 3


@pytest.mark.parametrize("signer", ["none", "agent", "other job"])
def test_a_report_not_signed_by_the_jobs_key_touches_nothing(job_doc: dict[str, Any], signer: str) -> None:
    key = {"none": None, "agent": AgentKey.generate(), "other job": job_keys.for_job("j-00000002")}[signer]
    job_doc["policy"] = Policy.OPTIONAL  # a job with a key signs, whatever the policy
    with pytest.raises(Rejected) as refused:
        progress.process(decoded(report(), key))
    assert refused.value.code in (Code.UNSIGNED, Code.UNKNOWN_KEY)
    assert job_doc["job"].progress is None


def test_a_finished_jobs_key_verifies_nothing_received_after_the_end(job_doc: dict[str, Any]) -> None:
    key = job_keys.for_job("j-00000001")
    job_doc["job"] = job_doc["job"].model_copy(update={"state": JobState.SUCCEEDED, "finished_at": NOW})
    progress.process(decoded(report(seq=1, phase="succeeded"), key, at=NOW - timedelta(seconds=1)))
    assert job_doc["job"].result is not None, "sent before the end, delivered after: still believed"
    with pytest.raises(Rejected) as refused:
        progress.process(decoded(report(seq=2), key, at=NOW + identity.JOB_KEY_GRACE))
    # Proven by the job's key, only late (a run still stopping): refused, never counted as a forgery.
    assert refused.value.code is Code.JOB_ENDED and not refused.value.unproven
    assert job_doc["job"].progress["seq"] == 1
    stranger = AgentKey.generate()  # someone else's key after the end: still an identity refusal
    with pytest.raises(Rejected) as forged:
        progress.process(decoded(report(seq=3), stranger, at=NOW + identity.JOB_KEY_GRACE))
    assert forged.value.unproven


def test_a_job_without_a_key_follows_the_tenants_policy(job_doc: dict[str, Any]) -> None:
    job_doc["job"] = job_doc["job"].model_copy(update={"job_key": None})
    with pytest.raises(Rejected) as refused:
        progress.process(decoded(report(), None))
    assert refused.value.code is Code.UNSIGNED
    job_doc["policy"] = Policy.OPTIONAL
    progress.process(decoded(report(), None))
    assert job_doc["job"].progress is not None


# --- settlements: the fleet key, for job.<id> batches only ----------------------------------------


def test_a_settlement_signed_by_the_fleet_is_counted_for_an_agent_with_its_own_key(store: dict[str, Any]) -> None:
    store["agent"] = agent(AgentKey.generate())
    with pytest.raises(_Counted):
        accounting.process_cost(decoded(batch(batch_id="job.j-00000001"), FLEET), unknown=_unknown)


@pytest.mark.parametrize("signer", ["agent", "none", "stranger"])
def test_a_job_batch_not_signed_by_the_fleet_is_refused(store: dict[str, Any], signer: str) -> None:
    key = AgentKey.generate()
    store["agent"] = agent(key if signer == "agent" else None)
    sign = {"agent": key, "none": None, "stranger": AgentKey.generate()}[signer]
    with pytest.raises(Rejected) as refused:  # an agent pre-empting its settlement's marker hides its spend
        accounting.process_cost(decoded(batch(batch_id="job.j-00000001"), sign), unknown=_unknown)
    assert refused.value.code in identity_codes() and store["counted"] == []


def test_the_fleet_key_proves_no_other_batch(store: dict[str, Any]) -> None:
    store["agent"] = agent(AgentKey.generate())
    with pytest.raises(Rejected) as refused:
        accounting.process_cost(decoded(batch(), FLEET), unknown=_unknown)
    assert refused.value.code is Code.UNKNOWN_KEY and store["counted"] == []


def test_the_settlement_the_tick_publishes_is_signed_by_the_fleet_over_the_jobs_tenant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[bytes, dict[str, str]]] = []

    class Client:
        def topic_path(self, project: str, topic: str) -> str:
            return f"projects/{project}/topics/{topic}"

        def publish(self, topic: str, data: bytes, **attrs: str) -> Any:
            sent.append((data, attrs))
            from concurrent.futures import Future

            done: Future[str] = Future()
            done.set_result("1")
            return done

    monkeypatch.setattr(follow.agent_commands, "publisher", lambda: Client())
    finished = job(state="succeeded", finished_at=NOW, cost_usd=Decimal("1.5"))
    follow.charge(finished)
    ((body, attrs),) = sent
    assert attrs["agent_id"] == "chat-1" and attrs["event_type"] == "cost"
    envelope = json.loads(body)
    assert envelope["data"]["batch_id"] == "job.j-00000001"
    signing = event_signing_bytes("cost", "chat-1", envelope["event_id"], "acme", envelope["data"])
    from fleet_agent.contracts import Signature

    assert verify(FLEET.public_key, Signature.model_validate(envelope["signature"]), signing)
    CostBatch.model_validate(envelope["data"])


def identity_codes() -> set[Code]:
    return {Code.UNSIGNED, Code.UNKNOWN_KEY, Code.BAD_SIGNATURE}


def _unknown(agent_id: str, at: datetime) -> Exception:
    return AssertionError(f"agent {agent_id} is known")


@pytest.fixture
def k8s() -> Iterator[Any]:
    from tests.fakes import fake_k8s

    fake = fake_k8s.start()
    yield fake
    fake.stop()


@pytest.fixture
def gke(k8s: Any) -> Iterator[Any]:
    from tests.fakes import fake_gke
    from tests.unit.test_launcher_gke import CLUSTER_PATH

    fake = fake_gke.start(clusters={CLUSTER_PATH: k8s.url})
    yield fake
    fake.stop()
