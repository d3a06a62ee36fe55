"""Each enrolled agent's own command subscription: created by the fleet at enrollment, filtered on its id.

The name is derived from the agent id (fleet_agent.identity.command_subscription), so the agent's SDK
knows it without being told; the registration function creates it (idempotently) when it binds the
agent's first key, and in Google Cloud grants the agent's principal (named on its enrollment token)
subscriber on it alone (terraform/README.md, "Agent identity"). It never expires while the agent lives;
decommissioning deletes it (:func:`delete`). The emulator ignores filters and IAM, so the SDK checks
``agent_id`` and the fleet's signature (fleet_agent.command_signatures) too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from typing import Any

from fleet_agent.contracts import EventType
from fleet_agent.identity import command_subscription

from shared.platform import logs, settings, topology

log = logs.get_logger("command_channels")
_subscriber: Any = None
_lock = threading.Lock()
ADMIN_TIMEOUT_S = 30.0
SUBSCRIBER_ROLE = "roles/pubsub.subscriber"
#: One identity (never allUsers, allAuthenticatedUsers, a domain, a group or a principalSet): a service
#: account, a user, or one workload identity federation principal.
_MEMBER = re.compile(r"(serviceAccount|user):[^\s@]+@[^\s@]+|principal://\S+")


def subscriber() -> Any:
    global _subscriber
    if _subscriber is None:
        with _lock:
            if _subscriber is None:
                # lazy: gRPC is heavy; only the registration function creates subscriptions
                from google.cloud.pubsub_v1 import SubscriberClient

                _subscriber = SubscriberClient()
    return _subscriber


def subscription_path(agent_id: str) -> str:
    return subscriber().subscription_path(settings.get().project, command_subscription(agent_id))


def _request(agent_id: str) -> dict[str, Any]:
    """What the agent's subscription must be: on agent-commands, filtered on its id, never expiring."""
    project = settings.get().project
    return {
        "name": subscription_path(agent_id),
        "topic": subscriber().topic_path(project, topology.load().topic_for(EventType.COMMAND.value).name),
        "filter": command_filter(agent_id),
        "ack_deadline_seconds": 10,
        "message_retention_duration": {"seconds": 600},
        # An empty policy (no ttl) is "never": the channel lives as long as the agent, however quiet.
        "expiration_policy": {},
    }


def command_filter(agent_id: str) -> str:
    # Agent ids are [a-z0-9_-] (fleet_agent.messages.fields.AGENT_ID_PATTERN): nothing to escape.
    return f'attributes.agent_id = "{agent_id}"'


def ensure(agent_id: str, principal: str | None = None) -> str:
    """Create the agent's filtered command subscription unless it exists; returns its path. Idempotent.

    A subscription of that name with another topic or filter (made by hand, or left by an older release)
    is replaced: the name is the fleet's, and an unfiltered one would show the agent every command.
    ``principal`` (an IAM member, ``serviceAccount:...``) is granted subscriber on it alone in Google
    Cloud; under the emulator, which has no IAM, that step is skipped with a log line.
    """
    from google.api_core.exceptions import AlreadyExists

    if principal is not None and not _MEMBER.fullmatch(principal):
        raise ValueError(f"not an IAM member of one identity: {principal!r}")
    client = subscriber()
    request = _request(agent_id)
    path = request["name"]
    try:
        client.create_subscription(request=request, timeout=ADMIN_TIMEOUT_S)
    except AlreadyExists:  # made before: by a redelivery, or an earlier enrollment
        found = client.get_subscription(request={"subscription": path}, timeout=ADMIN_TIMEOUT_S)
        if found.topic != request["topic"] or found.filter != request["filter"]:
            logs.log(log, f"command subscription of {agent_id} is not filtered on it: replaced", agent_id=agent_id)
            delete(agent_id)
            with contextlib.suppress(AlreadyExists):  # a concurrent delivery re-created it first
                client.create_subscription(request=request, timeout=ADMIN_TIMEOUT_S)
    if principal is not None:
        _grant_subscriber(path, principal, agent_id)
    logs.log(log, f"command subscription of {agent_id} ready", agent_id=agent_id, subscription=path)
    return path


def delete(agent_id: str) -> bool:
    """Delete the agent's command subscription (decommissioning); False when there was none. Idempotent."""
    from google.api_core.exceptions import NotFound

    path = subscription_path(agent_id)
    try:
        subscriber().delete_subscription(request={"subscription": path}, timeout=ADMIN_TIMEOUT_S)
    except NotFound:
        return False
    logs.log(log, f"command subscription of {agent_id} deleted", agent_id=agent_id, subscription=path)
    return True


def _grant_subscriber(path: str, principal: str | None, agent_id: str) -> None:
    """Make ``principal`` the one reader of this subscription: roles/pubsub.subscriber for it alone (None:
    for nobody). Replacing, not adding: a principal of an earlier enrollment or of a revoked key reads
    nothing more. A principal Google refuses (unknown, deleted) is logged as an error and left out: the
    agent is enrolled, retrying cannot help, and an endless retry would dead-letter the registration."""
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        logs.log(log, f"emulator: no IAM, subscriber grant on {path} skipped", agent_id=agent_id)
        return
    from google.api_core.exceptions import Aborted, FailedPrecondition, InvalidArgument, NotFound

    client = subscriber()
    wanted = [principal] if principal else []
    for _attempt in range(5):
        policy = client.get_iam_policy(request={"resource": path}, timeout=ADMIN_TIMEOUT_S)
        bindings = [b for b in policy.bindings if b.role == SUBSCRIBER_ROLE]
        if [m for b in bindings for m in b.members] == wanted:
            return  # as it should be (a redelivery)
        for binding in bindings:
            policy.bindings.remove(binding)
        if wanted:
            policy.bindings.add(role=SUBSCRIBER_ROLE, members=wanted)
        try:
            # The policy's etag makes this a compare-and-set: a concurrent change aborts it, and we re-read.
            client.set_iam_policy(request={"resource": path, "policy": policy}, timeout=ADMIN_TIMEOUT_S)
        except (Aborted, FailedPrecondition):
            continue
        except (InvalidArgument, NotFound) as exc:
            logs.log(
                log, f"the subscriber grant on {path} was refused: {exc}", logging.ERROR, agent_id=agent_id,
                principal=principal,
            )  # fmt: skip
            return
        logs.log(log, f"readers of the commands of {agent_id}: {wanted}", agent_id=agent_id, principal=principal)
        return
    raise RuntimeError(f"the IAM policy of {path} kept changing; its readers were not set")


def revoke_readers(agent_id: str) -> None:
    """Nobody but the fleet reads the agent's commands any more (its key was revoked); idempotent. The next
    enrollment grants the principal of its token."""
    from google.api_core.exceptions import NotFound

    with contextlib.suppress(NotFound):  # never enrolled: no subscription
        _grant_subscriber(subscription_path(agent_id), None, agent_id)
