"""Learned models end to end on the local stack: the ``model-retrain`` tick (Pub/Sub push to fleet-jobs)
launches the retraining job through the local launcher; it reads the heartbeat history from the Firestore
emulator, trains, evaluates, stores the bytes through the real Cloud Storage client in the stand-in and
the versions in the registry, and promotes; ``GET /v1/models`` lists them; the heartbeat function then
picks the model up without a restart and opens an ``anomaly`` episode with the features that drove it. A
version promoted with a self-check its scorer fails is refused by the heartbeat function (the version it
had stays in service) and counts as none for the retraining job."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import Api, tick, wait_for
from tests.integration.helpers import agent_doc, heartbeat, log_lines, publish, registration

pytestmark = pytest.mark.integration

ROWS = 1000
AGENTS = 16
#: The simulated rows a heartbeat every 90 s (30 s simulated): 25 hours, as retraining needs a day of history.
STRETCH = 3


def _seed_history(firestore: Any, publisher: Any, tenant: str) -> list[str]:
    """Agents registered through the real path, and the heartbeat history the heartbeat function would have
    flushed over ~25 hours (simulated agents with failures, written as history chunks)."""
    from shared.ml.data import METRICS
    from shared.ml.simulate import simulate_failures

    streams, _events = simulate_failures(agents=AGENTS, rows=ROWS, seed=5)
    names = ("latency_ms_p95", *METRICS[1:])
    ids = [f"ml-{uuid.uuid4().hex[:10]}" for _ in streams]
    for agent_id in ids:
        publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=30 * STRETCH))
    for agent_id in ids:
        wait_for(lambda a=agent_id: agent_doc(firestore, a))
    streams = {a: replace(s, interval_s=STRETCH * s.interval_s, t=STRETCH * s.t) for a, s in streams.items()}
    start = datetime.now(UTC) - timedelta(seconds=float(max(s.t[-1] for s in streams.values())) + 60)
    batch, pending = firestore.batch(), 0
    for agent_id, stream in zip(ids, streams.values(), strict=True):
        samples = [
            json.dumps(
                {
                    "seq": i,
                    "at": (start + timedelta(seconds=float(stream.t[i]))).isoformat(),
                    "sent_at": (start + timedelta(seconds=float(stream.t[i]))).isoformat(),
                    "status": "busy",
                    "metrics": {n: float(v) for n, v in zip(names, stream.X[i], strict=True)},
                }
            )
            for i in range(len(stream))
        ]
        for chunk_no, lo in enumerate(range(0, len(samples), 100)):
            ref = firestore.collection("agents").document(agent_id).collection("history").document(f"c{chunk_no}")
            batch.set(ref, {"agent_id": agent_id, "chunk_no": chunk_no, "samples": samples[lo : lo + 100]})
            pending += 1
            if pending == 100:  # a commit stays under the 4 MiB request limit
                batch.commit()
                batch, pending = firestore.batch(), 0
    batch.commit()
    return ids


@pytest.fixture(scope="module")
def retrained(api: Api, publisher: Any, firestore: Any) -> Iterator[dict[str, Any]]:
    tenant = f"ml{uuid.uuid4().hex[:8]}"
    _seed_history(firestore, publisher, tenant)
    tick(publisher, "model-retrain")
    run_id = f"retrain-{datetime.now(UTC):%Y%m%d}"

    def finished() -> dict[str, Any] | None:
        doc = firestore.collection("model_runs").document(run_id).get()
        data = doc.to_dict() if doc.exists else None
        return data if data and data.get("state") in ("succeeded", "partial", "failed") else None

    run = wait_for(finished, timeout=240, every=1.0)
    yield {"tenant": tenant, "run": run, "run_id": run_id}
    # Other tests' agents must not be judged by this model: take it out of service.
    for kind in ("anomaly", "failure", "task_assignment"):
        firestore.collection("models").document(kind).set({"current": None}, merge=True)


def test_the_daily_tick_retrains_evaluates_and_promotes(retrained: dict[str, Any], api: Api) -> None:
    run = retrained["run"]
    assert run["state"] == "succeeded", run["results"]
    assert run["backend"] == "local" and run["handle"]["backend"] == "local"
    assert run["history"]["agents_used"] >= AGENTS
    anomaly = run["results"]["anomaly"]
    assert anomaly["decision"] == "promoted", anomaly
    assert anomaly["metrics"]["events"] > 0 and anomaly["metrics"]["f1"] > 0.5

    reply = api.get("/v1/models")
    assert reply.status_code == 200, reply.text
    kinds = {k["kind"]: k for k in reply.json()["items"]}
    assert set(kinds) == {"anomaly", "failure", "task_assignment"}
    model = kinds["anomaly"]
    assert model["current"] == anomaly["version"]
    version = model["versions"][0]
    assert version["version"] == anomaly["version"] and version["promoted"] is True
    assert version["uri"].startswith("gs://") and len(version["sha256"]) == 64
    assert version["compared_with"] is None and "no model in service" in version["reason"]
    assert "z_latency_ms" in version["features"]
    import sklearn

    record = firestore_version("anomaly", anomaly["version"])
    assert record["trained_with"] == {"scikit-learn": sklearn.__version__, "numpy": np.__version__}
    assert any(r["run_id"] == retrained["run_id"] for r in reply.json()["runs"])
    failure = run["results"]["failure"]
    assert failure["decision"] in ("promoted", "keep_current", "not_trained"), failure
    assert failure["reason"]

    # The bytes are where the registry says, and are what it hashed (through the real client).
    from shared.store import model_blobs

    data = model_blobs.get(version["uri"], version["sha256"])
    from shared.ml.anomaly import AnomalyDetector

    assert AnomalyDetector.from_bytes(data, load_forest=False).flat is not None

    bad = api.get("/v1/models", kind="nope")
    assert bad.status_code == 400 and "kind must be one of" in bad.json()["error"]["reason"]


def test_a_second_run_compares_with_the_model_in_service(retrained: dict[str, Any], firestore: Any) -> None:
    """Run the job again (as `make retrain` would): the new version is evaluated next to the current one on
    the same held-out data, recorded with both evaluations, and promoted only if at least as good."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    before = firestore.collection("models").document("anomaly").get().to_dict()["current"]
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-m", "jobs.retrain", "--run-id", f"manual-{uuid.uuid4().hex[:6]}", "--kinds", "anomaly"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])["results"]["anomaly"]
    doc = firestore.collection("models").document("anomaly").collection("versions").document(result["version"])
    record = doc.get().to_dict()
    assert record["compared_with"] == before
    assert record["current_metrics"] is not None and "f1" in record["current_metrics"]
    promoted = record["metrics"]["f1"] >= record["current_metrics"]["f1"]
    assert record["decision"] == ("promote" if promoted else "keep_current")
    now = firestore.collection("models").document("anomaly").get().to_dict()["current"]
    assert now == (result["version"] if promoted else before)


def test_the_heartbeat_function_scores_with_the_promoted_model(
    retrained: dict[str, Any], api: Api, publisher: Any, firestore: Any
) -> None:
    agent_id = f"ml-live-{uuid.uuid4().hex[:8]}"
    publish(publisher, registration(agent_id, tenant=retrained["tenant"]))
    wait_for(lambda: agent_doc(firestore, agent_id))
    # An agent with a day of history behind it (``since``: its first heartbeat), as an agent must have to be scored.
    since = (datetime.now(UTC) - timedelta(days=1, minutes=5)).timestamp()
    firestore.collection("agents").document(agent_id).update({"ml": json.dumps({"v": 1, "since": since})})
    rng = np.random.default_rng(3)

    def send(seq: int, latency: float) -> dict[str, Any]:
        metrics = {
            "latency_ms_p95": latency * float(np.exp(rng.normal(0, 0.05))),
            "error_rate": 0.01 * float(np.exp(rng.normal(0, 0.2))),
            "cpu_pct": 40.0 + float(rng.normal(0, 2.0)),
            "memory_pct": 55.0 + float(rng.normal(0, 1.0)),
            "tokens_per_s": 120.0 * float(np.exp(rng.normal(0, 0.05))),
            "cost_per_min": 0.2 * float(np.exp(rng.normal(0, 0.05))),
        }
        publish(publisher, heartbeat(agent_id, seq, **metrics))
        return wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] == seq and d)

    statuses = [send(seq, 800.0)["ml"]["status"] for seq in range(36)]
    assert statuses[0] == "insufficient_data" and statuses[-1] == "normal", statuses
    doc = None
    for seq in range(36, 42):  # latency five times its normal level
        doc = send(seq, 4000.0)
    assert doc is not None and doc["ml"]["status"] == "anomalous", doc["ml"]
    assert "anomaly" in doc["episodes"]
    episode = firestore.collection("episodes").document(doc["episodes"]["anomaly"]["id"]).get().to_dict()
    assert episode["rule"] == "anomaly" and episode["agent_id"] == agent_id
    assert any("latency" in f for f in episode["details"]["features"]), episode["details"]
    assert episode["details"]["model"] == doc["ml"]["anomaly_model"]

    view = api.get(f"/v1/agents/{agent_id}").json()
    assert view["learned"]["status"] == "anomalous" and view["learned"]["score"] > 0


def firestore_version(kind: str, version: str) -> dict[str, Any]:
    """A version's record in the registry, read through the store."""
    from shared.store import models as registry

    found = registry.version_ref(kind, version).get()
    assert found.exists, version
    return dict(found.to_dict())


def test_a_version_failing_its_self_check_never_reaches_the_heartbeats(
    retrained: dict[str, Any], stack: Any, publisher: Any, firestore: Any
) -> None:
    """A version is promoted whose stored self-check its scorer fails (tampered here, as a library change
    would move the scorer): the heartbeat function refuses it, logs why and keeps scoring with the version
    it had; the retraining job compares its new model with none."""
    import hashlib
    import io
    import time

    from jobs.retrain import _current
    from shared.ml import provenance
    from shared.store import model_blobs
    from shared.store import models as registry

    pointer = firestore.collection("models").document("anomaly").get().to_dict()
    good = pointer["current"]
    agent_id = f"ml-check-{uuid.uuid4().hex[:8]}"
    publish(publisher, registration(agent_id, tenant=retrained["tenant"]))
    wait_for(lambda: agent_doc(firestore, agent_id))

    def send(seq: int) -> dict[str, Any]:
        metrics = {"latency_ms_p95": 800.0, "error_rate": 0.01, "cpu_pct": 40.0, "memory_pct": 55.0}
        publish(publisher, heartbeat(agent_id, seq, **metrics))
        return wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] == seq and d)

    first = send(0)["ml"]
    assert first["anomaly_model"] == good and first["status"] == "insufficient_data"
    assert first["history_s"] == 0.0 and first["scored_from"] > datetime.now(UTC).isoformat()  # a day on
    with np.load(io.BytesIO(model_blobs.get(pointer["current_uri"], pointer["current_sha256"]))) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[provenance.SCORES] = arrays[provenance.SCORES] * (1.0 + 1e-9)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    bad, bad_version = buf.getvalue(), f"anomaly-tampered-{uuid.uuid4().hex[:8]}"
    uri = model_blobs.put("anomaly", bad_version, bad)
    registry.record("anomaly", bad_version, {"uri": uri, "reason": "tampered by a test", "promoted": False})
    now = datetime.now(UTC)
    assert registry.promote("anomaly", bad_version, uri, hashlib.sha256(bad).hexdigest(), expected=good, at=now)
    try:
        time.sleep(1.5)  # past the functions' FLEET_MODEL_REFRESH_S
        for seq in range(1, 4):
            assert send(seq)["ml"]["anomaly_model"] == good  # refused: the version it had stays in service
        refusals = [
            line
            for line in log_lines(stack.state_dir, "fleet-heartbeats")
            if line.get("reason") == "self_check_failed" and line.get("version") == bad_version
        ]
        assert refusals and refusals[0]["serving"] == good and refusals[0]["max_deviation"] > 0, refusals
        model, version, why = _current("anomaly")  # the retraining job's comparison
        assert model is None and version == bad_version and "self_check_failed" in why
    finally:
        registry.promote(
            "anomaly", good, pointer["current_uri"], pointer["current_sha256"], expected=bad_version, at=now
        )
