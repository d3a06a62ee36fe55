"""The GKE node pools (terraform/gke.tf) and the backend policy agree: every (accelerator, spot or on
demand, GPUs per node) the policy can send to GKE, priced on a machine of the price table, has a node pool
of that machine and capacity that the training Job's selectors land on.

HCL is parsed (python-hcl2), not planned (no ``terraform init`` here): the pools' ``for_each`` is evaluated
by :func:`deployed` after the same rule the locals spell out, and the test checks that the locals still
spell that rule.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hcl2
import pytest

from shared.domain import job_costs, job_policy
from shared.domain.jobs import Job, JobResources, JobsConfig
from shared.domain.run_phase import Backend
from shared.launchers import gke_manifest
from shared.launchers.base import LaunchSpec
from shared.store import price_files
from shared.training import launch, submit

TF = Path(__file__).resolve().parents[2] / "terraform"
PRICES = price_files.machine_prices()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MACHINE = "node.kubernetes.io/instance-type"


def _unquote(value: str) -> str:
    return value.strip('"')


def _plain(value: Any) -> Any:
    """python-hcl2's values without its quotes and block markers."""
    if isinstance(value, str):
        return _unquote(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_unquote(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    return value


@pytest.fixture(scope="module")
def gke() -> dict[str, Any]:
    with (TF / "gke.tf").open() as handle:
        return hcl2.load(handle)


@pytest.fixture(scope="module")
def shapes(gke: dict[str, Any]) -> dict[str, dict[str, Any]]:
    local = next(block for block in gke["locals"] if "machine_shapes" in block)
    return dict(_plain(local["machine_shapes"]))


@pytest.fixture(scope="module")
def gpu_types() -> list[str]:
    with (TF / "variables.tf").open() as handle:
        variables = hcl2.load(handle)["variable"]
    found = next(_plain(block)["gpu_types"] for block in variables if '"gpu_types"' in block or "gpu_types" in block)
    return list(found["default"])


def deployed(shapes: dict[str, dict[str, Any]], gpu_types: list[str]) -> set[tuple[str, bool]]:
    """(machine type, spot) of every pool the locals make: each machine of an accelerator in ``gpu_types``
    and each CPU machine, spot and on demand."""
    return {
        (machine, spot)
        for machine, shape in shapes.items()
        for spot in (True, False)
        if (shape["accelerator"] is None or shape["accelerator"] in gpu_types)
        and (spot or machine not in job_costs.SPOT_ONLY_MACHINES)
    }


def _machine(price_name: str) -> str:
    """The GKE machine type of a price-table machine (``n1-standard-4+t4`` is an n1-standard-4 with a T4)."""
    return price_name.split("+", 1)[0]


def test_the_locals_make_a_spot_and_an_on_demand_pool_per_machine(gke: dict[str, Any]) -> None:
    local = next(block for block in gke["locals"] if "gpu_pools" in block)
    for name in ("gpu_pools", "cpu_pools"):
        rule = local[name]
        assert 'setproduct(keys(local.machine_shapes), ["spot", "on-demand"])' in rule
        assert 'spot = pair[1] == "spot"' in rule
    assert "contains(var.gpu_types" in local["gpu_pools"]
    assert '!(pair[1] == "on-demand" && contains(local.spot_only_machines, pair[0]))' in local["gpu_pools"]
    assert set(_plain(local["spot_only_machines"])) == job_costs.SPOT_ONLY_MACHINES
    pools = {
        _unquote(name): body
        for block in gke["resource"]
        for rtype, named in block.items()
        if _unquote(rtype) == "google_container_node_pool"
        for name, body in named.items()
    }
    assert pools["gpu"]["for_each"] == "${local.gpu_pools}" and pools["cpu"]["for_each"] == "${local.cpu_pools}"
    for body in pools.values():
        config = body["node_config"][0]
        assert config["machine_type"] == "${each.value.machine_type}" and config["spot"] == "${each.value.spot}"
        assert body["autoscaling"][0]["total_min_node_count"] == 0  # idle pools cost nothing
    accelerator = pools["gpu"]["node_config"][0]["guest_accelerator"][0]
    assert (accelerator["type"], accelerator["count"]) == ("${each.value.accelerator}", "${each.value.gpus}")
    # The only taint is the GPU one, which the training Job tolerates.
    assert _plain(pools["gpu"]["node_config"][0]["taint"]) == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
    ]
    assert "taint" not in pools["cpu"]["node_config"][0]
    assert gke_manifest.GPU_TOLERATION["key"] == "nvidia.com/gpu"


def test_every_machine_of_the_price_table_is_a_shape_with_its_accelerator(shapes: dict[str, dict[str, Any]]) -> None:
    expected = {
        _machine(name): {"accelerator": family.gpu_type, "gpus": shape[2]}
        for family in PRICES.families.values()
        for name, shape in family.shapes.items()
    }
    assert shapes == expected


def test_the_default_gpu_types_are_the_l4_only_and_the_example_gives_zones_for_its_types(gpu_types: list[str]) -> None:
    """40 GPU pools by default would multiply gpu_pool_max_nodes 40 times and need every GPU's zones."""
    assert gpu_types == ["nvidia-l4"]
    with (TF / "example.tfvars").open() as handle:
        example = _plain(hcl2.load(handle))
    assert set(example["gpu_types"]) <= set(example["gpu_zones"])


def test_every_gpu_pool_needs_its_accelerators_zones(gke: dict[str, Any]) -> None:
    pool = next(
        named['"gpu"'] for block in gke["resource"] for rtype, named in block.items()
        if _unquote(rtype) == "google_container_node_pool" and '"gpu"' in named
    )  # fmt: skip
    [lifecycle] = pool["lifecycle"]
    [precondition] = lifecycle["precondition"]
    assert precondition["condition"] == "${length(lookup(var.gpu_zones, each.value.accelerator, [])) > 0}"
    assert pool["node_locations"] == "${lookup(var.gpu_zones, each.value.accelerator, null)}"


def test_the_functions_get_the_deployed_gpu_types(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 'FLEET_GKE_GPU_TYPES            = join(",", var.gpu_types)' in (TF / "locals.tf").read_text()
    monkeypatch.setenv("FLEET_GKE_GPU_TYPES", "nvidia-l4, nvidia-tesla-t4")
    assert submit.gke_gpu_types() == {"nvidia-l4", "nvidia-tesla-t4"}
    monkeypatch.setenv("FLEET_GKE_GPU_TYPES", "")
    assert submit.gke_gpu_types() == frozenset()
    monkeypatch.delenv("FLEET_GKE_GPU_TYPES")
    assert submit.gke_gpu_types() is None


def test_the_manifest_selects_the_labels_gke_gives_the_pools() -> None:
    assert gke_manifest.ACCELERATOR_SELECTOR == "cloud.google.com/gke-accelerator"
    assert gke_manifest.SPOT_SELECTOR == "cloud.google.com/gke-spot"
    assert gke_manifest.MACHINE_SELECTOR == MACHINE


CPUS = (1, 4, 8, 12, 16, 24, 32, 48, 96, 104, 208)
GPUS = (1, 2, 4, 8)


@pytest.mark.parametrize("deploy", ["default", "all"])
def test_every_job_the_policy_sends_to_gke_has_a_pool(
    shapes: dict[str, dict[str, Any]], gpu_types: list[str], deploy: str
) -> None:
    """With the default gpu_types and with every type deployed (FLEET_GKE_GPU_TYPES tells the policy)."""
    if deploy == "all":
        gpu_types = list(job_costs.GPU_TYPES)
    pools = deployed(shapes, gpu_types)
    config = JobsConfig(backends=[Backend.GKE])
    checked = 0
    for gpu_type, gpus, spot, cpu in itertools.product([None, *job_costs.GPU_TYPES], GPUS, (True, False), CPUS):
        gpu = gpus if gpu_type else 0
        resources = JobResources(cpu=cpu, memory_gb=cpu * 3.5, gpu=gpu, gpu_type=gpu_type, spot=spot)
        try:
            backend, _ = job_policy.choose(resources, 3600, None, config, prices=PRICES, gpu_types=gpu_types)
        except job_policy.NoBackend:
            continue  # refused at submission: nothing is scheduled
        assert backend is Backend.GKE
        name, _family = job_costs.machine_for(
            resources.cpu, resources.memory_gb, resources.gpu, resources.gpu_type, prices=PRICES
        )
        assert (_machine(name), spot) in pools, f"no {'spot' if spot else 'on-demand'} pool of {name} for {resources}"
        shape = shapes[_machine(name)]
        assert shape["gpus"] >= resources.gpu
        # The Job built for it lands on that pool and on no other.
        pod = _pod(resources)
        landing = [pool for pool in sorted(pools) if _lands(pod, pool, shapes)]
        assert landing == [(_machine(name), spot)], f"{resources} lands on {landing}"
        checked += 1
    assert checked > 100


def _pod(resources: JobResources) -> dict[str, Any]:
    """The pod spec of the Job launched for a GKE job with ``resources`` (estimate, spec and manifest)."""
    res = resources
    estimate = job_costs.estimate("gke", res.cpu, res.memory_gb, res.gpu, res.gpu_type, res.spot, 3600, prices=PRICES)
    job = Job.model_validate(
        {"id": "j-1", "tenant": "acme", "agent_id": "a", "requester": "api:k", "requested_via": "api:k", "name": "t",
         "resources": resources.model_dump(), "priority": 5, "max_runtime_s": 3600, "backend": "gke",
         "estimate": estimate.to_doc(), "state": "admitted", "created_at": NOW, "updated_at": NOW}
    )  # fmt: skip
    spec = LaunchSpec(
        job_id=job.id, tenant=job.tenant, agent_id=job.agent_id, image="i", command=(), env={},
        cpu=resources.cpu, memory_gb=resources.memory_gb, gpu=resources.gpu,
        gpu_type=(resources.gpu_type or "nvidia-l4") if resources.gpu else None, spot=resources.spot,
        machine_type=launch.priced_machine(job),
    )  # fmt: skip
    pod: dict[str, Any] = gke_manifest.job_manifest(spec, "ns")["spec"]["template"]["spec"]
    return pod


def _lands(pod: dict[str, Any], pool: tuple[str, bool], shapes: dict[str, dict[str, Any]]) -> bool:
    """Whether the pod can be scheduled on a node of ``pool`` (machine, spot): the labels GKE gives its
    nodes match the pod's node selector and affinity, and the pod tolerates the GPU taint of a GPU node."""
    machine, spot = pool
    accelerator = shapes[machine]["accelerator"]
    labels = {gke_manifest.MACHINE_SELECTOR: machine}
    if accelerator:
        labels[gke_manifest.ACCELERATOR_SELECTOR] = accelerator
    if spot:
        labels[gke_manifest.SPOT_SELECTOR] = "true"
    if any(labels.get(key) != value for key, value in pod.get("nodeSelector", {}).items()):
        return False
    affinity = pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if affinity:
        [term] = affinity["nodeSelectorTerms"]
        for expression in term["matchExpressions"]:
            assert expression["operator"] == "DoesNotExist"
            if expression["key"] in labels:
                return False
    return not accelerator or gke_manifest.GPU_TOLERATION in pod.get("tolerations", [])


def test_a_job_without_the_selectors_would_land_on_several_pools(shapes: dict[str, dict[str, Any]]) -> None:
    """The check above can fail: an on-demand L4 job without the machine and spot rules fits every L4 pool."""
    pod = _pod(JobResources(cpu=4, memory_gb=14, gpu=1, gpu_type="nvidia-l4", spot=False))
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", MACHINE: "g2-standard-4"}
    bare = {key: value for key, value in pod.items() if key != "affinity"}
    bare["nodeSelector"] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    pools = deployed(shapes, ["nvidia-l4"])
    assert len([pool for pool in pools if _lands(bare, pool, shapes)]) == 2 * 8
    assert [pool for pool in pools if _lands(pod, pool, shapes)] == [("g2-standard-4", False)]


def test_a_narrower_gpu_types_leaves_jobs_without_a_pool(shapes: dict[str, dict[str, Any]]) -> None:
    """The check above can fail: with only L4 deployed, an A100 job has no pool."""
    pools = deployed(shapes, ["nvidia-l4"])
    assert ("a2-highgpu-1g", True) not in pools and ("g2-standard-4", False) in pools
