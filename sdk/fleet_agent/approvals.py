"""Asking a human before an expensive operation: approval requests and their handles.

    handle = agent.request_approval("re-embed the corpus", estimated_cost_usd="45", reason="new model")
    if handle.wait(timeout=600):       # True approved, False denied or expired; ApprovalTimeout
        reembed()

    if agent.preapprove("re-embed the corpus", estimated_cost_usd=45):  # asks only above the threshold
        reembed()

The agent publishes an :class:`~fleet_agent.contracts.ApprovalRequest` on ``agent-approvals``; an
approver of its tenant decides in Slack, and the server answers on the agent's command channel
(``agent-commands``) with an ``approval_decided`` command naming the request. A request nobody
decides in ``expires_in_s`` is answered ``approved=False`` with the reason ``expired``. The agent's
command listener hands that command to :meth:`FleetAgent.apply_command
<fleet_agent.FleetAgent.apply_command>`, which resolves the :class:`ApprovalHandle` here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from fleet_agent.contracts import ApprovalKind, ApprovalRequest, Command, CommandType

log = logging.getLogger("fleet_agent")

#: The ``reason`` the server gives a request nobody decided before it expired.
EXPIRED_REASON = "expired"
#: Default estimated cost (USD) above which :meth:`FleetAgent.preapprove` asks for approval.
DEFAULT_APPROVAL_THRESHOLD_USD = Decimal("10")
#: Environment variable that overrides :data:`DEFAULT_APPROVAL_THRESHOLD_USD`.
APPROVAL_THRESHOLD_ENV = "FLEET_APPROVAL_THRESHOLD_USD"
#: Decided handles an agent keeps (so a repeated ``request_id`` finds its handle); pending ones are all kept.
MAX_DECIDED_HANDLES = 1024


class ApprovalStatus(StrEnum):
    """Where a request stands; a ``StrEnum``, so ``handle.status == "approved"`` works too."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    #: Nobody decided within ``expires_in_s``: the server denied it with the reason ``expired``.
    EXPIRED = "expired"


class ApprovalTimeout(TimeoutError):
    """No decision arrived within the time the agent waited. The request itself stays pending.

    ``handle`` is the request's :class:`ApprovalHandle`: it may still be decided later.
    """

    def __init__(self, handle: ApprovalHandle, timeout: float | None) -> None:
        self.handle = handle
        self.request_id = handle.request_id
        self.timeout = timeout
        super().__init__(
            f"no decision on approval request {handle.request_id} ({handle.operation!r}) within {timeout} s"
        )


DoneCallback = Callable[["ApprovalHandle"], object]


class ApprovalHandle:
    """One approval request of this agent and, once it arrives, its decision. Thread-safe.

    Made by :meth:`FleetAgent.request_approval <fleet_agent.FleetAgent.request_approval>`; resolved
    once, by the first ``approval_decided`` command for its ``request_id`` (later ones are ignored).
    """

    def __init__(self, request: ApprovalRequest) -> None:
        self.request = request
        self._lock = threading.Lock()
        self._decided = threading.Event()
        self._status = ApprovalStatus.PENDING
        self._command: Command | None = None
        self._callbacks: list[DoneCallback] = []

    # -- the request ----------------------------------------------------------------------------

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def operation(self) -> str:
        return self.request.operation

    @property
    def kind(self) -> ApprovalKind:
        return self.request.kind

    @property
    def expires_at(self) -> datetime:
        """When the server gives up on the request (``requested_at + expires_in_s``, the agent's clock)."""
        return self.request.requested_at + timedelta(seconds=self.request.expires_in_s)

    # -- the decision ---------------------------------------------------------------------------

    @property
    def status(self) -> ApprovalStatus:
        return self._status

    @property
    def approved(self) -> bool | None:
        """True when approved, False when denied or expired, None while pending."""
        status = self._status
        return None if status is ApprovalStatus.PENDING else status is ApprovalStatus.APPROVED

    @property
    def reason(self) -> str | None:
        """The approver's note (may be empty), ``"expired"`` for an expired request; None while pending."""
        command = self._command
        return None if command is None else command.reason

    @property
    def approval_id(self) -> str | None:
        """The server's id of the approval (to find it in the API or in Slack); None while pending."""
        command = self._command
        return None if command is None else command.approval_id

    @property
    def decided_at(self) -> datetime | None:
        """When the server issued the decision (its ``issued_at``); None while pending."""
        command = self._command
        return None if command is None else command.issued_at

    @property
    def command(self) -> Command | None:
        """The ``approval_decided`` command that resolved the request."""
        return self._command

    def done(self) -> bool:
        """True once a decision (approved, denied or expired) arrived."""
        return self._decided.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until decided: True when approved, False when denied or expired.

        ``timeout`` in seconds (None: as long as it takes; the server always answers by
        ``expires_at``). Raises :class:`ApprovalTimeout` when no decision came in time; the request
        stays pending and a later ``wait()`` may still succeed.
        """
        if not self._decided.wait(timeout):
            raise ApprovalTimeout(self, timeout)
        return self._status is ApprovalStatus.APPROVED

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(handle)`` once the request is decided: at once (in this thread) if it already is,
        otherwise on the thread that delivers the decision (the command listener's): keep it short.
        An exception from ``fn`` is logged and ignored."""
        with self._lock:
            if not self._decided.is_set():
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    # -- resolution (by the agent) -------------------------------------------------------------

    def _decide(self, command: Command) -> bool:
        """Resolve with an ``approval_decided`` command; False when already decided."""
        if command.approved:
            status = ApprovalStatus.APPROVED
        elif command.reason == EXPIRED_REASON:
            status = ApprovalStatus.EXPIRED
        else:
            status = ApprovalStatus.DENIED
        with self._lock:
            if self._decided.is_set():
                return False
            self._command = command
            self._status = status
            self._decided.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _run_callback(fn, self)
        return True

    def __repr__(self) -> str:
        return (
            f"ApprovalHandle(request_id={self.request_id!r}, operation={self.operation!r}, "
            f"kind={self.kind.value!r}, status={self.status.value!r})"
        )


def _run_callback(fn: DoneCallback, handle: ApprovalHandle) -> None:
    try:
        fn(handle)
    except Exception:
        log.exception("approval %s: done callback failed", handle.request_id)


class ApprovalBook:
    """One agent's approval handles by ``request_id``: every pending one, and the most recent
    :data:`MAX_DECIDED_HANDLES` decided ones. Thread-safe. Used by :class:`~fleet_agent.FleetAgent`."""

    def __init__(self, max_decided: int = MAX_DECIDED_HANDLES) -> None:
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, ApprovalHandle] = OrderedDict()
        self._max_decided = max(0, max_decided)

    def get(self, request_id: str) -> ApprovalHandle | None:
        with self._lock:
            return self._handles.get(request_id)

    def track(self, request: ApprovalRequest) -> tuple[ApprovalHandle, bool]:
        """The handle of ``request.request_id``, and whether it was made now (False: it existed)."""
        with self._lock:
            existing = self._handles.get(request.request_id)
            if existing is not None:
                return existing, False
            handle = ApprovalHandle(request)
            self._handles[request.request_id] = handle
            return handle, True

    def forget(self, handle: ApprovalHandle) -> None:
        """Drop a handle whose request could not be published."""
        with self._lock:
            if self._handles.get(handle.request_id) is handle:
                del self._handles[handle.request_id]

    def decide(self, command: Command) -> ApprovalHandle | None:
        """Resolve the handle an ``approval_decided`` command names; None when unknown or decided already."""
        if command.command is not CommandType.APPROVAL_DECIDED or command.request_id is None:
            return None
        with self._lock:
            handle = self._handles.get(command.request_id)
        if handle is None:
            log.debug("ignoring decision on unknown approval request %s", command.request_id)
            return None
        if not handle._decide(command):
            return None
        with self._lock:
            self._handles.move_to_end(handle.request_id)  # decided most recently: evicted last
            self._evict_locked()
        return handle

    def _evict_locked(self) -> None:
        decided = [rid for rid, h in self._handles.items() if h.done()]
        for request_id in decided[: max(0, len(decided) - self._max_decided)]:
            del self._handles[request_id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)
