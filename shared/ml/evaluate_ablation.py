"""What each part of the anomaly detector does (issue 24): ``python -m shared.ml.evaluate_ablation`` runs the
detector with one part taken away at a time on the independent mixed fleet (held-out seeds) and, with
``--existing``, on the existing simulator, and prints one markdown row per variant.

Variants (each fitted as usual, then changed; nothing else differs):

- ``full``: the detector as it serves;
- ``forest only``: no envelope (every bound infinite, no regimes), the forest's per-agent thresholds alone;
- ``envelope only``: no forest (thresholds infinite), the per-agent envelopes alone;
- ``fleet-wide bounds``: every agent judged by the fleet's bounds and the fleet's (highest) threshold, and no
  regimes, as before issue 24 (one envelope and one floor for a mixed fleet);
- ``no regimes``: agents with two activity regimes judged on the relative features as any other;
- ``no kind shrinkage``: each agent by its own bounds only; agents the model never saw by the fleet's;
- ``no log-ratio features``: the ``lr_``/``lref_`` features, cost per token, tokens per CPU and unexplained
  CPU never checked;
- ``all two-sided``: every feature checked on both sides and CPU on its own (no traffic rules).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np

from shared.ml import anomaly_calibration as cal
from shared.ml import features as fe
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_calibration import Bounds, Calibration
from shared.ml.data import AgentStream
from shared.ml.evaluate import run as run_existing
from shared.ml.evaluate_mixed import HELD_OUT_SEEDS, aggregate, evaluate_seed
from shared.ml.simulate import simulate

Change = Callable[[Calibration], None]


def _unbound(c: Calibration, features: Sequence[int]) -> None:
    idx = list(features)
    for lo, hi in ((c.lo, c.hi), (c.kind_lo, c.kind_hi), (c.fleet.lo, c.fleet.hi)):
        lo[..., idx], hi[..., idx] = -np.inf, np.inf


def _no_forest(c: Calibration) -> None:
    c.thresholds[:], c.kind_thresholds[:] = np.inf, np.inf
    c.fleet = Bounds(c.fleet.lo, c.fleet.hi, np.inf, "fleet")


def _fleet_wide(c: Calibration) -> None:
    c.agents, c.kinds = {}, {}


def _no_kinds(c: Calibration) -> None:
    c.kinds = {}


class Variant(AnomalyDetector):
    """The detector with ``change`` applied to its calibration after each fit (``fit_kwargs``: detector
    parameters, ``two_sided``: the one-sided rules off while fitting)."""

    def __init__(
        self, label: str, change: Change | None = None, two_sided: bool = False, **kwargs: float | bool
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name, self._change, self._two_sided = label, change, two_sided

    def fit(self, streams: dict[str, AgentStream]) -> None:  # type: ignore[override]
        saved = (cal.NO_CEILING, cal.NO_FLOOR, cal.UNBOUNDED, cal._CPU_ALONE)
        if self._two_sided:
            cal.NO_CEILING, cal.NO_FLOOR, cal.UNBOUNDED, cal._CPU_ALONE = (), (), (fe._I_GAP,), ()
        try:
            super().fit(streams)
        finally:
            cal.NO_CEILING, cal.NO_FLOOR, cal.UNBOUNDED, cal._CPU_ALONE = saved
        if self._change is not None:
            self._change(self.calibration)


def variants() -> list[AnomalyDetector]:
    """The detector and each ablation of it."""
    return [
        Variant("full"),
        Variant("forest only", lambda c: _unbound(c, range(fe.N_FEATURES)), use_regimes=False),
        Variant("envelope only", _no_forest),
        Variant("fleet-wide bounds", _fleet_wide, use_regimes=False),
        Variant("no regimes", use_regimes=False),
        Variant("no kind shrinkage", _no_kinds, shrink_rows=0.0),
        Variant("no log-ratio features", lambda c: _unbound(c, (*fe.LOG_LIKE,))),
        Variant("all two-sided", two_sided=True),
    ]


def _row(name: str, precision: float | None, recall: float | None, fa: float | None, extra: str) -> str:
    def f(v: float | None, d: int = 2) -> str:
        return "—" if v is None else f"{v:.{d}f}"

    return f"| {name} | {f(precision)} | {f(recall)} | {f(fa, 3)} | {extra} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.ml.evaluate_ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_SEEDS))
    parser.add_argument("--existing", action="store_true", help="also on the existing simulator (a day of history)")
    args = parser.parse_args(argv)
    print(f"#### Ablation on the mixed fleet (seeds {', '.join(map(str, args.seeds))})\n")
    print("| variant | precision | recall | FA / 1k | recall per fault kind |\n|---|---:|---:|---:|---|")
    runs = [evaluate_seed(variants(), seed) for seed in args.seeds]
    for name, o in aggregate(runs).items():
        kinds = sorted({e.kind for e in o.events})
        per = ", ".join(
            f"{k} {sum(e.delay is not None for e in o.events if e.kind == k) / sum(e.kind == k for e in o.events):.2f}"
            for k in kinds
        )
        print(_row(name, o.precision, o.recall(), o.false_per_1000(), per))
    if args.existing:
        print("\n#### Ablation on the existing simulator (seed 7, 2,880 rows of history)\n")
        print("| variant | precision | recall | FA / 1k | events caught |\n|---|---:|---:|---:|---|")
        results = run_existing(variants(), simulate(60, 3780, 2880, seed=7))
        for name, r in results.items():
            rep = r.report
            print(_row(name, rep.precision, rep.recall, rep.false_alarms_per_1000, f"{rep.detected} / {rep.events}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
