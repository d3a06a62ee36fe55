"""What a training run costs, before launch (the estimate) and after (the actual). Pure.

Prices are list prices per hour in USD (us-central1, on-demand and spot, late 2025), rounded: the
table is data, shared/data/machine_prices.yaml, and the functions here receive
it (:class:`MachinePrices`). A tenant with other prices (another region, a committed-use discount) sets
``price_factor`` in its jobs settings; a deployment with a table of its own edits that file. GKE
bills the node a job's pod lands on: the estimate prices the smallest machine of the family that fits
the request (one job per node: GPU pods don't share). Cloud Run jobs bill per second of vCPU, memory
and GPU. The local backend is free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.domain.pricing import to_nanos


class Rate(BaseModel):
    """Hourly price of one vCPU, one GB of memory, and (GPU families) one GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vcpu_h: Decimal = Field(ge=0)
    gb_h: Decimal = Field(ge=0)
    gpu_h: Decimal = Field(default=Decimal(0), ge=0)


class Family(BaseModel):
    """A Compute Engine machine family: its shapes (vCPU, GB, GPUs) and its on-demand and spot rates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The GKE accelerator it carries (None: CPU machines).
    gpu_type: str | None = None
    #: name -> [vcpu, memory_gb, gpus]
    shapes: dict[str, tuple[int, float, int]]
    on_demand: Rate
    spot: Rate


#: The GKE accelerators a job may ask for (``gpu_type``). Each is carried by exactly one family of the
#: machine price table, which is checked against this list when it is read.
GPU_TYPES: tuple[str, ...] = ("nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-h100-80gb")
#: Machines Compute Engine sells only as spot (or Flex-start), never on demand: the policy refuses an
#: on-demand job priced on one, and terraform/gke.tf gives them no on-demand pool.
SPOT_ONLY_MACHINES = frozenset({"a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"})


class MachinePrices(BaseModel):
    """The machine price table: the Compute Engine families GKE runs jobs on, and Cloud Run jobs' rates
    per hour of instance time (the per-second prices times 3600). Shipped as data
    (shared/data/machine_prices.yaml, read by shared/store/price_files.py); a tenant scales it with
    ``price_factor`` in ``PUT /v1/tenants/{t}/jobs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: dict[str, Family]
    cloud_run: Rate

    @model_validator(mode="after")
    def _carries_the_gpu_types(self) -> MachinePrices:
        carried = [f.gpu_type for f in self.families.values()]
        if sorted(g for g in carried if g is not None) != sorted(GPU_TYPES) or carried.count(None) != 1:
            raise ValueError(f"one family must carry each of {', '.join(GPU_TYPES)}, and one family no GPU")
        return self


#: Cloud Run's CPU sizes per task (vCPU) and its largest.
CLOUD_RUN_CPU_STEPS = (1, 2, 4, 6, 8)
CLOUD_RUN_MAX_CPU = 8.0


def cloud_run_size(cpu: float, memory_gb: float) -> tuple[int, int]:
    """(vCPU, MiB) Cloud Run bills for a request: CPU and memory rounded up to sizes it accepts (more
    memory needs more CPU, more CPU some memory). The launcher asks exactly this; the estimate prices it."""
    vcpu = next(step for step in CLOUD_RUN_CPU_STEPS if step >= min(cpu, CLOUD_RUN_MAX_CPU) - 1e-9)
    memory_mib = max(512, math.ceil(memory_gb * 1024 - 1e-6))
    for gib, least in ((24, 8), (16, 6), (8, 4), (4, 2)):
        if memory_mib > gib * 1024:
            vcpu = max(vcpu, least)
            break
    memory_mib = max(memory_mib, 4096 if vcpu >= 6 else 2048 if vcpu >= 4 else 0)
    return vcpu, memory_mib


class NoMachine(ValueError):
    """No machine of the table carries this request (unknown GPU type, too many GPUs or vCPUs)."""


@dataclass(frozen=True)
class Estimate:
    """A run's price per hour and its cost over ``hours``; ``machine`` says what was priced."""

    backend: str
    machine: str
    spot: bool
    hourly_usd: Decimal
    hours: Decimal

    @property
    def usd(self) -> Decimal:
        return (self.hourly_usd * self.hours).quantize(Decimal("0.0001"), ROUND_HALF_UP)

    @property
    def nanos(self) -> int:
        return to_nanos(self.usd)

    def cost_of(self, seconds: float) -> Decimal:
        """The cost of ``seconds`` of running at this rate (the actual cost, or the cost so far)."""
        hours = Decimal(str(max(0.0, seconds))) / Decimal(3600)
        return (self.hourly_usd * hours).quantize(Decimal("0.0001"), ROUND_HALF_UP)

    def to_doc(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "machine": self.machine,
            "spot": self.spot,
            "hourly_usd": format(self.hourly_usd, "f"),
            "hours": format(self.hours, "f"),
            "usd": format(self.usd, "f"),
        }

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> Estimate:
        return cls(
            str(data["backend"]),
            str(data["machine"]),
            bool(data["spot"]),
            Decimal(str(data["hourly_usd"])),
            Decimal(str(data["hours"])),
        )


def machine_for(
    cpu: float, memory_gb: float, gpu: int, gpu_type: str | None, *, prices: MachinePrices
) -> tuple[str, Family]:
    """The cheapest machine (its on-demand price, GPUs included) of the family that fits the request."""
    wanted = gpu_type if gpu > 0 else None
    if gpu > 0 and wanted is None:
        wanted = "nvidia-l4"
    family = next((f for f in prices.families.values() if f.gpu_type == wanted), None)
    if family is None:
        raise NoMachine(f"gpu_type {gpu_type} is not offered; use one of {', '.join(GPU_TYPES)}")
    fits = [
        (name, shape)
        for name, shape in family.shapes.items()
        if shape[0] >= cpu and shape[1] >= memory_gb and shape[2] >= gpu
    ]
    if not fits:
        biggest = max(family.shapes.values())
        raise NoMachine(
            f"no {wanted or 'CPU'} machine has {cpu:g} vCPU, {memory_gb:g} GB and {gpu} GPU "
            f"(largest: {biggest[0]} vCPU, {biggest[1]:g} GB, {biggest[2]} GPU)"
        )
    rate = family.on_demand
    name, _shape = min(
        fits, key=lambda item: item[1][0] * rate.vcpu_h + Decimal(str(item[1][1])) * rate.gb_h + item[1][2] * rate.gpu_h
    )
    return name, family


def hourly(
    backend: str,
    cpu: float,
    memory_gb: float,
    gpu: int,
    gpu_type: str | None,
    spot: bool,
    factor: Decimal = Decimal(1),
    *,
    prices: MachinePrices,
) -> Estimate:
    """The price per hour of a run on ``backend`` (``hours`` = 1), times the tenant's ``factor``."""
    rate = _list_hourly(backend, cpu, memory_gb, gpu, gpu_type, spot, prices)
    usd = (rate.hourly_usd * factor).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    return Estimate(rate.backend, rate.machine, rate.spot, usd, rate.hours)


def _list_hourly(
    backend: str, cpu: float, memory_gb: float, gpu: int, gpu_type: str | None, spot: bool, prices: MachinePrices
) -> Estimate:
    one = Decimal(1)
    if backend == "local":
        return Estimate(backend, "this machine", False, Decimal(0), one)
    if backend == "cloudrun":
        vcpu, memory_mib = cloud_run_size(cpu, memory_gb)
        gib = Decimal(memory_mib) / Decimal(1024)
        usd = prices.cloud_run.vcpu_h * vcpu + prices.cloud_run.gb_h * gib + prices.cloud_run.gpu_h * gpu
        machine = f"Cloud Run job ({vcpu} vCPU, {gib.normalize():f} GiB{', 1 L4' if gpu else ''})"
        return Estimate(backend, machine, False, usd, one)
    name, family = machine_for(cpu, memory_gb, gpu, gpu_type, prices=prices)
    vcpu, gb, gpus = family.shapes[name]
    rate = family.spot if spot else family.on_demand
    usd = rate.vcpu_h * vcpu + rate.gb_h * Decimal(str(gb)) + rate.gpu_h * gpus
    return Estimate(backend, name, spot, usd, one)


def estimate(
    backend: str,
    cpu: float,
    memory_gb: float,
    gpu: int,
    gpu_type: str | None,
    spot: bool,
    max_runtime_s: int,
    factor: Decimal = Decimal(1),
    *,
    prices: MachinePrices,
) -> Estimate:
    """The most a run can cost: its hourly price over its whole ``max_runtime_s``."""
    rate = hourly(backend, cpu, memory_gb, gpu, gpu_type, spot, factor, prices=prices)
    hours = (Decimal(max_runtime_s) / Decimal(3600)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    return Estimate(rate.backend, rate.machine, rate.spot, rate.hourly_usd, hours)
