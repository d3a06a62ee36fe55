"""The documented forms of the task-assignment requests (``POST /v1/tasks/assign`` and ``POST
/v1/tasks/{task_id}/outcome``): shared/domain/assignment_tasks.py's ``TaskRequest`` and ``OutcomeReport``,
whose schemas also state what their validators enforce.

Each class keeps the domain model's name and validation (a subclass adds nothing but its schema), so the
OpenAPI document's components describe exactly what the API accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from shared.api.bodies.common import decimal_doc
from shared.domain import assignment_tasks

#: Some weight is left out (its default is above 0) or above 0 (``Weights._positive``).
_SOME_WEIGHT = {"anyOf": [{"properties": {name: {"exclusiveMinimum": 0}}} for name in assignment_tasks.COMPONENTS]}


def _task_doc(schema: dict[str, Any]) -> None:
    """A task id that is not reserved (``assign``), and weights that are not all 0."""
    properties = schema["properties"]
    properties["task_id"]["not"] = {"enum": sorted(assignment_tasks.RESERVED_IDS)}
    properties["weights"]["anyOf"] = [
        {"allOf": [branch, _SOME_WEIGHT]} if "$ref" in branch else branch for branch in properties["weights"]["anyOf"]
    ]


class TaskRequest(assignment_tasks.TaskRequest):
    """``POST /v1/tasks/assign``: the task to place. Unknown fields are refused. A ``deadline`` is in the
    future; ``weights`` laid over the tenant's must not all be 0."""

    model_config = ConfigDict(json_schema_extra=_task_doc)


def _outcome_doc(schema: dict[str, Any]) -> None:
    """The cost's string form, and ``error`` only for a task that failed."""
    schema["properties"]["cost_usd"].update(
        decimal_doc(pattern=r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,9})?$", maximum=1_000_000, places=9, nullable=True)
    )
    schema["anyOf"] = [{"properties": {"success": {"const": False}}}, {"properties": {"error": {"type": "null"}}}]


class OutcomeReport(assignment_tasks.OutcomeReport):
    """``POST /v1/tasks/{id}/outcome``: how the task went. Unknown fields are refused; ``error`` is only
    for a task that failed (``success`` false)."""

    model_config = ConfigDict(json_schema_extra=_outcome_doc)
