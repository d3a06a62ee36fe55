"""The daily report's relaunched jobs: a tenant's by the tenant + relaunched_at index (in topology.yaml),
ordered, and every page of them, not the first 1,000."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.platform import topology
from shared.store import jobs as job_store
from tests.unit.test_checkpoints_relaunch import gpu_job

T0 = datetime(2026, 3, 2, tzinfo=UTC)


class Doc:
    def __init__(self, n: int) -> None:
        self.n = n

    def to_dict(self) -> dict[str, Any]:
        return gpu_job().model_copy(update={"id": f"j-{self.n}"}).to_doc()


class Query:
    """Records the query it is built into; serves ``total`` documents in pages."""

    def __init__(self, total: int, log: list[Any]) -> None:
        self.total, self.log, self.after, self.size = total, log, 0, 0

    def collection(self, name: str) -> Query:
        return self

    def where(self, *, filter: Any) -> Query:
        self.log.append((filter.field_path, filter.op_string, filter.value))
        return self

    def order_by(self, field: str) -> Query:
        self.log.append(("order", field))
        return self

    def start_after(self, doc: Doc) -> Query:
        self.after = doc.n + 1
        return self

    def limit(self, size: int) -> Query:
        self.size = size
        return self

    def stream(self, **_: Any) -> list[Doc]:
        return [Doc(n) for n in range(self.after, min(self.total, self.after + self.size))]


def test_a_tenants_relaunched_jobs_are_read_by_the_indexed_query_in_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[Any] = []
    monkeypatch.setattr(job_store.db, "client", lambda: Query(5, log))
    jobs = job_store.relaunched_since(T0, "acme", page_size=2)
    assert [j.id for j in jobs] == [f"j-{n}" for n in range(5)]
    assert log == [("tenant", "==", "acme"), ("relaunched_at", ">=", T0), ("order", "relaunched_at")]
    indexes = [
        [f["field"] for f in i["fields"]] for i in topology.load().raw["firestore_indexes"] if i["collection"] == "jobs"
    ]
    assert ["tenant", "relaunched_at"] in indexes
