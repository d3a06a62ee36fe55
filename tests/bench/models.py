"""The learned models the benchmarks serve: trained once, kept in ``.stack-bench-models``, promoted onto a stack.

Training both models takes a few minutes on the shared 2-core machine, so their bytes are kept between
runs (delete the folder to train afresh). Promotion runs in a child process with the stack's
environment, so the benchmark's own process keeps no Firestore or Storage client bound to a stack that
is stopped before the next one starts.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emulators.stack import ROOT

if TYPE_CHECKING:
    from emulators.stack import Stack

CACHE = ROOT / ".stack-bench-models"
KINDS = ("anomaly", "failure")


def train() -> tuple[Any, Any, bytes, bytes]:
    """Fit the anomaly detector and the failure predictor on simulated fleets: the models and their bytes."""
    from shared.ml.anomaly import AnomalyDetector
    from shared.ml.failure import FailurePredictor
    from shared.ml.simulate import simulate, simulate_failures

    fleet = simulate(agents=60, rows=900, train_rows=600, seed=3)
    det = AnomalyDetector()
    det.fit({a: s.head(fleet.train_rows) for a, s in fleet.streams.items()})
    # Served scoring from the first ready heartbeat: the bench's agents are minutes old, and the push path
    # must time scoring, not the day of history a real agent waits for (insufficient_data skips scoring).
    det.min_history_s = 0.0
    streams, events = simulate_failures(agents=80, rows=1000, seed=4)
    pred = FailurePredictor().fit(streams, events)
    return det, pred, det.to_bytes(), pred.to_bytes()


def model_bytes() -> tuple[bytes, bytes]:
    """The anomaly and failure models' bytes, trained on the first call and kept in ``CACHE``."""
    paths = [CACHE / f"{kind}.npz" for kind in KINDS]
    if not all(p.exists() for p in paths):
        _det, _pred, anomaly, failure = train()
        CACHE.mkdir(exist_ok=True)
        for path, data in zip(paths, (anomaly, failure), strict=True):
            path.write_bytes(data)
    return paths[0].read_bytes(), paths[1].read_bytes()


def promote(kind: str, data: bytes) -> None:
    """Put a model's bytes in the stack's bucket and make it the version in service (this process's env)."""
    from shared.store import model_blobs
    from shared.store import models as registry

    digest = hashlib.sha256(data).hexdigest()
    version = f"{kind}-bench-{digest[:10]}"
    uri = model_blobs.put(kind, version, data)
    now = datetime.now(UTC)
    registry.record(kind, version, {"created_at": now, "uri": uri, "sha256": digest})
    current = (registry.pointer(kind) or {}).get("current")
    registry.promote(kind, version, uri, digest, expected=current, at=now)


def in_service(stack: Stack) -> None:
    """Both models in service on ``stack`` (promoted before its functions see a heartbeat)."""
    model_bytes()
    subprocess.run([sys.executable, "-m", "tests.bench.models"], check=True, cwd=ROOT, env={**os.environ, **stack.env})


if __name__ == "__main__":
    for kind, blob in zip(KINDS, model_bytes(), strict=True):
        promote(kind, blob)
    sys.exit(0)
