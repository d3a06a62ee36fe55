"""GkeLauncher through the real clients (google-cloud-container REST, kubernetes) against the two fakes."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials, Credentials

from shared.domain.run_phase import Phase
from shared.launchers.base import CONTAINER, Handle, LaunchError, LaunchSpec, NotOurs
from shared.launchers.gke import GkeLauncher
from shared.launchers.gke_manifest import job_manifest, namespace_for
from shared.launchers.gke_status import run_status
from tests.fakes import fake_gke, fake_k8s

ROOT = Path(__file__).resolve().parents[2]
PROJECT, LOCATION, CLUSTER = "fleet-demo", "us-central1", "training"
CLUSTER_PATH = f"projects/{PROJECT}/locations/{LOCATION}/clusters/{CLUSTER}"
NS = "fleet-acme"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"


def gpu_spec(**changes: Any) -> LaunchSpec:
    spec = LaunchSpec(
        job_id="job_7Hq2",
        tenant="acme",
        agent_id="trainer-1",
        image="us-docker.pkg.dev/fleet/train:1.4",
        command=("python", "-m", "train", "--epochs", "3"),
        env={"WANDB_MODE": "offline", "FLEET_JOB_ID": "job_7Hq2"},
        cpu=8,
        memory_gb=32,
        gpu=2,
        gpu_type="nvidia-l4",
        spot=True,
        max_runtime_s=7200,
        max_retries=2,
        keep_finished_s=3600,
        labels={"team": "research"},
    )
    return replace(spec, **changes)


def cpu_spec(**changes: Any) -> LaunchSpec:
    spec = LaunchSpec(
        job_id="job_cpu1",
        tenant="acme",
        agent_id="eval-2",
        image="python:3.12-slim",
        command=(),
        env={},
        cpu=0.5,
        memory_gb=1.5,
    )
    return replace(spec, **changes)


@pytest.fixture
def k8s() -> Iterator[fake_k8s.FakeKubernetes]:
    fake = fake_k8s.start()
    yield fake
    fake.stop()


@pytest.fixture
def gke(k8s: fake_k8s.FakeKubernetes) -> Iterator[fake_gke.FakeGke]:
    fake = fake_gke.start(clusters={CLUSTER_PATH: k8s.url})
    yield fake
    fake.stop()


_open: list[GkeLauncher] = []


def new_launcher(gke: fake_gke.FakeGke, **kwargs: Any) -> GkeLauncher:
    """A launcher on the fake cluster; each call is a new instance (as after a crash or in another function)."""
    kwargs.setdefault("credentials", AnonymousCredentials())
    launcher = GkeLauncher(PROJECT, LOCATION, CLUSTER, container_endpoint=gke.url, **kwargs)
    _open.append(launcher)
    return launcher


@pytest.fixture(autouse=True)
def _close_launchers() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


@pytest.fixture
def launcher(gke: fake_gke.FakeGke) -> GkeLauncher:
    return new_launcher(gke)


def created_jobs(k8s: fake_k8s.FakeKubernetes) -> list[dict[str, Any]]:
    """Job POSTs the API server accepted."""
    return [r for r in k8s.requests("POST") if r["path"].endswith("/jobs") and r["status"] == 201]


# --- the manifest -------------------------------------------------------------------------------


def test_gpu_spot_job_is_sent_exactly_as_job_manifest(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    spec = gpu_spec()
    handle = launcher.launch(spec)

    [post] = created_jobs(k8s)
    assert post["path"] == JOBS
    body = post["body"]
    assert body == job_manifest(spec, NS)
    labels = {"team": "research", "fleet-job-id": "job_7Hq2", "fleet-tenant": "acme", "fleet-agent-id": "trainer-1"}
    assert body["metadata"] == {"name": "fleet-job-7hq2", "namespace": NS, "labels": labels}
    job_spec = body["spec"]
    assert job_spec["backoffLimit"] == 2
    assert job_spec["activeDeadlineSeconds"] == 7200
    assert job_spec["ttlSecondsAfterFinished"] == 3600
    assert job_spec["podFailurePolicy"] == {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
    assert job_spec["template"]["metadata"]["labels"] == labels
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "affinity" not in pod  # spot
    [container] = pod["containers"]
    assert container == {
        "name": CONTAINER,
        "image": "us-docker.pkg.dev/fleet/train:1.4",
        "command": ["python", "-m", "train", "--epochs", "3"],
        "env": [{"name": "WANDB_MODE", "value": "offline"}, {"name": "FLEET_JOB_ID", "value": "job_7Hq2"}],
        "resources": {
            "requests": {"cpu": "8", "memory": "32Gi"},
            "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"},
        },
    }
    assert handle == Handle(
        "gke", f"{NS}/fleet-job-7hq2", {"cluster": CLUSTER_PATH, "namespace": NS, "job": "fleet-job-7hq2"}
    )
    # the tenant's namespace was created first, labelled as ours
    [ns_post] = k8s.requests("POST", "/api/v1/namespaces")
    assert ns_post["body"]["metadata"] == {
        "name": NS,
        "labels": {"app.kubernetes.io/managed-by": "agent-fleet-manager", "fleet-tenant": "acme"},
    }


def test_cpu_only_on_demand_job_has_no_gpu_or_spot_fields(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    launcher.launch(cpu_spec())

    [post] = created_jobs(k8s)
    pod = post["body"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert pod["affinity"] == NOT_SPOT  # on demand: never a spot node
    assert "tolerations" not in pod
    [container] = pod["containers"]
    assert "command" not in container  # the image's entrypoint
    assert "env" not in container
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1536Mi"},
        "limits": {"cpu": "500m", "memory": "1536Mi"},
    }


def test_spot_selector_only_when_spot() -> None:
    on_demand = job_manifest(gpu_spec(spot=False), NS)["spec"]["template"]["spec"]
    assert on_demand["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    spot_cpu = job_manifest(cpu_spec(spot=True), NS)["spec"]["template"]["spec"]
    assert spot_cpu["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert "tolerations" not in spot_cpu
    any_gpu = job_manifest(gpu_spec(gpu_type=None, spot=False), NS)["spec"]["template"]["spec"]
    assert "nodeSelector" not in any_gpu
    assert any_gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


NOT_SPOT = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"}]}
            ]
        }
    }
}


def test_an_on_demand_job_requires_a_node_that_is_not_spot_and_a_spot_job_does_not() -> None:
    """GKE labels spot nodes but does not taint them: without the affinity an on-demand job may land on one."""
    for spec in (gpu_spec(spot=False), cpu_spec(), gpu_spec(gpu_type=None, spot=False)):
        assert job_manifest(spec, NS)["spec"]["template"]["spec"]["affinity"] == NOT_SPOT
    for spec in (gpu_spec(spot=True), cpu_spec(spot=True)):
        assert "affinity" not in job_manifest(spec, NS)["spec"]["template"]["spec"]


def test_the_priced_machine_is_selected_by_instance_type() -> None:
    pod = job_manifest(gpu_spec(gpu=1, machine_type="g2-standard-4"), NS)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "node.kubernetes.io/instance-type": "g2-standard-4",
        "cloud.google.com/gke-spot": "true",
    }


@pytest.mark.parametrize(
    ("cpu", "memory_gb", "cpu_q", "memory_q"),
    [(1, 4, "1", "4Gi"), (0.3, 0.3, "300m", "308Mi"), (2.25, 7.5, "2250m", "7680Mi"), (16.0, 64.0, "16", "64Gi")],
)
def test_resource_quantities(cpu: float, memory_gb: float, cpu_q: str, memory_q: str) -> None:
    container = job_manifest(cpu_spec(cpu=cpu, memory_gb=memory_gb), NS)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": cpu_q, "memory": memory_q}


def test_a_spec_kubernetes_would_refuse_is_a_permanent_error(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes
) -> None:
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec(memory_gb=0))
    assert not info.value.transient and "memory_gb must be positive" in info.value.reason
    assert k8s.requests() == []


def test_fail_job_exit_codes_add_a_failjob_rule_that_skips_the_retries(
    gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    launcher = new_launcher(gke, fail_job_exit_codes=[42, 42])
    spec = gpu_spec(max_retries=5)
    handle = launcher.launch(spec)
    rules = created_jobs(k8s)[0]["body"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [42]},
    }

    k8s.set_running(NS, spec.name)
    pod = k8s.fail_pod(NS, spec.name, exit_code=42)
    status = launcher.status(handle)
    assert status.phase is Phase.FAILED
    assert status.message.startswith(
        f"PodFailurePolicy: Container {CONTAINER} for pod {NS}/{pod} failed with exit code 42"
    )


def test_namespace_per_tenant(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    launcher.launch(cpu_spec(job_id="j1", tenant="acme"))
    launcher.launch(cpu_spec(job_id="j2", tenant="acme"))
    launcher.launch(cpu_spec(job_id="j3", tenant="globex"))

    assert [r["path"] for r in created_jobs(k8s)] == [
        "/apis/batch/v1/namespaces/fleet-acme/jobs",
        "/apis/batch/v1/namespaces/fleet-acme/jobs",
        "/apis/batch/v1/namespaces/fleet-globex/jobs",
    ]
    assert k8s.namespaces() == ["fleet-acme", "fleet-globex"]
    # a namespace is created once per launcher, not before every launch
    assert len(k8s.requests("POST", "/api/v1/namespaces")) == 2


def test_existing_namespace_is_fine(gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes) -> None:
    k8s.add_namespace(NS)
    new_launcher(gke).launch(cpu_spec())
    assert [r["status"] for r in k8s.requests("POST", "/api/v1/namespaces")] == [409]
    assert len(created_jobs(k8s)) == 1


def test_namespace_names_are_valid_and_distinct() -> None:
    assert namespace_for("acme") == "fleet-acme"
    assert namespace_for("acme", "train-") == "train-acme"
    underscored, dashed = namespace_for("big_co"), namespace_for("big-co")
    assert dashed == "fleet-big-co"
    assert underscored.startswith("fleet-big-co-") and underscored != dashed
    long = namespace_for("t" * 63)
    assert len(long) <= 63 and long.startswith("fleet-ttt")
    for name in (underscored, long):
        assert all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in name)


def test_namespace_that_cannot_be_created_is_used_if_it_exists(
    gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    """The service account may lack the right to create namespaces: an admin-made one still works."""
    k8s.add_namespace(NS)
    k8s.fail_next(403, method="POST", path="/api/v1/namespaces")
    new_launcher(gke).launch(cpu_spec())
    assert len(created_jobs(k8s)) == 1


def test_namespace_that_cannot_be_created_and_does_not_exist_is_a_clear_permanent_error(
    gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    k8s.fail_next(403, method="POST", path="/api/v1/namespaces")
    with pytest.raises(LaunchError) as info:
        new_launcher(gke).launch(cpu_spec())
    assert not info.value.transient
    assert f"namespace {NS} does not exist and could not be created (403 Forbidden" in info.value.reason


# --- idempotency ----------------------------------------------------------------------------------


def test_launching_twice_and_after_a_crash_creates_one_job(gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes) -> None:
    spec = gpu_spec()
    first = new_launcher(gke).launch(spec)
    again = new_launcher(gke)
    second = again.launch(spec)
    third = again.launch(spec)  # a new instance: as after a crash between create and recording the handle

    assert first == second == third
    assert len(created_jobs(k8s)) == 1
    assert [r["status"] for r in k8s.requests("POST", JOBS)] == [201, 409, 409]
    assert len(k8s.jobs(NS)) == 1
    assert len(k8s.pods(NS, spec.name)) == 1


def test_a_job_of_that_name_owned_by_another_job_is_not_ours(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes
) -> None:
    spec = gpu_spec()
    k8s.create_job(NS, job_manifest(replace(spec, job_id="job_7hq2"), NS))  # same name, other job id

    with pytest.raises(NotOurs) as info:
        launcher.launch(spec)
    assert not info.value.transient
    assert "job_7hq2" in info.value.reason and "job_7Hq2" in info.value.reason
    job = k8s.job(NS, spec.name)
    assert job is not None and job["metadata"]["labels"]["fleet-job-id"] == "job_7hq2"


def test_conflict_for_a_job_deleted_meanwhile_is_transient(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    k8s.fail_next(409, method="POST", path="/jobs")  # the Job existed when created, gone when read
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec())
    assert info.value.transient
    assert "deleted meanwhile" in info.value.reason
    launcher.launch(cpu_spec())
    assert len(created_jobs(k8s)) == 1


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_transient(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes, status: int) -> None:
    k8s.fail_next(status, method="POST", path="/jobs")
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec())
    assert info.value.transient
    assert f"creating Job {NS}/fleet-job-cpu1" in info.value.reason and str(status) in info.value.reason
    assert launcher.launch(cpu_spec()).name == f"{NS}/fleet-job-cpu1"  # the retry works
    assert len(created_jobs(k8s)) == 1


@pytest.mark.parametrize(("status", "reason"), [(422, "Invalid"), (403, "Forbidden"), (400, "BadRequest")])
def test_client_errors_are_permanent(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes, status: int, reason: str
) -> None:
    k8s.fail_next(status, method="POST", path="/jobs")
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec())
    assert not info.value.transient
    assert f"{status} {reason}: injected failure {status}" in info.value.reason


def test_a_job_the_api_server_rejects_is_a_permanent_error_with_its_message(launcher: GkeLauncher) -> None:
    # Label values are cleaned before they are sent; a job id is sent as it is (the ownership label).
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec(job_id="job:cpu!"))
    assert not info.value.transient
    assert "422 Invalid" in info.value.reason and "metadata.labels[fleet-job-id]" in info.value.reason


def test_unreachable_api_server_is_transient(gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes) -> None:
    gke.add_cluster(PROJECT, LOCATION, CLUSTER, "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(LaunchError) as info:
        new_launcher(gke).launch(cpu_spec())
    assert info.value.transient
    assert "cannot reach the Kubernetes API" in info.value.reason


def test_unknown_cluster_is_a_permanent_error_naming_it(gke: fake_gke.FakeGke) -> None:
    launcher = GkeLauncher(PROJECT, LOCATION, "nope", container_endpoint=gke.url, credentials=AnonymousCredentials())
    _open.append(launcher)
    with pytest.raises(LaunchError) as info:
        launcher.launch(cpu_spec())
    assert not info.value.transient
    assert f"GKE cluster projects/{PROJECT}/locations/{LOCATION}/clusters/nope not found" in info.value.reason
    assert gke.requests()[-1]["path"] == f"/v1/projects/{PROJECT}/locations/{LOCATION}/clusters/nope"


def test_gke_api_refusal_is_permanent_and_a_brief_outage_is_retried(
    gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    gke.fail_next(403)
    with pytest.raises(LaunchError) as info:
        new_launcher(gke).launch(cpu_spec())
    assert not info.value.transient and "403" in info.value.reason

    gke.fail_next(503)  # google-api-core's default retry for clusters.get absorbs one 503
    new_launcher(gke).launch(cpu_spec())
    assert [r["status"] for r in gke.requests()] == [403, 503, 200]
    assert len(created_jobs(k8s)) == 1


def test_cluster_is_looked_up_once_per_launcher(launcher: GkeLauncher, gke: fake_gke.FakeGke) -> None:
    handle = launcher.launch(cpu_spec())
    launcher.status(handle)
    launcher.cancel(handle)
    assert len(gke.requests()) == 1


def test_cluster_endpoint_and_ca_certificate_configure_the_client(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes
) -> None:
    config = launcher._api().configuration
    assert config.host == k8s.url  # an endpoint with a scheme is used as is (a bare IP gets https://)
    assert Path(config.ssl_ca_cert).read_text() == fake_gke.FAKE_CA_PEM
    path = config.ssl_ca_cert
    launcher.close()
    assert not Path(path).exists()


def test_handle_of_another_cluster_is_refused(launcher: GkeLauncher) -> None:
    handle = Handle("gke", f"{NS}/x", {"cluster": "projects/p/locations/l/clusters/other", "namespace": NS, "job": "x"})
    with pytest.raises(LaunchError) as info:
        launcher.status(handle)
    assert not info.value.transient and "other" in info.value.reason


# --- credentials ----------------------------------------------------------------------------------


class RotatingCredentials(Credentials):
    """Tokens tok-1, tok-2...: each refresh issues the next, valid for an hour."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"tok-{self.refreshes}"
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)


def test_bearer_token_from_the_credentials_is_refreshed_when_expired(
    gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    credentials = RotatingCredentials()
    launcher = new_launcher(gke, credentials=credentials)
    handle = launcher.launch(cpu_spec())
    launcher.status(handle)
    assert credentials.refreshes == 1
    credentials.expiry = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    launcher.status(handle)

    assert credentials.refreshes == 2
    tokens = [r["authorization"] for r in k8s.requests()]
    assert tokens[:4] == ["Bearer tok-1"] * 4  # namespace, job, then status: job and pods
    assert tokens[4:] == ["Bearer tok-2"] * 2
    assert gke.requests()[0]["authorization"] == "Bearer tok-1"  # the GKE API got the same credentials


def test_rejected_token_is_transient(gke: fake_gke.FakeGke) -> None:
    guarded = fake_k8s.start(token="the-right-one")
    try:
        gke.add_cluster(PROJECT, LOCATION, CLUSTER, guarded.url)
        with pytest.raises(LaunchError) as info:
            new_launcher(gke, credentials=RotatingCredentials()).launch(cpu_spec())
        assert info.value.transient and "401" in info.value.reason
    finally:
        guarded.stop()


# --- status ---------------------------------------------------------------------------------------


def test_status_pending_running_succeeded(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    spec = gpu_spec()
    handle = launcher.launch(spec)

    pending = launcher.status(handle)
    assert pending.phase is Phase.PENDING
    job = k8s.job(NS, spec.name)
    assert job is not None
    assert pending.started_at == datetime.fromisoformat(job["status"]["startTime"])

    k8s.set_running(NS, spec.name)
    running = launcher.status(handle)
    assert running.phase is Phase.RUNNING
    assert running.finished_at is None and running.preemptions == () and running.failed_attempts == 0

    k8s.complete(NS, spec.name)
    done = launcher.status(handle)
    assert done.phase is Phase.SUCCEEDED
    job = k8s.job(NS, spec.name)
    assert job is not None
    assert done.finished_at == datetime.fromisoformat(job["status"]["completionTime"])
    # status reads the Job and lists its pods by the Job controller's label
    pod_reads = k8s.requests("GET", f"/api/v1/namespaces/{NS}/pods")
    assert {r["query"]["labelSelector"] for r in pod_reads} == {f"job-name={spec.name}"}


def test_status_failed_with_reason(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    spec = gpu_spec()
    handle = launcher.launch(spec)
    k8s.set_running(NS, spec.name)
    k8s.fail(NS, spec.name, "DeadlineExceeded", "Job was active longer than specified deadline")

    status = launcher.status(handle)
    assert status.phase is Phase.FAILED
    assert status.message == "DeadlineExceeded: Job was active longer than specified deadline"
    assert status.finished_at is not None


def test_failed_attempts_count_until_the_backoff_limit(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    spec = gpu_spec(max_retries=1)
    handle = launcher.launch(spec)
    k8s.set_running(NS, spec.name)
    k8s.fail_pod(NS, spec.name)

    retrying = launcher.status(handle)
    assert (retrying.phase, retrying.failed_attempts) == (Phase.PENDING, 1)

    k8s.set_running(NS, spec.name)
    k8s.fail_pod(NS, spec.name)
    failed = launcher.status(handle)
    assert failed.phase is Phase.FAILED
    assert failed.message == "BackoffLimitExceeded: Job has reached the specified backoff limit"
    assert failed.failed_attempts == 2


def test_preemption_is_recorded_once_per_pod_and_is_not_a_failed_attempt(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes
) -> None:
    spec = gpu_spec(max_retries=0)  # without the Ignore rule, one preemption would fail the Job
    handle = launcher.launch(spec)
    k8s.set_running(NS, spec.name)
    first = k8s.preempt(NS, spec.name)

    after_one = launcher.status(handle)
    assert after_one.phase is Phase.PENDING  # a replacement pod waits for a node
    assert [p.key for p in after_one.preemptions] == [first]
    [preemption] = after_one.preemptions
    [pod] = [p for p in k8s.pods(NS, spec.name) if p["metadata"]["name"] == first]
    [condition] = [c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert preemption.at == datetime.fromisoformat(condition["lastTransitionTime"])
    assert preemption.detail == "TerminationByKubelet: Pod was terminated in response to imminent node shutdown."
    assert after_one.failed_attempts == 0

    k8s.set_running(NS, spec.name)
    second = k8s.preempt(NS, spec.name)
    k8s.set_running(NS, spec.name)
    once, twice = launcher.status(handle), launcher.status(handle)
    assert once == twice
    assert sorted(p.key for p in twice.preemptions) == sorted([first, second])
    assert (twice.phase, twice.failed_attempts) == (Phase.RUNNING, 0)

    k8s.complete(NS, spec.name)
    assert launcher.status(handle).phase is Phase.SUCCEEDED


def test_pods_left_by_an_earlier_job_of_the_same_name_are_not_counted(
    launcher: GkeLauncher, gke: fake_gke.FakeGke, k8s: fake_k8s.FakeKubernetes
) -> None:
    spec = gpu_spec()
    handle = launcher.launch(spec)
    k8s.set_running(NS, spec.name)
    k8s.preempt(NS, spec.name)
    # someone deletes the Job without propagation (the Job API's legacy default: Orphan): its pods stay
    request = urllib.request.Request(f"{k8s.url}{JOBS}/{spec.name}", method="DELETE")
    urllib.request.urlopen(request).close()
    assert launcher.status(handle).phase is Phase.MISSING

    relaunched = new_launcher(gke).launch(spec)
    status = launcher.status(relaunched)
    assert status.preemptions == () and status.phase is Phase.PENDING


def test_status_without_pod_failure_policy_does_not_count_preempted_pods_as_failures() -> None:
    """A Job made without our podFailurePolicy (by hand, or an older launcher): the controller counted
    the preempted pods in status.failed, so they are taken out again."""
    from kubernetes import client as k8s_client

    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    job = k8s_client.V1Job(
        metadata=k8s_client.V1ObjectMeta(name="fleet-x", uid="u1"),
        status=k8s_client.V1JobStatus(active=1, failed=3, start_time=now),
    )
    preempted = k8s_client.V1Pod(
        metadata=k8s_client.V1ObjectMeta(name="fleet-x-abcde"),
        status=k8s_client.V1PodStatus(
            phase="Failed",
            conditions=[
                k8s_client.V1PodCondition(
                    type="DisruptionTarget", status="True", reason="PreemptionByScheduler", last_transition_time=now
                )
            ],
        ),
    )
    status = run_status(job, [preempted])
    assert status.failed_attempts == 2
    assert [(p.key, p.at, p.detail) for p in status.preemptions] == [("fleet-x-abcde", now, "PreemptionByScheduler")]
    assert status.phase is Phase.PENDING


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_deletes_the_job_and_its_pods_and_cancelling_again_is_fine(
    launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes
) -> None:
    spec = gpu_spec()
    handle = launcher.launch(spec)
    k8s.set_running(NS, spec.name)

    launcher.cancel(handle)
    launcher.cancel(handle)

    deletes = k8s.requests("DELETE")
    assert [(r["path"], r["query"], r["status"]) for r in deletes] == [
        (f"{JOBS}/{spec.name}", {"propagationPolicy": "Background"}, 200),
        (f"{JOBS}/{spec.name}", {"propagationPolicy": "Background"}, 404),
    ]
    assert k8s.jobs(NS) == [] and k8s.pods(NS) == []
    assert launcher.status(handle).phase is Phase.MISSING


def test_cancel_error_is_reported(launcher: GkeLauncher, k8s: fake_k8s.FakeKubernetes) -> None:
    handle = launcher.launch(cpu_spec())
    k8s.fail_next(503, method="DELETE")
    with pytest.raises(LaunchError) as info:
        launcher.cancel(handle)
    assert info.value.transient
    assert len(k8s.jobs(NS)) == 1


# --- cold start -----------------------------------------------------------------------------------


def test_importing_the_module_imports_neither_client() -> None:
    code = (
        "import sys, shared.launchers.gke\n"
        "heavy = [m for m in sys.modules if m.startswith(('kubernetes', 'google.cloud.container'))]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
