"""The prices of training runs: the machine price table (data, shipped in shared/data/ beside the model
prices), the machine a request lands on, the hourly price and the estimate, Cloud Run's billed sizes, a
tenant's price factor. (Moved from test_jobs_domain.py when the table became data.)"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.domain import job_costs
from shared.domain.job_costs import Estimate, MachinePrices, NoMachine
from shared.store import price_files

#: The table the deployment ships (shared/data/machine_prices.yaml).
PRICES = price_files.machine_prices()


def test_gpu_types_are_the_gpu_families_accelerators() -> None:
    assert job_costs.GPU_TYPES == ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-h100-80gb")
    assert tuple(f.gpu_type for f in PRICES.families.values() if f.gpu_type) == job_costs.GPU_TYPES


def test_the_machine_prices_ship_as_data() -> None:
    assert price_files.MACHINE_PRICES.parent == price_files.DATA_DIR
    assert price_files.machine_prices() is PRICES  # read once per instance
    assert PRICES.cloud_run.gpu_h == Decimal("0.6721") and PRICES.families["e2-standard"].on_demand.gpu_h == 0


def test_a_machine_table_that_drops_or_doubles_a_gpu_type_is_refused() -> None:
    data = PRICES.model_dump()
    dropped = {**data, "families": {n: f for n, f in data["families"].items() if f["gpu_type"] != "nvidia-l4"}}
    with pytest.raises(ValidationError, match="one family must carry each of nvidia-l4"):
        MachinePrices.model_validate(dropped)
    doubled = {**data, "families": {**data["families"], "e2-other": data["families"]["e2-standard"]}}
    with pytest.raises(ValidationError, match="and one family no GPU"):
        MachinePrices.model_validate(doubled)


@pytest.mark.parametrize("family", list(PRICES.families), ids=list(PRICES.families))
def test_spot_is_cheaper_than_on_demand_for_every_family(family: str) -> None:
    fam = PRICES.families[family]
    vcpu, gb, gpus = next(iter(fam.shapes.values()))
    on_demand = job_costs.hourly("gke", vcpu, gb, gpus, fam.gpu_type, False, prices=PRICES)
    spot = job_costs.hourly("gke", vcpu, gb, gpus, fam.gpu_type, True, prices=PRICES)
    assert Decimal(0) < spot.hourly_usd < on_demand.hourly_usd
    assert (spot.spot, on_demand.spot) == (True, False)
    assert spot.machine == on_demand.machine


@pytest.mark.parametrize(
    ("request_", "machine"),
    [
        ((8, 30, 1, "nvidia-l4"), "g2-standard-8"),
        ((4, 16, 1, "nvidia-l4"), "g2-standard-4"),
        ((2, 4, 1, None), "g2-standard-4"),  # a GPU without a type: an L4
        ((2, 4, 2, "nvidia-l4"), "g2-standard-24"),
        ((2, 4, 3, "nvidia-l4"), "g2-standard-48"),
        ((2, 4, 0, None), "e2-standard-2"),
        ((3, 4, 0, None), "e2-standard-4"),
        ((2, 20, 0, None), "e2-standard-8"),
        ((2, 4, 1, "nvidia-tesla-t4"), "n1-standard-4+t4"),
        ((2, 4, 2, "nvidia-tesla-t4"), "n1-standard-16+2xt4"),
        ((2, 4, 2, "nvidia-tesla-a100"), "a2-highgpu-2g"),
        ((2, 4, 1, "nvidia-h100-80gb"), "a3-highgpu-1g"),
    ],
)
def test_machine_for_picks_the_smallest_fitting_machine(request_: tuple[Any, ...], machine: str) -> None:
    name, family = job_costs.machine_for(*request_, prices=PRICES)
    assert name == machine
    assert name in family.shapes


def test_machine_for_picks_the_cheapest_fitting_machine_counting_its_gpus() -> None:
    name, _family = job_costs.machine_for(20, 80, 1, "nvidia-l4", prices=PRICES)
    cheaper = job_costs.hourly("gke", 20, 80, 1, "nvidia-l4", False, prices=PRICES)
    assert name == "g2-standard-32"
    assert cheaper.hourly_usd == Decimal("1.847680")


def test_gke_hourly_prices_the_whole_machine() -> None:
    on_demand = job_costs.hourly("gke", 8, 30, 1, "nvidia-l4", False, prices=PRICES)
    assert on_demand == Estimate("gke", "g2-standard-8", False, Decimal("0.881920"), Decimal(1))
    # 8 x 0.01096 + 32 x 0.00128 + 1 x 0.224
    assert job_costs.hourly("gke", 8, 30, 1, "nvidia-l4", True, prices=PRICES).hourly_usd == Decimal("0.352640")
    # a request smaller than the machine pays for the machine
    assert job_costs.hourly("gke", 5, 17, 1, "nvidia-l4", False, prices=PRICES).hourly_usd == Decimal("0.881920")


def test_estimate_is_the_hourly_price_over_the_max_runtime() -> None:
    est = job_costs.estimate("gke", 8, 30, 1, "nvidia-l4", False, 7200, prices=PRICES)
    assert (est.hourly_usd, est.hours) == (Decimal("0.881920"), Decimal("2.0000"))
    assert est.usd == Decimal("1.7638")  # 1.76384 quantized to 4 places
    assert est.nanos == 1_763_800_000
    assert job_costs.estimate("gke", 8, 30, 1, "nvidia-l4", False, 5400, prices=PRICES).usd == Decimal(
        "1.3229"
    )  # 1.32288


def test_estimate_hours_are_quantized_to_four_places() -> None:
    est = job_costs.estimate("gke", 2, 4, 0, None, False, 100, prices=PRICES)
    assert est.hours == Decimal("0.0278")
    assert est.machine == "e2-standard-2"
    assert est.hourly_usd == Decimal("0.067006")  # 2 x 0.021811 + 8 x 0.002923
    assert est.usd == Decimal("0.0019")  # 0.0018627668


def test_cost_of_prices_seconds_of_running() -> None:
    est = job_costs.hourly("gke", 8, 30, 1, "nvidia-l4", False, prices=PRICES)
    assert est.cost_of(1800) == Decimal("0.4410")  # 0.44096
    assert est.cost_of(3600) == Decimal("0.8819")
    assert est.cost_of(0) == Decimal("0.0000")
    assert est.cost_of(-30) == Decimal("0.0000")


def test_estimate_round_trips_through_its_document() -> None:
    est = job_costs.estimate("gke", 8, 30, 1, "nvidia-l4", True, 5400, prices=PRICES)
    doc = est.to_doc()
    assert doc == {
        "backend": "gke",
        "machine": "g2-standard-8",
        "spot": True,
        "hourly_usd": "0.352640",
        "hours": "1.5000",
        "usd": "0.5290",
    }
    assert Estimate.from_doc(doc) == est


def test_an_unknown_gpu_type_has_no_machine_and_the_message_lists_the_offered_ones() -> None:
    with pytest.raises(NoMachine) as info:
        job_costs.machine_for(4, 16, 1, "nvidia-v100", prices=PRICES)
    assert str(info.value) == (
        "gpu_type nvidia-v100 is not offered; use one of "
        "nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100, nvidia-h100-80gb"
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ((300, 4, 0, None), "no CPU machine has 300 vCPU, 4 GB and 0 GPU (largest: 32 vCPU, 128 GB, 0 GPU)"),
        (
            (4, 16, 9, "nvidia-l4"),
            "no nvidia-l4 machine has 4 vCPU, 16 GB and 9 GPU (largest: 96 vCPU, 384 GB, 8 GPU)",
        ),
        (
            (2, 700, 1, "nvidia-tesla-a100"),
            "no nvidia-tesla-a100 machine has 2 vCPU, 700 GB and 1 GPU (largest: 96 vCPU, 680 GB, 8 GPU)",
        ),
    ],
)
def test_a_request_bigger_than_any_machine_raises_no_machine(request_: tuple[Any, ...], message: str) -> None:
    with pytest.raises(NoMachine) as info:
        job_costs.machine_for(*request_, prices=PRICES)
    assert str(info.value) == message
    cpu, memory_gb, gpu, gpu_type = request_
    with pytest.raises(NoMachine):
        job_costs.estimate("gke", cpu, memory_gb, gpu, gpu_type, False, 3600, prices=PRICES)


def test_cloud_run_is_priced_per_vcpu_gb_and_gpu() -> None:
    cpu = job_costs.hourly("cloudrun", 2, 4, 0, None, False, prices=PRICES)
    assert cpu == Estimate("cloudrun", "Cloud Run job (2 vCPU, 4 GiB)", False, Decimal("0.158400"), Decimal(1))
    gpu = job_costs.hourly("cloudrun", 4, 16, 1, None, False, prices=PRICES)
    rate = PRICES.cloud_run
    assert gpu.hourly_usd == rate.vcpu_h * 4 + rate.gb_h * 16 + rate.gpu_h == Decimal("1.0465")
    assert gpu.machine == "Cloud Run job (4 vCPU, 16 GiB, 1 L4)"
    # per second: 90 seconds of the CPU job
    assert cpu.cost_of(90) == Decimal("0.0040")
    assert job_costs.estimate("cloudrun", 2, 4, 0, None, False, 1800, prices=PRICES).usd == Decimal("0.0792")


def test_cloud_run_prices_the_size_it_bills_rounded_up() -> None:
    # 0.5 vCPU is billed as 1; 3 vCPU as 4 (and 4 vCPU needs at least 2 GiB).
    assert job_costs.hourly("cloudrun", 0.5, 0.5, 0, None, False, prices=PRICES).hourly_usd == Decimal("0.068400")
    three = job_costs.hourly("cloudrun", 3, 1, 0, None, False, prices=PRICES)
    assert three.machine == "Cloud Run job (4 vCPU, 2 GiB)" and three.hourly_usd == Decimal("0.273600")
    assert job_costs.cloud_run_size(3, 1) == (4, 2048)


def test_local_runs_are_free() -> None:
    est = job_costs.estimate("local", 16, 64, 4, "nvidia-tesla-a100", True, 86400, prices=PRICES)
    assert (est.machine, est.spot, est.hourly_usd, est.usd, est.nanos) == ("this machine", False, 0, 0, 0)
    assert est.hours == Decimal("24.0000")


@pytest.mark.parametrize(("factor", "hourly"), [("0.5", "0.440960"), ("1.1", "0.970112"), ("2", "1.763840")])
def test_price_factor_scales_the_hourly_price(factor: str, hourly: str) -> None:
    est = job_costs.hourly("gke", 8, 30, 1, "nvidia-l4", False, Decimal(factor), prices=PRICES)
    assert est.hourly_usd == Decimal(hourly)
    full = job_costs.estimate("gke", 8, 30, 1, "nvidia-l4", False, 7200, Decimal(factor), prices=PRICES)
    assert full.usd == (Decimal(hourly) * 2).quantize(Decimal("0.0001"))


def test_price_factor_is_quantized_to_six_places() -> None:
    est = job_costs.hourly("cloudrun", 1, 1, 0, None, False, Decimal("0.3333333"), prices=PRICES)
    assert est.hourly_usd == Decimal("0.024000")  # 0.072 x 0.3333333 = 0.02399999...
