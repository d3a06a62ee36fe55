"""The ``/fleet`` slash command's grammar: words in, a named command and its arguments out. Pure.

A wrong or incomplete command is a :class:`Usage` error that carries the command's usage line, so
the reply always says how to write it; nothing here reaches Firestore or Slack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

#: The command's name in the texts below (a workspace may register another: shared/slack/app.py).
COMMAND = "/fleet"
#: Longest silence (the API's limit too).
MAX_SILENCE = timedelta(days=30)
_DURATION = re.compile(r"^(?:(\d{1,3})d)?(?:(\d{1,4})h)?(?:(\d{1,5})m)?$")


@dataclass(frozen=True)
class Spec:
    name: str
    usage: str
    summary: str
    min_args: int = 0
    #: None: the rest of the words are one free-text argument (a reason).
    max_args: int | None = 0
    #: Whether it changes something (and so must not run twice when Slack retries the request).
    mutates: bool = False


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("help", "help", "this list"),
        Spec("status", "status [agent]", "one agent's state, or the fleet's at a glance", max_args=1),
        Spec("agents", "agents [tenant] [status]", "list agents, by tenant and lifecycle status", max_args=2),
        Spec("usage", "usage <agent|tenant>", "spend and tokens this hour, day and month", 1, 1),
        Spec(
            "budget",
            "budget <agent> [set <hourly|daily|monthly> <usd>]",
            "show a budget; set a hard limit (admins), or ask for a raise (operators)",
            1,
            4,
            mutates=True,
        ),
        Spec("pause", "pause <agent> [reason]", "hold an agent: it is told to stop calling its model", 1, None, True),
        Spec("resume", "resume <agent> [reason]", "lift an agent's pause", 1, None, True),
        Spec(
            "quarantine", "quarantine <agent> <reason>", "isolate an agent until an approver releases it", 2, None, True
        ),
        Spec(
            "release",
            "release <agent> [reason]",
            "release a frozen or quarantined agent (approvers), or ask for it (operators)",
            1,
            None,
            True,
        ),
        Spec("approvals", "approvals [tenant]", "pending approval requests", max_args=1),
        Spec(
            "train",
            "train <agent> <name> [gpu=1] [gpu_type=nvidia-l4] [cpu=8] [memory=32] [spot] [hours=2] [priority=5]"
            " [backend=gke|cloudrun|local] [max_cost=40]",
            "submit a training job: estimated, queued, sent to approvers above the tenant's threshold",
            2,
            11,
            mutates=True,
        ),
        Spec("jobs", "jobs [tenant|agent]", "recent training jobs, with why each waits", max_args=1),
        Spec("job", "job <id>", "one training job: state, queue position, cost, history", 1, 1),
        Spec("cancel", "cancel <job> [reason]", "cancel a training job (a running one is stopped)", 1, None, True),
        Spec(
            "enroll",
            "enroll [agent-id|prefix*] [uses] [expiry] [tenant=<tenant>]",
            "an enrollment token for new agents (approvers), shown only to you, once; e.g. `enroll build-* 5 7d`",
            0,
            4,
            mutates=True,
        ),
        Spec("alerts", "alerts [tenant]", "open alerts", max_args=1),
        Spec(
            "silence",
            "silence <agent|tenant|rule|tenant:rule> <duration> [reason]",
            "silence alerts for a while, e.g. 2h, 30m, 1d (at most 30d)",
            2,
            None,
            True,
        ),
        Spec(
            "roles",
            "roles [tenant] | roles <tenant> set <@user> <viewer|operator|approver|admin>"
            " | roles <tenant> remove <@user>",
            "who may do what (admins change it)",
            0,
            4,
            mutates=True,
        ),
    )
}


class Usage(Exception):
    """The command is wrong or incomplete; ``str()`` is what to tell the user."""

    def __init__(self, message: str, spec: Spec | None = None) -> None:
        super().__init__(message)
        self.spec = spec


@dataclass(frozen=True)
class Parsed:
    spec: Spec
    args: tuple[str, ...]
    #: Free text after the fixed arguments (a reason), "" when none.
    rest: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


#: Fixed (positional) arguments before the free-text reason of each command taking one.
_FIXED = {"pause": 1, "resume": 1, "quarantine": 1, "release": 1, "silence": 2, "cancel": 1}


def parse(text: str) -> Parsed:
    """``"pause agent-7 too chatty"`` -> Parsed(pause, ("agent-7",), rest="too chatty")."""
    words = text.split()
    if not words:
        return Parsed(SPECS["help"], ())
    name, args = words[0].lower(), words[1:]
    spec = SPECS.get(name)
    if spec is None:
        raise Usage(f"unknown command `{words[0][:40]}`")
    if len(args) < spec.min_args:
        raise Usage(f"`{name}` needs more: `/fleet {spec.usage}`", spec)
    if spec.max_args is None:
        fixed = _FIXED[name]
        return Parsed(spec, tuple(args[:fixed]), " ".join(args[fixed:]))
    if len(args) > spec.max_args:
        raise Usage(f"too many words for `{name}`: `/fleet {spec.usage}`", spec)
    return Parsed(spec, tuple(args))


def duration(text: str) -> timedelta:
    """``90m``, ``2h``, ``1d``, ``1h30m`` (at most 30 days); a :class:`Usage` error otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise Usage(f"`{text[:20]}` is not a duration: write e.g. 30m, 2h, 1d or 1h30m")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes)
    if value <= timedelta(0) or value > MAX_SILENCE:
        raise Usage("a silence lasts from 1m to 30d")
    return value


def usd(text: str) -> Decimal:
    """A positive amount in USD (``250``, ``$12.50``)."""
    try:
        value = Decimal(text.strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise Usage(f"`{text[:20]}` is not an amount in USD") from None
    if not value.is_finite() or value <= 0 or value > Decimal("1000000000"):
        raise Usage("a budget limit is a positive amount in USD, up to 1,000,000,000")
    return value


#: ``/fleet train`` options: key -> the JobRequest field it sets (``spot`` alone means spot=yes).
TRAIN_OPTIONS = {
    "gpu": "resources.gpu",
    "gpu_type": "resources.gpu_type",
    "cpu": "resources.cpu",
    "memory": "resources.memory_gb",
    "spot": "resources.spot",
    "hours": "max_runtime_s",
    "priority": "priority",
    "backend": "backend",
    "max_cost": "max_cost_usd",
}


def train_options(words: tuple[str, ...]) -> dict[str, str]:
    """``("gpu=1", "spot", "hours=2")`` -> ``{"gpu": "1", "spot": "yes", "hours": "2"}``; unknown keys
    and malformed words are a :class:`Usage` error naming the accepted keys."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower()
        if not sep and key == "spot":
            value = "yes"
        elif not sep or not value:
            raise Usage(f"`{word[:40]}`: write options as key=value ({', '.join(TRAIN_OPTIONS)})", SPECS["train"])
        if key not in TRAIN_OPTIONS:
            raise Usage(f"unknown option `{key[:20]}`; the options are {', '.join(TRAIN_OPTIONS)}", SPECS["train"])
        out[key] = value.strip()
    return out


def help_lines() -> list[str]:
    return [f"`/fleet {spec.usage}`: {spec.summary}" for spec in SPECS.values()]
