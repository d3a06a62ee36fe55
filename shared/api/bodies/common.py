"""What every body of the REST API shares: timestamps, the view base, the error body, reasons, and the
documented form of exact decimal amounts.

Request bodies are documented in validation mode, and the document must never be looser than the
validation: a body valid by the document is accepted. Where pydantic's generated schema says less than
the validation enforces (a decimal given as a string, a reason that is blank once stripped), the helpers
here state the rule in the schema without changing the validation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def _aware(value: datetime) -> datetime:
    """Firestore returns aware datetimes; a naive one is UTC, so every timestamp serialises as RFC 3339."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_aware)]


class View(BaseModel):
    """The base of every response view."""

    # Stored documents carry more fields than a view shows (expire_at, ...): drop them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorDetail(View):
    code: str = Field(
        description="bad_request, unauthorized, forbidden, not_found, method_not_allowed, conflict, internal "
        "or unavailable."
    )
    reason: str
    details: list[dict[str, Any]] | None = Field(
        default=None,
        description="Only on an invalid request body: each validation error ({loc, msg, type}).",
    )


class ErrorBody(View):
    """Every error response has this shape, whatever its status."""

    error: ErrorDetail


class Health(View):
    status: Literal["ok"] = "ok"


#: A text that is not blank once stripped: it holds a character the validation's strip keeps (pydantic
#: strips Unicode White_Space, which is ECMA-262's ``\s`` but for U+FEFF, plus U+0085). JSON Schema
#: patterns are unanchored, so this one means "somewhere in the text".
NOT_BLANK = r"[^\s\x85]"

#: Documents what stripping enforces: the validation strips whitespace first, then counts characters.
_NOT_BLANK_DOC: dict[str, Any] = {"pattern": NOT_BLANK}

Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    Field(json_schema_extra=_NOT_BLANK_DOC),
]


def not_blank_doc() -> dict[str, Any]:
    """The schema addition of a stripped text with a minimum length of 1 (e.g. an approval's summary)."""
    return dict(_NOT_BLANK_DOC)


def given(name: str, json_type: str | list[str]) -> dict[str, Any]:
    """The schema of "``name`` is given and not null" (``json_type``: the field's own types but ``null``),
    to state in a body's schema which fields a rule requires."""
    return {"required": [name], "properties": {name: {"type": json_type}}}


def decimal_doc(
    *,
    pattern: str,
    maximum: int,
    minimum: int = 0,
    exclusive_minimum: bool = False,
    places: int | None = None,
    nullable: bool,
) -> dict[str, Any]:
    """The documented form of an exact decimal amount: a JSON number within the bounds, with at most
    ``places`` decimals when the validation limits them (the API reads a number's text exactly), or a
    decimal string matching ``pattern`` (which states the bounds and the decimals of the string form).

    pydantic documents a Decimal's string form as any string; the validation refuses a string that is no
    number, out of bounds or too precise, so the document says which strings are accepted.
    """
    number: dict[str, Any] = {"type": "number", "maximum": maximum}
    if places is not None:
        number["multipleOf"] = 10**-places
    number["exclusiveMinimum" if exclusive_minimum else "minimum"] = minimum
    branches: list[dict[str, Any]] = [number, {"type": "string", "pattern": pattern}]
    if nullable:
        branches.append({"type": "null"})
    return {"anyOf": branches}


#: Decimal strings of USD amounts from 0 to 999,999,999.999999999, nano-dollar precision.
USD_TEXT = r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,9})?$"
#: The same, above 0 (a limit): a whole part from 1, or a fraction whose last digit is not 0.
POSITIVE_USD_TEXT = r"^([1-9][0-9]{0,8}(\.[0-9]{1,9})?|0\.[0-9]{0,8}[1-9])$"
