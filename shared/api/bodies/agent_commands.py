"""The REST API's bodies for an agent's remediation commands: the request an operator sends and the tracked
commands with their state (shared/domain/agent_actions.py)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.api.bodies.common import Reason, Timestamp, View
from shared.domain import agent_actions


class RemediationCommand(StrEnum):
    RESTART = "restart"
    STOP = "stop"
    DRAIN = "drain"
    THROTTLE = "throttle"
    CLEAR_CACHE = "clear_cache"
    RESUME_WORK = "resume_work"


class CommandState(StrEnum):
    SENT = agent_actions.SENT
    ACKNOWLEDGED = agent_actions.ACKNOWLEDGED
    DONE = agent_actions.DONE
    FAILED = agent_actions.FAILED
    UNACKNOWLEDGED = agent_actions.UNACKNOWLEDGED


class CommandRequest(BaseModel):
    """A remediation command for one agent (``stop`` needs the approver role)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: RemediationCommand
    reason: Reason
    deadline_s: int | None = Field(
        default=None,
        ge=agent_actions.MIN_DEADLINE_S,
        le=agent_actions.MAX_DEADLINE_S,
        description=f"Seconds the agent has to carry it out (default {agent_actions.DEFAULT_DEADLINE_S}); "
        "not acknowledged by then, it is re-sent once, then escalated.",
    )
    calls_per_minute: int | None = Field(default=None, ge=0, le=1_000_000, description="throttle only: the cap.")
    until: Timestamp | None = Field(default=None, description="throttle: when the cap ends (none: until resume_work).")

    @model_validator(mode="after")
    def _throttle_arguments(self) -> CommandRequest:
        # A bad argument is the caller's error (400), not a conflict with the agent's state (409).
        if self.command is RemediationCommand.THROTTLE and self.calls_per_minute is None:
            raise ValueError("throttle needs calls_per_minute")
        if self.command is not RemediationCommand.THROTTLE and (self.calls_per_minute is not None or self.until):
            raise ValueError("calls_per_minute and until belong to throttle")
        return self


class CommandView(View):
    """A command sent to the agent and how far the agent got with it."""

    command_id: str
    command: str
    state: CommandState
    origin: str = Field(description='"operator", "bulk" or "policy:<rule>".')
    actor: str
    reason: str = ""
    sent_at: Timestamp
    deadline: Timestamp = Field(description="When it must be acknowledged (moved on a re-send).")
    attempts: int = Field(description="Times it was sent (the first send and re-sends).")
    calls_per_minute: int | None = None
    until: Timestamp | None = None
    detail: str | None = Field(default=None, description="The agent's word on it (why it failed).")
    acked_at: Timestamp | None = None
    done_at: Timestamp | None = None
    episode: str | None = Field(default=None, description="policy: the alert episode it was sent for.")


class CommandList(View):
    agent_id: str
    tenant: str
    commands: list[CommandView] = Field(description="Newest first.")
    approval_id: str | None = Field(
        default=None, description="A stop of a critical agent (202): the approval request it waits for."
    )


def command_views(commands: dict[str, dict[str, Any]]) -> list[CommandView]:
    return [
        CommandView.model_validate({**entry, "command_id": cid}) for cid, entry in agent_actions.newest_first(commands)
    ]
