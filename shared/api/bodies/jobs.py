"""The documented form of the training-job request (``POST /v1/jobs``): shared/domain/jobs.py's
``JobRequest``, whose schema also states what its validators enforce.

The class keeps the domain model's name and validation (a subclass adds nothing but its schema), so the
OpenAPI document's ``JobRequest`` component describes exactly what the API accepts.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, field_validator

from shared.api.bodies.common import NOT_BLANK, decimal_doc
from shared.domain import job_costs
from shared.domain import jobs as job_rules

#: Who a job is for, through the API: an e-mail address, a Slack user id, or the caller itself (``api:<key name>``).
#: The alerts about the job mention that person in Slack when Slack knows the address or the id.
REQUESTER = r"^(api:[^\s]{1,150}|(slack:)?[UW][A-Z0-9]{2,20}|[^@\s<>|]{1,100}@[^@\s<>|]{1,150}\.[A-Za-z]{2,50})$"
_REQUESTER = re.compile(REQUESTER)
#: Whom the job's alerts mention instead of the requester: an e-mail address or a Slack user id.
NOTIFY = r"^((slack:)?[UW][A-Z0-9]{2,20}|[^@\s<>|]{1,100}@[^@\s<>|]{1,150}\.[A-Za-z]{2,50})$"
_NOTIFY = re.compile(NOTIFY)

#: ``max_cost_usd``'s string form: above 0, up to 999,999.999999999 (a number may be 1,000,000).
_POSITIVE_COST_TEXT = r"^([1-9][0-9]{0,5}(\.[0-9]{1,9})?|0\.[0-9]{0,8}[1-9])$"


def _gpu_doc() -> dict[str, Any]:
    """The resources' GPU rule (``JobResources._gpu``): no ``gpu_type``, or one offered with a GPU."""
    return {
        "anyOf": [
            {"properties": {"gpu_type": {"type": "null"}}},
            {
                "properties": {"gpu_type": {"enum": list(job_costs.GPU_TYPES)}, "gpu": {"minimum": 1}},
                "required": ["gpu_type", "gpu"],
            },
        ]
    }


def _job_doc(schema: dict[str, Any]) -> None:
    """A name not blank once stripped, a requester of :data:`REQUESTER`, a notify of :data:`NOTIFY`; parameter
    names by pattern only (a name that does not match is no additional property the API accepts); the cost
    limit's string form; the resources' GPU rule."""
    properties = schema["properties"]
    properties["name"]["pattern"] = NOT_BLANK
    for field, pattern in (("requester", REQUESTER), ("notify", NOTIFY)):
        for branch in properties[field]["anyOf"]:
            if branch.get("type") == "string":
                branch["pattern"] = pattern
    for name in ("hyperparameters", "training_config"):
        properties[name]["additionalProperties"] = False
    properties["max_cost_usd"].update(
        decimal_doc(pattern=_POSITIVE_COST_TEXT, maximum=1_000_000, exclusive_minimum=True, nullable=True)
    )
    resources = properties["resources"]
    resources["allOf"] = [{"$ref": resources.pop("$ref")}, _gpu_doc()]


class JobRequest(job_rules.JobRequest):
    """``POST /v1/jobs`` (and ``/fleet train``). Neither ``image`` nor ``command``: the built-in workload.
    ``resources.gpu_type`` needs ``resources.gpu`` of at least 1."""

    model_config = ConfigDict(json_schema_extra=_job_doc)

    @field_validator("requester")
    @classmethod
    def _requester(cls, value: str | None) -> str | None:
        if value is not None and not _REQUESTER.match(value):
            raise ValueError("requester must be an e-mail address, a Slack user id (U...) or api:<key name>")
        return value

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: str | None) -> str | None:
        if value is not None and not _NOTIFY.match(value):
            raise ValueError("notify must be an e-mail address or a Slack user id (U...)")
        return value
