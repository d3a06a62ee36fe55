"""A new job's commit that Firestore aborts (contention on the tenant's queue document, when two jobs are
submitted at once) is committed again; only AlreadyExists means the job exists (a retried request). Before,
an abort was taken for a duplicate: POST /v1/jobs answered with a job that was never stored, whose GET
then answered 404."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions

from shared.domain.audit import AuditEntry
from shared.store import jobs as job_store
from tests.unit.test_checkpoints_relaunch import T0, gpu_job


class Client:
    """Batches whose commits raise the given errors in turn, then succeed."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.commits = list(errors), 0

    def batch(self) -> Client:
        return self

    def collection(self, name: str) -> Client:
        return self

    def document(self, name: str) -> Client:
        return self

    def create(self, *args: Any) -> None: ...

    def set(self, *args: Any, **kwargs: Any) -> None: ...

    def commit(self, **_: Any) -> None:
        self.commits += 1
        if self.errors:
            raise self.errors.pop(0)


ENTRY = AuditEntry(id="a-1", at=T0, actor="api:ops", action="job.submit", target="j-1", outcome="requested")


def test_an_aborted_create_is_committed_again_and_only_already_exists_is_a_duplicate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_store.time, "sleep", lambda s: None)
    aborted = Client(exceptions.Aborted("contention"), exceptions.Aborted("contention"))
    monkeypatch.setattr(job_store.db, "client", lambda: aborted)
    assert job_store.create(gpu_job(), ENTRY) is True and aborted.commits == 3

    exists = Client(exceptions.AlreadyExists("exists"))
    monkeypatch.setattr(job_store.db, "client", lambda: exists)
    assert job_store.create(gpu_job(), ENTRY) is False and exists.commits == 1

    always = Client(*(exceptions.Aborted("contention") for _ in range(job_store.CREATE_ATTEMPTS)))
    monkeypatch.setattr(job_store.db, "client", lambda: always)
    with pytest.raises(exceptions.Aborted):
        job_store.create(gpu_job(), ENTRY)
