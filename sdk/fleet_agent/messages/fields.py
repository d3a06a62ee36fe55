"""The building blocks of the event contract: identifier and name patterns, bounded field types, and
:class:`Strict`, the base of every message (unknown fields refused, instances frozen)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: 3-63 chars of a-z, 0-9, - and _, starting with a letter or digit (Firestore reserves ``__x__`` ids).
AGENT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{2,62}$"
AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
TenantId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
#: Names used as keys (labels, capabilities, metric names): start with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$"
Label = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
#: Versions like 1.4.0, 2.0.0-rc.1+build.7 (no "/": a version names a document).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
#: Integers must fit Firestore's signed 64 bits.
MAX_INT = 2**63 - 1
#: A call's or a command's id (unique per agent): 8-64 characters.
CallId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,63}$")]
#: A model's name as the agent records it (``gpt-4o``, ``anthropic/claude-3.5-sonnet:beta``).
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")]

#: A hard limit in USD: positive, cents to nano-dollars, at most a billion.
LimitUsd = Annotated[Decimal, Field(gt=0, le=Decimal("1000000000"), max_digits=20, decimal_places=9)]
LimitTokens = Annotated[int, Field(gt=0, le=MAX_INT)]


# The base of every message: unknown fields are refused and instances are frozen.
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
