"""Event-level evaluation of fleet detectors on a simulated fleet with labelled faults (issue 7, "Measured
quality"): ``python -m shared.ml.evaluate`` prints a markdown report to paste into docs/ml.md.

Scoring is per fault event, not per row, because an operator is paged per episode: an event is caught when a
detection *starts* inside its window ``[start, end + tolerance)`` (drift: ``end + 50``, since a slow ramp is
only visible late), and the delay is counted in heartbeats from the first faulty row. Precision counts the
detections that start in the test period; those matching no event are false alarms.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from shared.ml.data import AgentStream, Detection, Detector, FaultEvent, Fleet
from shared.ml.failure import evaluate as evaluate_failure
from shared.ml.failure_warnings import SLACK
from shared.ml.simulate import FAULT_KINDS, simulate, simulate_failures, simulate_rows
from shared.ml.static_rules import StaticRules

#: Rows after an event's end in which a detection still counts as catching it.
TOLERANCE = 5
#: Drift's extra allowance after its ramp ends (the ramp itself is the whole window).
DRIFT_TOLERANCE = 50
#: "Detected within 3 heartbeats": delay (detection start - event start) of at most this.
PROMPT_DELAY = 3


def window(event: FaultEvent, tolerance: int = TOLERANCE, drift_tolerance: int = DRIFT_TOLERANCE) -> range:
    """The rows where a detection starting counts as catching ``event``."""
    return range(event.start, event.end + (drift_tolerance if event.kind == "drift" else tolerance))


@dataclass(frozen=True)
class KindScore:
    """Recall and delay for one fault kind."""

    events: int
    detected: int
    delays: tuple[int, ...]  # heartbeats from the event's start to its first matching detection

    @property
    def recall(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def median_delay(self) -> float | None:
        return float(np.median(self.delays)) if self.delays else None

    @property
    def p90_delay(self) -> float | None:
        return float(np.percentile(self.delays, 90)) if self.delays else None

    @property
    def within_3(self) -> float | None:
        """Share of *all* events of the kind caught within ``PROMPT_DELAY`` heartbeats (missed ones count)."""
        return sum(d <= PROMPT_DELAY for d in self.delays) / self.events if self.events else None


@dataclass(frozen=True)
class RuleScore:
    """Precision of one rule of a detector (test-period detections only)."""

    detections: int
    matched: int

    @property
    def precision(self) -> float | None:
        return self.matched / self.detections if self.detections else None


@dataclass(frozen=True)
class Report:
    """A detector's event-level scores on one fleet."""

    per_kind: dict[str, KindScore]
    per_rule: dict[str, RuleScore]
    events: int
    detected: int  # events caught
    detections: int  # detections starting in the test period
    matched: int  # of which match an event
    healthy_rows: int  # test rows outside every event's window

    @property
    def recall(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.detections if self.detections else None

    @property
    def false_alarms(self) -> int:
        return self.detections - self.matched

    @property
    def false_alarms_per_1000(self) -> float | None:
        return 1000.0 * self.false_alarms / self.healthy_rows if self.healthy_rows else None


def score(
    fleet: Fleet,
    detections_by_agent: Mapping[str, Sequence[Detection]],
    tolerance: int = TOLERANCE,
    drift_tolerance: int = DRIFT_TOLERANCE,
) -> Report:
    """Match detections to the fleet's fault events (same agent, start inside the event's window)."""
    events_by_agent: dict[str, list[FaultEvent]] = defaultdict(list)
    for event in fleet.events:
        events_by_agent[event.agent_id].append(event)

    first_hit: dict[FaultEvent, int] = {}
    rule_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    detections = matched = 0
    for agent_id, found in detections_by_agent.items():
        windows = [(e, window(e, tolerance, drift_tolerance)) for e in events_by_agent.get(agent_id, [])]
        for detection in found:
            if detection.start < fleet.train_rows:
                continue  # the training period is not scored
            hits = [e for e, rows in windows if detection.start in rows]
            for event in hits:
                if event not in first_hit or detection.start < first_hit[event]:
                    first_hit[event] = detection.start
            detections += 1
            matched += bool(hits)
            rule_counts[detection.rule][0] += 1
            rule_counts[detection.rule][1] += bool(hits)

    per_kind: dict[str, KindScore] = {}
    kinds = [*FAULT_KINDS, *sorted({e.kind for e in fleet.events} - set(FAULT_KINDS))]
    for kind in kinds:
        of_kind = [e for e in fleet.events if e.kind == kind]
        delays = tuple(first_hit[e] - e.start for e in of_kind if e in first_hit)
        per_kind[kind] = KindScore(events=len(of_kind), detected=len(delays), delays=delays)

    healthy_rows = 0
    for agent_id, stream in fleet.streams.items():
        covered = np.zeros(len(stream), dtype=bool)
        for event in events_by_agent.get(agent_id, []):
            rows = window(event, tolerance, drift_tolerance)
            covered[rows.start : rows.stop] = True
        healthy_rows += int(np.count_nonzero(~covered[fleet.train_rows :]))

    return Report(
        per_kind=per_kind,
        per_rule={rule: RuleScore(n, m) for rule, (n, m) in sorted(rule_counts.items())},
        events=len(fleet.events),
        detected=len(first_hit),
        detections=detections,
        matched=matched,
        healthy_rows=healthy_rows,
    )


@dataclass
class DetectorRun:
    """One detector's report on a fleet, with what fitting and scoring cost."""

    name: str
    report: Report
    fit_s: float
    detect_s: float
    rows: int
    detections: dict[str, list[Detection]] = field(repr=False)

    @property
    def us_per_row(self) -> float:
        return 1e6 * self.detect_s / self.rows if self.rows else 0.0


def detect_each(detector: Detector, streams: Mapping[str, AgentStream]) -> dict[str, list[Detection]]:
    """``detect`` over every stream, one at a time."""
    return {agent_id: list(detector.detect(stream)) for agent_id, stream in streams.items()}


def fitted_runs(
    detectors: Sequence[Detector],
    train: Mapping[str, AgentStream],
    streams: Mapping[str, AgentStream],
    detect: Callable[[Detector, Mapping[str, AgentStream]], dict[str, list[Detection]]] = detect_each,
) -> Iterator[tuple[str, dict[str, list[Detection]], float, float]]:
    """Fit each detector on ``train`` and ``detect`` over ``streams``: ``(name, detections, fit s, detect s)``
    per detector, names made unique (a second detector of a name gets a prime)."""
    names: set[str] = set()
    for detector in detectors:
        name = getattr(detector, "name", type(detector).__name__)
        while name in names:
            name += "'"
        names.add(name)
        started = time.perf_counter()
        detector.fit(train)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        found = detect(detector, streams)
        yield name, found, fit_s, time.perf_counter() - started


def run(detectors: Sequence[Detector], fleet: Fleet) -> dict[str, DetectorRun]:
    """Fit each detector on the healthy period of every stream, detect on each full stream, score."""
    train: dict[str, AgentStream] = {a: s.head(fleet.train_rows) for a, s in fleet.streams.items()}
    rows = sum(len(s) for s in fleet.streams.values())
    return {
        name: DetectorRun(name, score(fleet, found), fit_s, detect_s, rows, found)
        for name, found, fit_s, detect_s in fitted_runs(detectors, train, fleet.streams)
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _delay(kind: KindScore) -> str:
    if not kind.delays:
        return "—"
    return f"{_fmt(kind.median_delay, 1)} / {_fmt(kind.p90_delay, 1)}"


def format_markdown(results: Mapping[str, DetectorRun]) -> str:
    """The side-by-side tables: per fault kind, overall, and precision per rule."""
    names = list(results)
    first = next(iter(results.values()))
    lines = [
        "| fault | events | " + " | ".join(f"{n} recall | {n} delay med / p90 (hb) | {n} ≤3 hb" for n in names) + " |",
        "|---|---:|" + "---:|---:|---:|" * len(names),
    ]
    for kind, base in first.report.per_kind.items():
        cells = []
        for name in names:
            score_ = results[name].report.per_kind[kind]
            cells += [_fmt(score_.recall), _delay(score_), _fmt(score_.within_3)]
        lines.append(f"| {kind} | {base.events} | " + " | ".join(cells) + " |")

    lines += ["", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    overall: list[tuple[str, list[str]]] = [
        ("precision", [_fmt(r.report.precision) for r in results.values()]),
        ("recall", [_fmt(r.report.recall) for r in results.values()]),
        ("events caught", [f"{r.report.detected} / {r.report.events}" for r in results.values()]),
        ("detections (test period)", [str(r.report.detections) for r in results.values()]),
        ("false alarms", [str(r.report.false_alarms) for r in results.values()]),
        ("false alarms / 1000 healthy rows", [_fmt(r.report.false_alarms_per_1000, 3) for r in results.values()]),
        ("fit (s)", [_fmt(r.fit_s, 3) for r in results.values()]),
        ("scoring (µs / heartbeat)", [_fmt(r.us_per_row, 1) for r in results.values()]),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in overall]

    lines += ["", "| detector | rule | detections | matched | precision |", "|---|---|---:|---:|---:|"]
    for name, result in results.items():
        for rule, rule_score in result.report.per_rule.items():
            lines.append(
                f"| {name} | {rule} | {rule_score.detections} | {rule_score.matched} | {_fmt(rule_score.precision)} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.ml.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=60)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-share", type=float, default=0.6)
    parser.add_argument("--static-only", action="store_true", help="do not run the learned detector")
    parser.add_argument(
        "--rows-1m", action="store_true", help="also time AnomalyDetector().fit on 1,000,000 healthy rows"
    )
    parser.add_argument(
        "--failure",
        action="store_true",
        help="instead: failure prediction, trained on a simulated fleet and tested on another (seed + 1)",
    )
    parser.add_argument("--failure-agents", type=int, default=80)
    parser.add_argument("--failure-seed", type=int, default=13)
    parser.add_argument("--horizon", type=int, default=10, help="failure prediction horizon in heartbeats")
    return parser


def failure_report(agents: int, rows: int, seed: int, horizon: int) -> str:
    """Failure prediction (issue 7): train on the fleet of ``seed``, test on the fleet of ``seed + 1``."""
    train = simulate_failures(agents, rows, seed=seed)
    test = simulate_failures(agents, rows, seed=seed + 1)
    started = time.perf_counter()
    model, sc = evaluate_failure(train, test, horizon=horizon)
    elapsed = time.perf_counter() - started
    lines = [
        "### Failure prediction\n",
        f"Trained on {agents} agents x {rows} heartbeats (seed {seed}, {len(train[1])} failures), tested on "
        f"another fleet (seed {seed + 1}, {len(test[1])} failures); horizon {horizon} heartbeats, threshold "
        f"{model.threshold:.3f} (chosen on the training fleet), persistence 2; {elapsed:.1f} s. A warning is "
        f"correct when a failure starts within {horizon + SLACK} rows after it.\n",
        "| metric | value |",
        "|---|---|",
        f"| failures warned before they start | {sc.warned}/{sc.failures} ({_fmt(sc.share_warned)}) |",
        f"| median lead time (heartbeats) | {_fmt(sc.median_lead, 1)} |",
        f"| precision of warnings | {sc.correct}/{sc.warnings} ({_fmt(sc.precision)}) |",
        f"| false warnings per 1000 healthy rows | {_fmt(sc.false_per_1000, 3)} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the fleet, run the static rules (and the learned detector when it is importable), print markdown."""
    args = _parser().parse_args(argv)
    command = " ".join(["python -m shared.ml.evaluate", *(sys.argv[1:] if argv is None else argv)])
    print(f"## Evaluation {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
    print(f"Command: `{command}`\n")
    if args.failure:
        print(failure_report(args.failure_agents, args.rows, args.failure_seed, args.horizon))
        return 0

    started = time.perf_counter()
    fleet = simulate(args.agents, args.rows, args.train_rows, seed=args.seed, fault_share=args.fault_share)
    simulated_s = time.perf_counter() - started
    faulty = len({e.agent_id for e in fleet.events})
    print(
        f"Fleet: {args.agents} agents x {args.rows} heartbeats (seed {args.seed}), trained on the first "
        f"{fleet.train_rows}; {len(fleet.events)} labelled faults in {faulty} agents; simulated in "
        f"{simulated_s:.2f} s. Matching: a detection starting in [start, end + {TOLERANCE}) of an event "
        f"(drift: end + {DRIFT_TOLERANCE}); delays in heartbeats from the first faulty row.\n"
    )

    detectors: list[Detector] = [StaticRules()]
    anomaly_cls = None
    if not args.static_only:
        try:
            # lazy: the learned detector is optional here; the static rules still run without it (tested)
            from shared.ml.anomaly import AnomalyDetector

            anomaly_cls = AnomalyDetector
            detectors.append(AnomalyDetector())
        except ImportError as exc:
            print(f"(learned detector not available: {exc}; static rules only)\n")
    print(format_markdown(run(detectors, fleet)))

    if args.rows_1m:
        print("\n### Retraining on 1,000,000 heartbeat rows\n")
        if anomaly_cls is None:
            print("skipped: the learned detector is not available")
        else:
            started = time.perf_counter()
            streams = simulate_rows(1_000_000)
            generated_s = time.perf_counter() - started
            rows = sum(len(s) for s in streams.values())
            started = time.perf_counter()
            anomaly_cls().fit(streams)
            fit_s = time.perf_counter() - started
            print(
                f"`AnomalyDetector().fit`: {fit_s:.1f} s on {rows:,} rows of {len(streams)} agents "
                f"(generated in {generated_s:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
