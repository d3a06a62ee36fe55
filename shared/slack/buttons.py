"""Button clicks in Slack: Approve and Deny on approval requests, Acknowledge and Snooze on alerts.

Each takes the interactive payload Slack posted (``block_actions``) and answers within Slack's 3
seconds: the decision is one conditional write; what follows it (the effect, the message edit, the
requester's answer) is handed to Pub/Sub by shared.services.approvals. An alert's acknowledgement and snooze
edit the alert's message here (one Web API call). The clicker gets an ephemeral note saying what
happened or why nothing did; refusals are audited.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from shared.domain import approval_messages, learned, notices, roles
from shared.domain import episodes as episode_rules
from shared.domain.audit import AuditEntry
from shared.domain.roles import Action
from shared.domain.silences import Silence, snooze_id
from shared.platform import logs
from shared.services import agent_controls, approvals
from shared.slack import web_api
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import roles as role_store
from shared.store import slack_requests

log = logs.get_logger("slack.actions")

#: Snooze buttons: action id -> how long.
SNOOZES = {f"{notices.SNOOZE}_{label}": timedelta(hours=hours) for label, hours in (("1h", 1), ("4h", 4), ("24h", 24))}


@dataclasses.dataclass(frozen=True)
class Click:
    """The parts of a ``block_actions`` payload a handler needs (validated: anything missing is a
    malformed payload)."""

    action_id: str
    value: str
    user_id: str
    user_names: tuple[str, ...]
    channel: str
    message_ts: str
    message_blocks: list[dict[str, Any]]
    message_text: str
    trigger_id: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Click:
        action = (body.get("actions") or [{}])[0]
        user = body.get("user") or {}
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or ""
        message = body.get("message") or {}
        user_id = str(user.get("id") or "")
        if not user_id or not isinstance(action, dict) or not action.get("action_id"):
            raise ValueError("a block_actions payload names its user and action")
        return cls(
            action_id=str(action["action_id"]),
            value=str(action.get("value") or ""),
            user_id=user_id,
            user_names=tuple(str(user.get(k) or "") for k in ("username", "name") if user.get(k)),
            channel=str(channel),
            message_ts=str(message.get("ts") or (body.get("container") or {}).get("message_ts") or ""),
            message_blocks=list(message.get("blocks") or []),
            message_text=str(message.get("text") or ""),
            trigger_id=str(body.get("trigger_id") or action.get("action_ts") or ""),
        )


def person(who: object) -> str:
    """Who did something, as a Slack message shows it: a Slack user id as a mention (``<@U123>``), anything
    else (``api:<key name>``: an acknowledgement through the API or the console) as escaped plain text."""
    text = str(who)
    return f"<@{text}>" if roles.USER_ID.fullmatch(text) else notices.escape(text)


def _tell(click: Click, text: str) -> None:
    """An ephemeral note to the clicker, in the message's channel; best effort."""
    if not click.channel:
        return
    try:
        web_api.ephemeral(click.channel, click.user_id, text)
    except (web_api.SlackUnavailable, web_api.SlackRefused) as exc:
        logs.log(log, f"could not tell {click.user_id}: {exc}", user_id=click.user_id)


def once(click: Click, now: datetime, act: Any) -> None:
    """Run ``act()`` once per click: Slack's retry of the same request only repeats the note."""
    key = f"act.{click.trigger_id or click.action_id + '.' + click.value + '.' + click.user_id}"
    claim = slack_requests.begin(key, now)
    if claim.state == "done" and claim.reply:
        _tell(click, str(claim.reply.get("text") or ""))
        return
    if claim.state != "new":
        return
    try:
        text = act()
    except Exception:
        slack_requests.abandon(key)  # Slack's retry acts again instead of waiting out the claim
        raise
    slack_requests.finish(key, {"text": text})
    _tell(click, text)


def on_decision(click: Click, now: datetime) -> None:
    """Approve or Deny."""
    approve = click.action_id == approval_messages.APPROVE

    def act() -> str:
        outcome = approvals.decide(
            click.value, user_id=click.user_id, user_names=click.user_names, approve=approve, now=now
        )
        return outcome.text

    once(click, now, act)


def _refuse(click: Click, now: datetime, action: str, target: str, tenant: str | None, reason: str) -> str:
    audit_store.append(
        AuditEntry(
            id=f"slack.{click.trigger_id or now.timestamp()}.{action}",
            at=now,
            actor=f"slack:{click.user_id}",
            action=action,
            target=target,
            outcome="refused",
            tenant=tenant,
            details={"reason": reason},
        )
    )
    return f"🚫 Nothing changed: {reason}."


def _with_note(click: Click, note: str, *, drop: tuple[str, ...]) -> list[dict[str, Any]]:
    """The clicked message's blocks, without the buttons in ``drop``, with ``note`` added as context."""
    blocks = []
    for block in click.message_blocks:
        if block.get("type") == "actions":
            kept = [e for e in block.get("elements") or [] if e.get("action_id") not in drop]
            if not kept:
                continue
            block = {**block, "elements": kept}
        blocks.append(block)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    return blocks


def on_alert(click: Click, now: datetime) -> None:
    """Acknowledge (reminders stop; the message says who) or Snooze (a silence until then)."""

    def act() -> str:
        episode_id = click.value
        episode = episode_store.get(episode_id) if episode_rules.EPISODE_ID.match(episode_id) else None
        if episode is None:
            return _refuse(click, now, "alert.click", episode_id[:300], None, "that alert episode was not found")
        tenant = str(episode.get("tenant") or "")
        snooze = SNOOZES.get(click.action_id)
        action = Action.SILENCE if snooze else Action.ACKNOWLEDGE
        role = role_store.role_in(click.user_id, tenant)
        audit_action = "alert.snooze" if snooze else "alert.acknowledge"
        if not roles.allows(role, action):
            return _refuse(click, now, audit_action, episode_id, tenant, roles.refusal(role, action, tenant))
        actor = agent_controls.Actor(f"slack:{click.user_id}", click.trigger_id or episode_id, frozenset({tenant}))
        if snooze is None:
            try:
                earlier = episode_store.acknowledge(episode_id, click.user_id, now, require_open=True)
            except episode_store.NotOpen:
                return "That alert is no longer open: it was resolved, so there is nothing to acknowledge."
            if earlier is not None:
                return f"Already acknowledged by {person(earlier)}."
            details = learned.ack_details(episode)
            audit_store.append(agent_controls.audit_entry(actor, audit_action, episode_id, tenant, details, now))
            note = f"👀 Acknowledged by <@{click.user_id}> at {now:%H:%M} UTC: reminders stop"
            drop: tuple[str, ...] = (notices.ACK,)
        else:
            until = now + snooze
            silence = Silence(
                id=snooze_id(click.trigger_id, episode_id),
                agent_id=episode.get("agent_id"),
                tenant=tenant,
                rule=str(episode.get("rule") or "") or None,
                reason=f"snoozed from Slack by {click.user_id}",
                created_by=actor.name,
                created_at=now,
                starts_at=now,
                expires_at=until,
            )
            agent_controls.create_silence(silence, actor, now)
            note = f"💤 Snoozed by <@{click.user_id}> until {until:%Y-%m-%d %H:%M} UTC"
            drop = tuple(SNOOZES)
        if click.channel and click.message_ts and click.message_blocks:
            try:
                text = click.message_text or note
                web_api.update(click.channel, click.message_ts, text, _with_note(click, note, drop=drop))
            except (web_api.SlackUnavailable, web_api.SlackRefused) as exc:
                logs.log(log, f"alert message not edited: {exc}", episode_id=episode_id)
        return note

    once(click, now, act)
