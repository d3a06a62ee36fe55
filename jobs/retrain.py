"""The retraining job (issue 7): ``python -m jobs.retrain --run-id <id>``.

Launched once a day by the ``model-retrain`` schedule (shared/ml/runs.py) as a Cloud Run job, locally as
a process. It reads the fleet's heartbeat history (and the recorded task outcomes) from Firestore, trains
new models, evaluates each next to the model in service on the same held-out recent data
(shared/ml/retrain.py), stores every new version's bytes in Cloud Storage and its record in the registry
(``models/{kind}/versions/{version}``), and promotes a version only when it is at least as good. The run's
outcome per kind is recorded in ``model_runs/{run_id}``; one JSON line per kind and one for the run go to
the log. A kind that fails is recorded as such and the others go on (the run is then ``partial``). Exit
status 0 when the run completed (whether or not anything was promoted), 1 when it failed or was partial.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from shared.ml import provenance, retrain, serving
from shared.platform import logs, metering
from shared.store import agents as agent_store
from shared.store import model_blobs, tasks
from shared.store import models as registry

log = logs.get_logger("jobs.retrain")

KINDS = ("anomaly", "failure", "task_assignment")


def _current(kind: str) -> tuple[Any, str | None, str]:
    """The model in service (loaded from its bytes, without its scikit-learn objects), its version, and why
    it could not be loaded ("" when it was): a model this code cannot read any more (a feature change), or
    whose scorer fails its stored self-check (``self_check_failed``), must not stop the retraining that
    replaces it."""
    pointer = registry.pointer(kind) or {}
    version = pointer.get("current")
    if not version:
        return None, None, ""
    try:
        return serving.fetch(kind, pointer)[0], str(version), ""
    except (ValueError, KeyError, model_blobs.CorruptModel) as exc:
        failure = provenance.load_failure(exc)
        if failure["reason"] == provenance.SELF_CHECK_FAILED:
            logs.log(
                log,
                "the model in service fails its self-check; compared as none",
                logging.WARNING,
                kind=kind,
                version=version,
                **failure,
            )
        return None, str(version), f"the version in service ({version}) could not be loaded: {exc}"[:300]


def _publish(cand: Any, run_id: str, now: datetime) -> dict[str, Any]:
    """Store a trained candidate (bytes, record) and promote it when it won; what happened, for the run."""
    outcome: dict[str, Any] = {"decision": "not_trained", "reason": cand.reason}
    if cand.model is None or cand.version is None:
        return outcome
    uri = model_blobs.put(cand.kind, cand.version, cand.data)
    record = {**cand.record(), "uri": uri, "run_id": run_id, "created_at": now, "promoted": False}
    if hasattr(cand.model, "metadata"):
        meta = cand.model.metadata()
        record["features"] = meta.get("features")
        record["params"] = meta.get("params")
        record["trained_with"] = meta.get("trained_with")
    registry.record(cand.kind, cand.version, record)
    outcome = {"version": cand.version, "decision": record["decision"], "reason": cand.reason, "metrics": cand.metrics}
    if cand.promote:
        if registry.promote(cand.kind, cand.version, uri, cand.sha256, expected=cand.current_version, at=now):
            outcome["decision"] = "promoted"
        else:
            outcome["decision"] = "keep_current"
            outcome["reason"] = "another run promoted a version meanwhile; not compared with it"
            registry.update(cand.kind, cand.version, {"decision": "keep_current", "reason": outcome["reason"]})
    return outcome


def _retrain_kind(kind: str, data: Any, now: datetime, run_id: str) -> dict[str, Any]:
    current, current_version, unreadable = _current(kind)
    if kind == "anomaly":
        cand = retrain.retrain_anomaly(data, current, current_version)
    elif kind == "failure":
        cand = retrain.retrain_failure(data, current, current_version)
    else:
        cand = retrain.retrain_task(tasks.recent_outcomes(None), current, current_version)
    if unreadable:
        cand.reason = f"{unreadable}; {cand.reason}"
    return _publish(retrain.package(cand, now), run_id, now)


def run(run_id: str, kinds: tuple[str, ...] = KINDS, now: datetime | None = None) -> dict[str, Any]:
    """One retraining run; returns its record (also stored in ``model_runs/{run_id}``)."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    registry.update_run(run_id, {"run_id": run_id, "state": "running", "started_at": now, "kinds": list(kinds)})
    with metering.metered() as meter:
        history = agent_store.fleet_history()
        streams = retrain.streams_from_samples(history)
        young = retrain.young(streams)  # less than a day of history: left out of the fit
        data = retrain.split(streams)
        read_s = time.perf_counter() - started
        results: dict[str, Any] = {}
        for kind in kinds:
            if kind in ("anomaly", "failure") and data is None:  # task assignment learns from outcomes
                results[kind] = {
                    "decision": "not_trained",
                    "reason": f"no agent has {retrain.MIN_HISTORY_S / 3600:g} h of heartbeats with enough metrics "
                    f"({len(young)} with less left out)",
                }
                continue
            kind_started = time.perf_counter()
            try:
                results[kind] = _retrain_kind(kind, data, now, run_id)
            except Exception as exc:  # one kind's trouble must not cost the others their retraining
                results[kind] = {"decision": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            results[kind]["seconds"] = round(time.perf_counter() - kind_started, 2)
            logs.log(
                log,
                f"retrain {kind}: {results[kind]['decision']}",
                logging.INFO,
                kind=kind,
                run_id=run_id,
                **{k: v for k, v in results[kind].items() if k != "metrics"},
            )
    failed = [k for k, r in results.items() if r["decision"] == "failed"]
    record = {
        "state": "partial" if failed else "succeeded",
        "finished_at": datetime.now(UTC),
        "results": results,
        "history": {
            "agents": len(history),
            "agents_used": 0 if data is None else len(data.streams),
            "agents_young": len(young),
            "rows_used": 0 if data is None else data.rows,
            "read_seconds": round(read_s, 2),
        },
        "seconds": round(time.perf_counter() - started, 2),
        "firestore_reads": meter.reads,
        "firestore_writes": meter.writes,
    }
    registry.update_run(run_id, record)
    logs.log(
        log,
        "retrain run done",
        logging.INFO,
        run_id=run_id,
        seconds=record["seconds"],
        firestore_reads=meter.reads,
        firestore_writes=meter.writes,
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default=None, help="the run's id (default: manual-<UTC time>)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    run_id = args.run_id or f"manual-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    try:
        record = run(run_id, kinds)
    except Exception as exc:
        logs.log(
            log,
            "retrain run failed",
            logging.ERROR,
            run_id=run_id,
            error=f"{type(exc).__name__}: {exc}",
            exception=traceback.format_exc()[-3000:],
        )
        try:
            registry.update_run(
                run_id,
                {"state": "failed", "finished_at": datetime.now(UTC), "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
        except Exception as again:  # Firestore itself is the trouble: the log line above says why
            logs.log(log, "run not marked failed", logging.ERROR, run_id=run_id, error=type(again).__name__)
        return 1
    print(json.dumps({"run_id": run_id, **record}, default=str))
    return 0 if record["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
