"""The static rules of the alerts issue, applied to a heartbeat stream: the baseline the learned detector is
compared with.

The thresholds are read from ``HealthConfig`` (shared/domain/health.py) and the liveness ladder
(shared/domain/liveness.py), so the baseline moves with the rules it stands for; the evaluation of one
heartbeat mirrors ``health.evaluate`` (strict ``>`` to open, hysteresis to clear) without its Firestore state:

- error rate over 20 % opens an episode, under 15 % clears it;
- CPU or memory over 95 % continuously for 600 s opens saturation; both under 90 % clear it;
- liveness: a silence of 3 missed intervals is "late" (the sweep would have opened the episode before the
  next heartbeat arrived); it is attributed to the first heartbeat after the silence, which also clears it.

Flapping is not simulated, and egress is not a simulated metric.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.domain.agent_record import Liveness
from shared.domain.health import HealthConfig
from shared.domain.liveness import RUNGS
from shared.ml.data import METRICS, AgentStream, Detection

_ERR, _CPU, _MEM = METRICS.index("error_rate"), METRICS.index("cpu_pct"), METRICS.index("memory_pct")


class StaticRules:
    """The alert thresholds as a ``Detector``: nothing to learn, one pass over the rows in order."""

    name = "static"

    def __init__(self, config: HealthConfig | None = None, late_intervals: int | None = None) -> None:
        self.config = config or HealthConfig()
        self.late_intervals = late_intervals if late_intervals is not None else RUNGS[Liveness.LATE]

    def fit(self, streams: Mapping[str, AgentStream]) -> None:
        """Static thresholds: no learning."""

    def detect(self, stream: AgentStream) -> list[Detection]:
        """Episodes of each rule over the stream, each opened and cleared as the heartbeats arrive."""
        cfg = self.config
        err_open_at = cfg.error_rate
        err_clear_at = round(cfg.error_rate * cfg.error_rate_clear, 9)  # as health.evaluate rounds it
        t, X, n = stream.t.tolist(), stream.X, len(stream)
        err, cpu, mem = X[:, _ERR].tolist(), X[:, _CPU].tolist(), X[:, _MEM].tolist()
        late_after = self.late_intervals * stream.interval_s

        found: list[Detection] = []
        err_since: int | None = None
        sat_since: int | None = None
        sat_features: tuple[str, ...] = ()
        high_since: list[float | None] = [None, None]  # cpu, memory: time the value went over the threshold
        for i in range(n):
            # Liveness: missed = floor(silence / interval) >= 3 is "late"; the next heartbeat brings it back.
            if i and t[i] - t[i - 1] >= late_after:
                found.append(Detection(stream.agent_id, i, i + 1, "liveness", ("heartbeat_gap",)))

            rate = err[i]
            if err_since is None and rate > err_open_at:
                err_since = i
            elif err_since is not None and rate < err_clear_at:
                found.append(Detection(stream.agent_id, err_since, i, "error_rate", ("error_rate",)))
                err_since = None

            saturated: list[str] = []
            for k, (metric, value) in enumerate((("cpu_pct", cpu[i]), ("memory_pct", mem[i]))):
                if value > cfg.saturation_pct:
                    since = high_since[k]
                    if since is None:
                        since = high_since[k] = t[i]
                    if t[i] - since >= cfg.saturation_for_s:
                        saturated.append(metric)
                else:
                    high_since[k] = None
            if sat_since is None and saturated:
                sat_since = i
                sat_features = tuple(saturated)
            elif sat_since is not None and cpu[i] < cfg.saturation_clear_pct and mem[i] < cfg.saturation_clear_pct:
                found.append(Detection(stream.agent_id, sat_since, i, "saturation", sat_features))
                sat_since = None

        if err_since is not None:
            found.append(Detection(stream.agent_id, err_since, n, "error_rate", ("error_rate",)))
        if sat_since is not None:
            found.append(Detection(stream.agent_id, sat_since, n, "saturation", sat_features))
        found.sort(key=lambda d: (d.start, d.rule))
        return found
