"""What one model call is to the recorder: :class:`Call` (filled in while it runs), :class:`CallRefused`
(raised before it runs), the bounded memory of recent request keys that flags repeats, and a call's price
in integers as the lease wallet keeps it: ``int`` nano-dollars (10**-9 USD) and, for prices, ``int``
femto-dollars per token (10**-15 USD).

Split from :mod:`fleet_agent.costs`, which re-exports ``Call`` and ``CallRefused``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from fleet_agent.contracts import Command, CommandType

#: How long a request key is remembered, and how many keys (an LRU) a recorder remembers at most.
REPEAT_WINDOW = timedelta(hours=1)
REPEAT_MEMORY = 4096

RequestKey = str | bytes

#: ``CallRefused.reason`` when the call does not fit the agent's lease (none, spent, or expired) and no
#: grant made it fit within ``lease_wait_s``; and when no lease has priced the call's model yet.
LEASE_EXHAUSTED = "lease_exhausted"
UNKNOWN_MODEL = "unknown_model"
#: ``CallRefused.reason`` of a call beyond a ``throttle``'s calls per minute (:mod:`fleet_agent.cost_holds`).
THROTTLED = "throttled"
#: ``CallRefused.reason`` of a call admitted after the recorder was closed (the agent is stopping): it
#: would be paid for and never recorded.
CLOSED = "closed"

FEMTO_PER_NANO = 1_000_000
_HALF_NANO = FEMTO_PER_NANO // 2
#: An amount on the wire (``LeaseUsd``) is at most a billion USD.
MAX_WIRE_NANOS = 10**18


class CallRefused(RuntimeError):
    """The fleet told this agent not to call its model; the message names each block, its reason and end.

    ``until`` is when every block lifts by itself (the latest ``until``), or None when one of them
    only lifts by a command (``resume``, ``release``, ...): callers can schedule a retry with it.

    ``reason``: why, in one word: the first blocking command's value (``pause``, ``budget_exhausted``,
    ``breaker_open``, ``quarantine``), or ``lease_exhausted`` / ``unknown_model`` for a lease refusal,
    ``throttled`` beyond a throttle's cap.
    """

    def __init__(
        self,
        agent_id: str,
        blocks: dict[CommandType, Command],
        *,
        note: str = "",
        until: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.blocks = dict(blocks)
        self.reason: str = reason if reason is not None else next((kind.value for kind in blocks), "")
        untils = [cmd.until for cmd in blocks.values()]
        self.until: datetime | None = until or (
            max(u for u in untils if u is not None) if untils and None not in untils else None
        )
        described = note or "; ".join(map(_describe, blocks.values()))
        super().__init__(f"agent {agent_id} may not call its model now ({described})")


def _describe(command: Command) -> str:
    until = f" until {command.until.astimezone(UTC).isoformat(timespec='seconds')}" if command.until else ""
    return f"{command.command.value}{until}: {command.reason or 'no reason given'}"


@dataclass
class Call:
    """What the agent learns about one call while it runs; filled in inside ``recorder.call``."""

    operation: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    #: Parts of ``input_tokens`` (prompt cache reads and writes) and of ``output_tokens`` (reasoning).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    success: bool = True
    started: float = field(default_factory=time.monotonic)
    #: The request's key (prompt, or any stable key of it); only its hash is remembered, never sent.
    request_key: RequestKey | None = field(default=None, repr=False)

    def tokens(
        self, input_tokens: int, output_tokens: int, *, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
    ) -> None:
        """The call's usage: every input and output token, and which of them were cache reads, cache writes
        (parts of ``input_tokens``) and reasoning (part of ``output_tokens``)."""
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.cache_read_tokens, self.cache_write_tokens, self.reasoning_tokens = cache_read, cache_write, reasoning

    def cost(self, usd: Decimal | float | str) -> None:
        self.cost_usd = Decimal(str(usd))

    def usage(self) -> tuple[int, int, int, int, int]:
        """(input, output, cache read, cache write, reasoning) tokens, negatives as 0: what a lease debits."""
        return (max(0, self.input_tokens), max(0, self.output_tokens), max(0, self.cache_read_tokens),
                max(0, self.cache_write_tokens), max(0, self.reasoning_tokens))  # fmt: skip


class RecentRequests:
    """The sha256 digests of recent request keys with when each was last seen: an LRU of at most
    ``size`` digests, each forgotten after ``window_s`` seconds. Thread-safe."""

    def __init__(self, size: int, window_s: float) -> None:
        self._size = max(1, size)
        self._window_s = window_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(key: RequestKey) -> bytes:
        return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()

    def check(self, digest: bytes, now: float, *, remember: bool) -> bool:
        """Whether ``digest`` was remembered within the window; ``remember`` (re)stamps it with ``now``."""
        with self._lock:
            seen = self._seen.get(digest)
            repeat = seen is not None and now - seen < self._window_s
            if remember:
                self._seen[digest] = now
                self._seen.move_to_end(digest)
                while len(self._seen) > self._size:
                    self._seen.popitem(last=False)
                # Least recently stamped first: drop the expired ones from the front (amortized O(1)).
                while self._seen:
                    oldest, at = next(iter(self._seen.items()))
                    if now - at < self._window_s:
                        break
                    del self._seen[oldest]
            return repeat

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


def femto(price: Decimal) -> int:
    """USD per token as integer femto-dollars: exact for a price of at most 15 decimal places."""
    return int(price.scaleb(15))


def to_nanos(usd: Decimal) -> int:
    """Dollars to whole nano-dollars, half up (the server's ``shared.domain.pricing.to_nanos``)."""
    return int(usd.scaleb(9).to_integral_value(rounding=ROUND_HALF_UP))


def to_usd(nanos: int) -> Decimal:
    """Nano-dollars as exact dollars (clamped to the wire's bound); 0 is ``Decimal(0)``, not ``0E-9``."""
    return Decimal(min(nanos, MAX_WIRE_NANOS)).scaleb(-9) if nanos else Decimal(0)


def exact_usd(nanos: int) -> Decimal:
    """Nano-dollars as exact dollars, unclamped."""
    return Decimal(nanos).scaleb(-9) if nanos else Decimal(0)


def cost_nanos(input_femto: int, output_femto: int, input_tokens: int, output_tokens: int) -> int:
    """``round_half_up(input_price * input_tokens + output_price * output_tokens)`` in nano-dollars."""
    return (input_femto * input_tokens + output_femto * output_tokens + _HALF_NANO) // FEMTO_PER_NANO
