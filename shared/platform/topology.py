"""Reads topology.yaml, the one manifest of topics, subscriptions, functions, schedules and secrets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

MANIFEST_ENV = "FLEET_TOPOLOGY"
DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "topology.yaml"


@dataclass(frozen=True)
class Topic:
    name: str
    event_type: str | None = None
    dead_letter: bool = False
    local_only: bool = False
    #: Carries a scheduler job's ticks (see Schedule).
    tick: bool = False
    #: Published by the functions themselves (work handed over to Pub/Sub), never by agents.
    internal: bool = False


@dataclass(frozen=True)
class Function:
    name: str
    entry_point: str
    signature: str
    public: bool = False
    memory: str = "256Mi"
    timeout_s: int = 60
    min_instances: int = 0
    max_instances: int = 10
    local_only: bool = False
    secrets: tuple[str, ...] = ()
    #: Topics the function publishes to (Terraform grants the publisher role on these only).
    publishes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subscription:
    name: str
    topic: str
    push_to: str
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5
    ack_deadline_s: int = 60
    min_backoff_s: int = 10
    max_backoff_s: int = 600
    local_only: bool = False


@dataclass(frozen=True)
class Schedule:
    """A Cloud Scheduler job: at each ``cron`` time (in ``time_zone``) it publishes ``{"job": name}``
    to ``topic``, which a push subscription delivers to ``function``."""

    name: str
    cron: str
    time_zone: str
    topic: str
    function: str
    description: str = ""
    #: A tick delivered later than this (seconds after it was published) is skipped.
    max_age_s: int = 300


@dataclass(frozen=True)
class Secret:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Topology:
    topics: tuple[Topic, ...]
    functions: tuple[Function, ...]
    subscriptions: tuple[Subscription, ...]
    schedules: tuple[Schedule, ...] = ()
    secrets: tuple[Secret, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def topic(self, name: str) -> Topic:
        return _by_name(self.topics, name, "topic")

    def function(self, name: str) -> Function:
        return _by_name(self.functions, name, "function")

    def topic_for(self, event_type: str) -> Topic:
        for topic in self.topics:
            if topic.event_type == event_type:
                return topic
        raise KeyError(f"no topic carries event type {event_type!r}")

    def schedule(self, name: str) -> Schedule:
        return _by_name(self.schedules, name, "schedule")

    def subscriptions_to(self, function_name: str) -> list[Subscription]:
        return [s for s in self.subscriptions if s.push_to == function_name]

    def deployed(self) -> Topology:
        """The topology without local-only parts (the benchmark baseline), as Terraform sees it."""
        return Topology(
            topics=tuple(t for t in self.topics if not t.local_only),
            functions=tuple(f for f in self.functions if not f.local_only),
            subscriptions=tuple(s for s in self.subscriptions if not s.local_only),
            schedules=self.schedules,
            secrets=self.secrets,
            raw=self.raw,
        )


def _by_name(items: tuple[Any, ...], name: str, kind: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no {kind} named {name!r} in the topology manifest")


def parse(data: dict[str, Any]) -> Topology:
    functions = []
    for f in data.get("functions", []):
        f = dict(f)
        f["secrets"] = tuple(f.get("secrets", ()))
        f["publishes"] = tuple(f.get("publishes", ()))
        functions.append(Function(**f))
    topology = Topology(
        topics=tuple(Topic(**t) for t in data.get("topics", [])),
        functions=tuple(functions),
        subscriptions=tuple(Subscription(**s) for s in data.get("subscriptions", [])),
        schedules=tuple(Schedule(**s) for s in data.get("schedules") or ()),
        secrets=tuple(Secret(**s) for s in data.get("secrets") or ()),
        raw=data,
    )
    _check(topology)
    return topology


def _check(topology: Topology) -> None:
    """Refuse a manifest that names something it does not define."""
    topics = {t.name for t in topology.topics}
    functions = {f.name for f in topology.functions}
    for name in topics | functions:
        if len(name) < 3:
            raise ValueError(f"{name!r}: names need at least 3 characters")
    for sub in topology.subscriptions:
        if sub.topic not in topics:
            raise ValueError(f"subscription {sub.name} reads unknown topic {sub.topic}")
        if sub.push_to not in functions:
            raise ValueError(f"subscription {sub.name} pushes to unknown function {sub.push_to}")
        if sub.dead_letter_topic and sub.dead_letter_topic not in topics:
            raise ValueError(f"subscription {sub.name} names unknown dead-letter topic {sub.dead_letter_topic}")
    delivered = {(s.topic, s.push_to) for s in topology.subscriptions}
    for job in topology.schedules:
        if (job.topic, job.function) not in delivered:
            raise ValueError(f"schedule {job.name}: no subscription delivers {job.topic} to {job.function}")
        if not topology.topic(job.topic).tick:
            raise ValueError(f"schedule {job.name}: topic {job.topic} is not marked `tick: true`")
    for fn in topology.functions:
        for name in fn.publishes:
            if name not in topics:
                raise ValueError(f"function {fn.name} publishes to unknown topic {name}")
    secrets = {s.name for s in topology.secrets}
    for fn in topology.functions:
        for name in fn.secrets:
            if name not in secrets:
                raise ValueError(f"function {fn.name} reads undeclared secret {name}")


@cache
def load(path: str | None = None) -> Topology:
    import yaml

    manifest = Path(path or os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)
    with manifest.open() as handle:
        return parse(yaml.safe_load(handle))
