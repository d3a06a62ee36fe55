"""Serving the learned models: the heartbeat path scores with models loaded from their bytes without ever
importing scikit-learn; the per-instance cache picks a promoted version up after its refresh period, keeps
the model it has when the registry or the bytes fail, and refuses bytes whose hash differs, or a model whose
scorer fails its stored self-check (the one in service stays, heartbeats are still scored, and the
retraining job compares its new model with none)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.ml import serving
from shared.platform import logs

#: The real loader (the ``registry`` fixture replaces it with a stand-in).
REAL_LOADER = serving.loader


def test_scoring_a_heartbeat_never_imports_scikit_learn(tmp_path: Any) -> None:
    build = textwrap.dedent(
        """
        from shared.ml.anomaly import AnomalyDetector
        from tests.unit.test_ml_anomaly import FLEET, TRAIN
        det = AnomalyDetector(); det.fit({a: s.head(TRAIN) for a, s in list(FLEET.items())[:6]})
        open(r"%s", "wb").write(det.to_bytes())
        """
        % (tmp_path / "a.npz")
    )
    subprocess.run([sys.executable, "-c", build], check=True, timeout=120)
    score = textwrap.dedent(
        """
        import sys
        from datetime import UTC, datetime, timedelta
        import functions.main  # the functions' module, as functions-framework imports it
        from shared.ml import live, serving
        model = serving.loader("anomaly")(open(r"%s", "rb").read())
        model.min_history_s = 0.0  # 40 heartbeats are 20 minutes, not the day an agent needs before it is scored
        state = {}
        for i in range(40):
            m = {"latency_ms_p95": 100 + i %% 3, "error_rate": 0.01, "cpu_pct": 30 + i %% 5, "memory_pct": 50}
            out = live.step(live.Models(model, "v"), "a", state, m, datetime.now(UTC) + timedelta(seconds=30 * i), 30.0)
            state = out.state
        assert state["status"] in ("normal", "anomalous"), state
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "skops", "scipy"))
        print(loaded)
        assert not loaded, loaded
        """
        % (tmp_path / "a.npz")
    )
    done = subprocess.run([sys.executable, "-c", score], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


class FakeRegistry:
    def __init__(self) -> None:
        self.pointer: dict[str, Any] | None = None
        self.blobs: dict[str, bytes] = {}
        self.reads = 0
        self.downloads = 0
        self.fail_blob = False
        #: The registry's bookkeeping of failed loads: (version, at) written, versions cleared.
        self.noted: list[tuple[str, datetime]] = []
        self.cleared: list[str] = []

    def note_load_failure(self, kind: str, version: str, reason: str, at: datetime) -> None:
        self.noted.append((version, at))
        assert self.pointer is not None
        self.pointer["load_failure"] = {"version": version, "reason": reason, "at": at}

    def clear_load_failure(self, kind: str, version: str) -> bool:
        assert self.pointer is not None
        if (self.pointer.get("load_failure") or {}).get("version") != version:
            return False
        self.cleared.append(version)
        del self.pointer["load_failure"]
        return True

    def publish(self, version: str, data: bytes) -> None:
        uri = f"gs://b/anomaly/{version}.npz"
        self.blobs[uri] = data
        self.pointer = {"current": version, "current_uri": uri, "current_sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    from shared.store import model_blobs
    from shared.store import models as store

    reg = FakeRegistry()

    def pointer(kind: str) -> dict[str, Any] | None:
        reg.reads += 1
        return reg.pointer

    def get(uri: str, sha256: str | None = None) -> bytes:
        if reg.fail_blob:
            raise ConnectionError("storage down")
        reg.downloads += 1
        data = reg.blobs[uri]
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise model_blobs.CorruptModel("hash")
        return data

    monkeypatch.setattr(store, "pointer", pointer)
    monkeypatch.setattr(store, "note_load_failure", reg.note_load_failure)
    monkeypatch.setattr(store, "clear_load_failure", reg.clear_load_failure)
    monkeypatch.setattr(model_blobs, "get", get)
    monkeypatch.setattr(serving, "loader", lambda kind: lambda data: ("model", data))
    monkeypatch.setenv("FLEET_MODEL_REFRESH_S", "0")
    from shared.platform import settings

    settings.get.cache_clear()
    serving.reset()
    yield reg
    serving.reset()
    settings.get.cache_clear()


def test_a_promoted_version_is_picked_up_and_failures_keep_the_model_in_service(registry: FakeRegistry) -> None:
    assert serving.current("anomaly") is None
    registry.publish("v1", b"one")
    first = serving.current("anomaly")
    assert first is not None and first.version == "v1" and first.model == ("model", b"one")
    registry.publish("v2", b"two")
    registry.fail_blob = True
    assert serving.current("anomaly") is first  # storage down: keep serving v1
    registry.fail_blob = False
    registry.blobs[registry.pointer["current_uri"]] = b"tampered"  # type: ignore[index]
    assert serving.current("anomaly") is first  # hash mismatch: refused
    registry.blobs[registry.pointer["current_uri"]] = b"two"  # type: ignore[index]
    second = serving.current("anomaly")
    assert second is not None and second.version == "v2"


def test_a_failure_is_recorded_once_a_few_minutes_and_cleared_by_a_later_load(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N6: not a write on every failed refresh of every instance; a transient failure does not outlive the load."""
    registry.publish("v1", b"one")
    registry.fail_blob = True
    for _ in range(5):  # five failed refreshes (or instances) in a row: one write
        assert serving.current("anomaly") is None
    assert [version for version, _ in registry.noted] == ["v1"]
    # The pointer's failure is older than FAILURE_REWRITE: still failing, it is written again.
    assert registry.pointer is not None
    registry.pointer["load_failure"]["at"] -= serving.FAILURE_REWRITE + timedelta(seconds=1)
    assert serving.current("anomaly") is None
    assert [version for version, _ in registry.noted] == ["v1", "v1"]
    registry.fail_blob = False
    loaded = serving.current("anomaly")
    assert loaded is not None and loaded.version == "v1"
    assert registry.cleared == ["v1"] and "load_failure" not in registry.pointer


def test_a_load_does_not_clear_another_versions_failure(registry: FakeRegistry) -> None:
    registry.publish("v2", b"two")
    assert registry.pointer is not None
    registry.pointer["load_failure"] = {"version": "v1", "reason": "unloadable", "at": datetime.now(UTC)}
    loaded = serving.current("anomaly")
    assert loaded is not None and loaded.version == "v2"
    assert registry.cleared == [] and registry.pointer["load_failure"]["version"] == "v1"


def test_noted_recently_needs_the_same_version_within_the_rewrite_period() -> None:
    now = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)
    pointer = {"load_failure": {"version": "v1", "at": now - timedelta(minutes=1)}}
    assert serving.noted_recently(pointer, "v1", now)
    assert not serving.noted_recently(pointer, "v2", now)
    assert not serving.noted_recently(pointer, "v1", now + serving.FAILURE_REWRITE)
    assert not serving.noted_recently({}, "v1", now) and not serving.noted_recently(
        {"load_failure": {"version": "v1"}}, "v1", now
    )


def test_the_registry_is_read_once_per_refresh_period(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.platform import settings

    monkeypatch.setenv("FLEET_MODEL_REFRESH_S", "3600")
    settings.get.cache_clear()
    registry.publish("v1", b"one")
    for _ in range(50):
        assert serving.current("anomaly") is not None
    assert registry.reads == 1


# ------------------------------------------------------------------------------------ self-check
@pytest.fixture(scope="module")
def detector_bytes() -> bytes:
    from shared.ml.anomaly import AnomalyDetector
    from tests.unit.test_ml_anomaly import FLEET, TRAIN

    det = AnomalyDetector()
    det.fit({a: s.head(TRAIN) for a, s in list(FLEET.items())[:6]})
    return det.to_bytes()


def tampered(data: bytes) -> bytes:
    """``data`` with its stored self-check scores moved by 1e-9 (relative): far beyond the tolerance."""
    import io

    import numpy as np

    from shared.ml import provenance

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[provenance.SCORES] = arrays[provenance.SCORES] * (1.0 + 1e-9)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """The project's JSON log lines about the anomaly model (the heartbeat step also asks for a failure
    model, which the fake registry answers with the anomaly model's bytes: unloadable, and not looked at)."""
    got: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            line = json.loads(logs.JsonFormatter().format(record))
            if line.get("kind") == "anomaly":
                got.append(line)

    handler, logger = Keep(), logging.getLogger("fleet")
    logger.addHandler(handler)
    yield got
    logger.removeHandler(handler)


def heartbeat_model() -> str | None:
    """The anomaly model version a heartbeat is scored with now (through the heartbeat function's step)."""
    from shared.ml import live

    learned = live.for_heartbeats()
    record = type("Record", (), {"agent_id": "a", "ml": {}, "heartbeat_interval_s": 30.0})()
    metrics = {"latency_ms_p95": 100.0, "error_rate": 0.01, "cpu_pct": 30.0, "memory_pct": 50.0}
    return learned(record, metrics, datetime(2026, 11, 1, tzinfo=UTC)).state.get("anomaly_model")


def test_a_model_failing_its_self_check_is_refused_and_the_one_in_service_stays(
    registry: FakeRegistry,
    detector_bytes: bytes,
    records: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving, "loader", REAL_LOADER)
    registry.publish("v1", detector_bytes)
    first = serving.current("anomaly")
    assert first is not None and first.version == "v1" and heartbeat_model() == "v1"
    registry.publish("v2", tampered(detector_bytes))
    assert serving.current("anomaly") is first  # refused: v1 stays in service
    assert heartbeat_model() == "v1"  # and heartbeats are still scored, by v1
    refusals = [r for r in records if r.get("reason") == "self_check_failed"]
    assert len(refusals) == 1, records
    refusal = refusals[0]
    assert refusal["severity"] == "ERROR" and refusal["version"] == "v2" and refusal["serving"] == "v1"
    assert 0.0 < refusal["max_deviation"] < 1e-8 and "self_check_failed" in refusal["error"]
    downloads = registry.downloads
    for _ in range(3):  # the same bytes would fail again: not downloaded, nor logged, every period
        assert serving.current("anomaly") is first
    assert registry.downloads == downloads and len([r for r in records if r.get("reason")]) == 1
    # A scorer that disagrees (as after a numpy release computing the trees differently) is refused too.
    from shared.ml.anomaly_forest import FlatForest

    score = FlatForest.score
    monkeypatch.setattr(FlatForest, "score", lambda self, X, chunk=4096: score(self, X, chunk) * (1.0 + 1e-9))
    registry.publish("v3", detector_bytes)
    assert serving.current("anomaly") is first and heartbeat_model() == "v1"
    assert [r["version"] for r in records if r.get("reason") == "self_check_failed"] == ["v2", "v3"]
    monkeypatch.setattr(FlatForest, "score", score)
    registry.publish("v4", detector_bytes)
    fourth = serving.current("anomaly")
    assert fourth is not None and fourth.version == "v4" and heartbeat_model() == "v4"


def test_a_model_that_fails_to_load_for_another_reason_is_still_retried(
    registry: FakeRegistry, detector_bytes: bytes, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a self-check failure is remembered: storage trouble is tried again next period."""
    monkeypatch.setattr(serving, "loader", REAL_LOADER)
    registry.publish("v1", detector_bytes)
    registry.fail_blob = True
    assert serving.current("anomaly") is None
    assert [r["reason"] for r in records if r.get("reason")] == ["unloadable"]
    registry.fail_blob = False
    loaded = serving.current("anomaly")
    assert loaded is not None and loaded.version == "v1"


def test_the_retraining_job_compares_with_none_when_the_model_in_service_fails_its_self_check(
    registry: FakeRegistry, detector_bytes: bytes, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import retrain as job

    monkeypatch.setattr(serving, "loader", REAL_LOADER)
    registry.publish("v1", detector_bytes)
    model, version, why = job._current("anomaly")
    assert model is not None and version == "v1" and why == ""
    registry.publish("v2", tampered(detector_bytes))
    model, version, why = job._current("anomaly")
    assert model is None and version == "v2" and "self_check_failed" in why
    assert [r["version"] for r in records if r.get("reason") == "self_check_failed"] == ["v2"]


def older_format(data: bytes) -> bytes:
    """``data`` as a model stored before issue 24 would read: format 1."""
    import io
    import json as json_

    import numpy as np

    from shared.ml import storage

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json_.loads(arrays[storage.META].tobytes().decode())
    meta["format"] = 1
    arrays[storage.META] = np.frombuffer(json_.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_model_of_another_format_is_refused_once_and_says_retraining_is_needed(
    registry: FakeRegistry,
    detector_bytes: bytes,
    records: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an upgrade, the registry may still point at a model this code cannot read: it is refused with the
    reason "incompatible: retraining needed", once, and not downloaded again every refresh period."""
    monkeypatch.setattr(serving, "loader", REAL_LOADER)
    registry.publish("v1", older_format(detector_bytes))
    assert serving.current("anomaly") is None
    refusals = [r for r in records if r.get("reason")]
    assert [r["reason"] for r in refusals] == ["incompatible: retraining needed"], records
    downloads = registry.downloads
    for _ in range(3):
        assert serving.current("anomaly") is None
    assert registry.downloads == downloads and len([r for r in records if r.get("reason")]) == 1
    registry.publish("v2", detector_bytes)  # the retrained model is taken up at once
    served = serving.current("anomaly")
    assert served is not None and served.version == "v2"
