"""The agent's side of asking a human: :class:`ApprovalRequests`, the approval methods of
:class:`~fleet_agent.FleetAgent` (``request_approval``, ``preapprove``, ``approval``), and the USD
amounts they take. The handles and the book of pending requests are in :mod:`fleet_agent.approvals`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from decimal import Decimal, InvalidOperation

from fleet_agent.approvals import (
    APPROVAL_THRESHOLD_ENV,
    DEFAULT_APPROVAL_THRESHOLD_USD,
    ApprovalBook,
    ApprovalHandle,
    ApprovalTimeout,
)
from fleet_agent.commands import CommandListener
from fleet_agent.contracts import (
    MAX_APPROVAL_EXPIRY_S,
    MIN_APPROVAL_EXPIRY_S,
    ApprovalKind,
    ApprovalRequest,
    BudgetPeriod,
    EventType,
    Registration,
    utcnow,
)

log = logging.getLogger("fleet_agent")

#: Seconds :meth:`FleetAgent.request_approval` waits for Pub/Sub to accept the request.
PUBLISH_TIMEOUT_S = 30.0

Usd = Decimal | int | float | str

_NANO = Decimal("1e-9")


def usd(value: Usd, what: str) -> Decimal:
    """An amount in USD as a Decimal (floats through ``str``, so 0.1 stays 0.1), at most 9 decimals."""
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be an amount in USD, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount >= 0, not {value!r}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -9:  # the contract carries nano-dollars at most
        amount = amount.quantize(_NANO)
    return amount


def approval_threshold(value: Usd | None) -> Decimal:
    """The threshold an agent was given, else ``FLEET_APPROVAL_THRESHOLD_USD``, else the default (10 USD)."""
    if value is not None:
        return usd(value, "approval_threshold_usd")
    from_env = os.environ.get(APPROVAL_THRESHOLD_ENV, "").strip()
    if from_env:
        return usd(from_env, APPROVAL_THRESHOLD_ENV)
    return DEFAULT_APPROVAL_THRESHOLD_USD


class ApprovalRequests:
    """The approval methods of :class:`~fleet_agent.FleetAgent`, which provides the state and the
    two methods declared here (publishing, and listening for the decisions)."""

    registration: Registration
    _approval_threshold: Decimal
    _approvals: ApprovalBook
    _topics: dict[EventType, str]
    _closed: bool
    _listener: CommandListener | None

    def _publish(self, event_type: EventType, event: ApprovalRequest) -> Future[str]:
        raise NotImplementedError  # FleetAgent's

    def listen(self) -> CommandListener:
        raise NotImplementedError  # FleetAgent's

    @property
    def approval_threshold_usd(self) -> Decimal:
        """Estimated cost (USD) above which :meth:`preapprove` asks for approval."""
        return self._approval_threshold

    @property
    def approvals_topic(self) -> str:
        """Path of the topic approval requests are published on (``agent-approvals`` unless renamed)."""
        return self._topics[EventType.APPROVAL]

    def approval(self, request_id: str) -> ApprovalHandle | None:
        """The handle of one of this agent's requests (pending, or among the recently decided)."""
        return self._approvals.get(request_id)

    def request_approval(
        self,
        operation: str,
        *,
        reason: str = "",
        estimated_cost_usd: Usd | None = None,
        kind: ApprovalKind = ApprovalKind.OPERATION,
        budget_period: BudgetPeriod | None = None,
        budget_usd: Usd | None = None,
        expires_in_s: int = 3600,
        details: Mapping[str, str] | None = None,
        request_id: str | None = None,
        wait: float | None = None,
        listen: bool = True,
    ) -> ApprovalHandle:
        """Ask an approver of the agent's tenant for ``operation``; returns the request's handle.

        Publishes an :class:`ApprovalRequest` on the approvals topic and waits only for Pub/Sub to
        accept it (raising if it fails), not for the decision: that arrives later, as an
        ``approval_decided`` command, and resolves the handle (``handle.wait(timeout)``). With
        ``wait`` (seconds) it waits up to that long for the decision first, and returns the handle
        either way (still pending if nobody decided yet).

        Decisions arrive on the command channel only, so unless the agent already listens this
        calls :meth:`listen` first; pass ``listen=False`` when the agent's commands come through a
        shared :class:`CommandListener` (``listener.add(agent)``).

        ``kind=ApprovalKind.BUDGET_RAISE`` asks for a new hard limit, ``budget_usd`` for
        ``budget_period``, applied by the server on approval. The request expires, and is answered
        denied with the reason ``"expired"``, after ``expires_in_s`` (60 s to 7 days).

        ``request_id`` makes the request idempotent (default: a fresh uuid4 hex): the server keeps
        one approval per id. Asking again with the id of a request this agent already made returns
        its handle; while that is still pending the original request is published again, so the
        server re-sends a decision this process missed (the new arguments are ignored). Invalid
        arguments raise ``pydantic.ValidationError`` before anything is sent.
        """
        request = ApprovalRequest(
            agent_id=self.registration.agent_id,
            request_id=request_id or uuid.uuid4().hex,
            kind=kind,
            operation=operation,
            reason=reason,
            estimated_cost_usd=None if estimated_cost_usd is None else usd(estimated_cost_usd, "estimated_cost_usd"),
            expires_in_s=expires_in_s,
            requested_at=utcnow(),
            budget_period=budget_period,
            budget_usd=None if budget_usd is None else usd(budget_usd, "budget_usd"),
            details=dict(details or {}),
        )
        if self._closed:
            raise RuntimeError(f"agent {self.registration.agent_id} is closed")
        if listen and self._listener is None:
            self.listen()  # before publishing: a decision published before the subscription exists is lost
        handle, created = self._approvals.track(request)
        if created or not handle.done():
            try:
                self._publish(EventType.APPROVAL, handle.request).result(timeout=PUBLISH_TIMEOUT_S)
            except BaseException:
                if created:
                    self._approvals.forget(handle)
                raise
            log.info(
                "agent %s: asked for approval %s (%s: %s)",
                self.registration.agent_id,
                handle.request_id,
                handle.kind.value,
                handle.operation,
            )
        if wait is not None:
            with contextlib.suppress(ApprovalTimeout):
                handle.wait(wait)
        return handle

    def preapprove(
        self,
        operation: str,
        estimated_cost_usd: Usd,
        *,
        reason: str = "",
        timeout: float | None = 600.0,
        expires_in_s: int | None = None,
        listen: bool = True,
    ) -> bool:
        """Whether the agent may go ahead with an operation estimated to cost ``estimated_cost_usd``.

        At or under :attr:`approval_threshold_usd` it returns True at once and publishes nothing.
        Above it, it requests approval (:meth:`request_approval`) and waits up to ``timeout``
        seconds for the decision: True when approved, False when denied or expired. Raises
        :class:`~fleet_agent.approvals.ApprovalTimeout` when no decision came in time (its
        ``handle`` may still be decided later). The request expires when the agent stops waiting:
        ``expires_in_s`` defaults to ``timeout`` rounded up (60 s at least, 7 days at most; one
        hour when ``timeout`` is None), so nobody approves what the agent gave up on.
        """
        cost = usd(estimated_cost_usd, "estimated_cost_usd")
        if cost <= self._approval_threshold:
            return True
        if expires_in_s is None:
            expires_in_s = 3600 if timeout is None else math.ceil(timeout)
            expires_in_s = min(max(expires_in_s, MIN_APPROVAL_EXPIRY_S), MAX_APPROVAL_EXPIRY_S)
        handle = self.request_approval(
            operation, reason=reason, estimated_cost_usd=cost, expires_in_s=expires_in_s, listen=listen
        )
        return handle.wait(timeout)
