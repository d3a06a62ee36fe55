"""Serving the learned models: the heartbeat path scores with models loaded from their bytes without ever
importing scikit-learn; the per-instance cache picks a promoted version up after its refresh period, keeps
the model it has when the registry or the bytes fail, and refuses bytes whose hash differs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from shared.ml import serving


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
        self.fail_blob = False

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
        data = reg.blobs[uri]
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise model_blobs.CorruptModel("hash")
        return data

    monkeypatch.setattr(store, "pointer", pointer)
    monkeypatch.setattr(model_blobs, "get", get)
    monkeypatch.setattr(serving, "loader", lambda kind: lambda data: ("model", data))
    monkeypatch.setenv("FLEET_MODEL_REFRESH_S", "0")
    from shared import settings

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


def test_the_registry_is_read_once_per_refresh_period(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import settings

    monkeypatch.setenv("FLEET_MODEL_REFRESH_S", "3600")
    settings.get.cache_clear()
    registry.publish("v1", b"one")
    for _ in range(50):
        assert serving.current("anomaly") is not None
    assert registry.reads == 1
