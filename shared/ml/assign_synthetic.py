"""Synthetic task outcomes for the task-assignment model (shared/ml/assign.py), and its figure.

``synthetic_outcomes``: agents whose true success depends on the capability and on their load, assigned
tasks at random, their features computed by the production code (``assign.feature_values``).
``python -m shared.ml.assign_synthetic`` prints the model against the heuristic on them (the figure of
docs/ml.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from shared.domain.assignment_agents import AgentSnapshot, AgentStats, RecordedOutcome
from shared.domain.assignment_tasks import Priority, Task
from shared.domain.lifecycle import State
from shared.ml.assign import feature_values, train_and_evaluate

SYNTHETIC_CAPABILITIES = ("chat", "code", "search", "vision", "audio")


@dataclass(frozen=True)
class SyntheticAgent:
    """An agent of the simulation and its hidden truth."""

    agent_id: str
    capabilities: tuple[str, ...]
    #: True success probability per capability at no load.
    skill: Mapping[str, float]
    #: Success lost per active task above two.
    load_penalty: float
    #: Actual / estimated duration.
    speed: float
    latency_ms: float
    cost_usd: float
    interval_s: float = 30.0


def synthetic_agents(n: int, rng: np.random.Generator) -> list[SyntheticAgent]:
    agents = []
    for i in range(n):
        k = int(rng.integers(2, len(SYNTHETIC_CAPABILITIES) + 1))
        caps = tuple(sorted(rng.choice(SYNTHETIC_CAPABILITIES, size=k, replace=False).tolist()))
        agents.append(
            SyntheticAgent(
                agent_id=f"sim-{i:03d}",
                capabilities=caps,
                skill={c: float(rng.uniform(0.35, 0.98)) for c in caps},
                load_penalty=float(rng.uniform(0.0, 0.09)),
                speed=float(rng.uniform(0.6, 2.0)),
                latency_ms=float(rng.uniform(100, 4000)),
                cost_usd=float(rng.uniform(0.001, 0.05)),
            )
        )
    return agents


def synthetic_outcomes(
    n: int = 4000,
    *,
    agents: int = 12,
    seed: int = 0,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    tenant: str = "sim",
) -> list[RecordedOutcome]:
    """Outcomes of ``n`` tasks, each assigned at random among the capable agents (logged data that covers
    every agent). An agent's true success is its skill at the task's weakest capability, less its load
    penalty above two active tasks; a task with a deadline it overruns fails more often. Loads wander;
    the heartbeat's error rate reflects the current success a little. Features are computed by
    :func:`feature_values` from the running ``AgentStats``, as in production."""
    rng = np.random.default_rng(seed)
    pool = synthetic_agents(agents, rng)
    stats = {a.agent_id: AgentStats() for a in pool}
    loads = rng.integers(0, 6, size=len(pool)).astype(np.float64)
    index = {a.agent_id: i for i, a in enumerate(pool)}
    priorities = list(Priority)
    out: list[RecordedOutcome] = []
    now = start
    for i in range(n):
        now += timedelta(seconds=float(rng.exponential(30.0)))
        loads = np.clip(loads + rng.integers(-1, 2, size=len(pool)), 0.0, 10.0)  # loads wander in [0, 10]
        agent = pool[int(rng.integers(len(pool)))]
        k = 1 if rng.random() < 0.7 else 2
        required = tuple(sorted(rng.choice(agent.capabilities, size=min(k, len(agent.capabilities)), replace=False)))
        capable = [a for a in pool if set(required) <= set(a.capabilities)]
        agent = capable[int(rng.integers(len(capable)))]
        load = float(loads[index[agent.agent_id]])
        estimate = float(rng.lognormal(mean=5.0, sigma=1.0))
        deadline = now + timedelta(seconds=estimate * float(rng.uniform(0.7, 4.0))) if rng.random() < 0.5 else None
        task = Task(
            task_id=f"t{i:06d}",
            tenant=tenant,
            capabilities=required,
            priority=priorities[int(rng.integers(len(priorities)))],
            deadline=deadline,
            estimated_duration_s=estimate,
        )
        p_true = min(agent.skill[c] for c in required) - agent.load_penalty * max(0.0, load - 2.0)
        p_true = float(np.clip(p_true, 0.02, 0.99))
        snapshot = AgentSnapshot(
            agent_id=agent.agent_id,
            tenant=tenant,
            status=State.BUSY if load > 0 else State.IDLE,
            capabilities=frozenset(agent.capabilities),
            resources={"cpu": 2.0, "memory_gb": 4.0, "gpu": 0.0},
            metrics={
                "active_tasks": load,
                "cpu_pct": float(np.clip(8.0 * load + rng.normal(15, 5), 0, 100)),
                "memory_pct": float(np.clip(rng.normal(50, 10), 0, 100)),
                "error_rate": float(np.clip((1 - p_true) * 0.3 + rng.normal(0, 0.05), 0, 1)),
                "latency_ms_p95": agent.latency_ms * float(rng.uniform(0.8, 1.2)),
            },
            last_heartbeat_at=now - timedelta(seconds=float(rng.uniform(0, agent.interval_s))),
            heartbeat_interval_s=agent.interval_s,
        )
        st = stats[agent.agent_id]
        features = feature_values(snapshot, st, task, now)
        duration = estimate * agent.speed * float(rng.lognormal(0.0, 0.2))
        late = deadline is not None and now + timedelta(seconds=duration) > deadline
        success = bool(rng.random() < p_true * (0.4 if late else 1.0))
        at = now + timedelta(seconds=duration)
        out.append(RecordedOutcome(task.task_id, tenant, agent.agent_id, success, at, features))
        cost = agent.cost_usd * float(rng.uniform(0.8, 1.2))
        stats[agent.agent_id] = st.with_outcome(
            success=success,
            capabilities=required,
            at=at,
            estimated_duration_s=estimate,
            duration_s=duration,
            cost_nanos=int(cost * 1e9),
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the model against the heuristic on synthetic outcomes (the figure of docs/ml.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--outcomes", type=int, default=4000)
    parser.add_argument("--agents", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    outcomes = synthetic_outcomes(args.outcomes, agents=args.agents, seed=args.seed)
    model, metrics = train_and_evaluate(outcomes)
    print(f"task assignment: {metrics['train']} training and {metrics['holdout']} held-out synthetic outcomes")
    for name in ("heuristic", "model"):
        m = metrics[name]
        print(
            f"  {name:9s}  brier {m['brier']:.4f}  log loss {m['log_loss']:.4f}  "
            f"accuracy {m['accuracy']:.3f}  auc {m['auc']:.3f}  (n {m['n']})"
        )
    print(f"  model {model.version}: {len(model.to_bytes()) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
