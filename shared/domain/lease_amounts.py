"""Amounts of a budget lease: USD in integer nano-dollars and tokens, added and compared exactly, and the
address of a tenant reserve's counter (a period and its window's key). Used by shared/domain/leases.py
and the lease stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.domain.periods import Period


@dataclass(frozen=True)
class Amount:
    """USD (integer nano-dollars) and tokens."""

    usd_nanos: int = 0
    tokens: int = 0

    def get(self, metric: str) -> int:
        return self.usd_nanos if metric == "usd" else self.tokens

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.usd_nanos + other.usd_nanos, self.tokens + other.tokens)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.usd_nanos - other.usd_nanos, self.tokens - other.tokens)

    def __neg__(self) -> Amount:
        return Amount(-self.usd_nanos, -self.tokens)

    def clamp(self, low: int = 0) -> Amount:
        return Amount(max(low, self.usd_nanos), max(low, self.tokens))

    def as_dict(self) -> dict[str, int]:
        return {"usd_nanos": self.usd_nanos, "tokens": self.tokens}

    @classmethod
    def of(cls, data: Any) -> Amount:
        data = data if isinstance(data, dict) else {}
        return cls(int(data.get("usd_nanos") or 0), int(data.get("tokens") or 0))


ZERO = Amount()
#: A reserve counter's address: the period and the window's key.
Slot = tuple[Period, str]
