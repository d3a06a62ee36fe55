"""The price tables shipped with the code, as data in shared/data/. Reading a file is I/O, so it is done
here and the domain receives the tables:

- ``machine_prices.yaml``: what a training job's machine costs per hour (the Compute Engine families
  GKE runs jobs on, and Cloud Run jobs), which shared/domain/job_costs.py prices estimates with.

Model prices are not here: they come from the genai-prices catalog (shared/store/price_catalog.py)
under the overrides set with ``PUT /v1/prices/{model}`` (shared/store/config.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.domain.job_costs import MachinePrices

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MACHINE_PRICES = DATA_DIR / "machine_prices.yaml"


def read(path: Path) -> dict[str, Any]:
    """One table file as plain data (an empty file is an empty table)."""
    # lazy: PyYAML stays off the functions' cold start until a table is read
    import yaml

    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return data


@functools.cache
def machine_prices() -> MachinePrices:
    """The machine price table, read once per instance (it changes only with a deployment)."""
    # lazy: the job rules stay off the cold start of the functions that price no job
    from shared.domain.job_costs import MachinePrices

    return MachinePrices.model_validate(read(MACHINE_PRICES))
