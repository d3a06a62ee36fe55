"""One document's upsert as a raw Firestore ``Write``: plain fields replaced, counters incremented
server-side, the totals after the increments read back from the commit. Shared by the spend counters
(shared/store/usage.py) and the lease reserve (shared/store/leases.py)."""

from __future__ import annotations

from typing import Any


class Increments:
    """One document's upsert: plain fields replaced, counters incremented server-side.

    Built as a ``Write`` protobuf directly (an update with a mask of the plain fields, no
    precondition, and one increment transform per counter): the client's ``set(merge=True)``
    derives the same message from nested dicts at several times the CPU, and this function runs
    for every batch. Transform results come back in the order the transforms were sent.
    """

    def __init__(self, doc_id: str, static: dict[str, Any], *, collection: str | None = None) -> None:
        self.doc_id = doc_id
        #: The document's collection (None: the caller's own).
        self.collection = collection
        self.static: dict[str, Any] = dict(static)
        self.paths: list[tuple[str, ...]] = []
        self.amounts: list[int] = []
        self.maxima: set[int] = set()  # indexes of paths set to the maximum of themselves and the amount
        #: Write only if the document is unchanged since this update time (a read's or a commit's).
        self.unchanged_since: Any = None
        #: Write only if the document does not exist (a create: the commit fails with AlreadyExists otherwise).
        self.must_not_exist = False

    def inc(self, path: tuple[str, ...], amount: int) -> None:
        self.paths.append(path)
        self.amounts.append(amount)

    def maximum(self, path: tuple[str, ...], amount: int) -> None:
        """Set ``path`` to the larger of its value and ``amount`` (server-side, like an increment)."""
        self.maxima.add(len(self.paths))
        self.paths.append(path)
        self.amounts.append(amount)

    def to_pb(self, document_path: str) -> Any:
        # lazy: the Firestore client library, loaded on the first batch rather than at import (cold start)
        from google.cloud.firestore_v1 import _helpers
        from google.cloud.firestore_v1.field_path import FieldPath
        from google.cloud.firestore_v1.types import write as write_types

        raw = write_types.Write.pb()()
        raw.update.name = document_path
        # Always a mask, even an empty one: without it an update replaces the whole document (only the
        # transforms' fields would be left).
        raw.update_mask.SetInParent()
        if self.unchanged_since is not None:
            raw.current_document.update_time.CopyFrom(self.unchanged_since.timestamp_pb())
        elif self.must_not_exist:
            raw.current_document.exists = False
        for key, value in self.static.items():
            encoded = _helpers.encode_value(value)
            raw.update.fields[key].CopyFrom(type(encoded).pb(encoded))
            raw.update_mask.field_paths.append(FieldPath(key).to_api_repr())
        for index, (path, amount) in enumerate(zip(self.paths, self.amounts, strict=True)):
            transform = raw.update_transforms.add()
            transform.field_path = FieldPath(*path).to_api_repr()
            if index in self.maxima:
                transform.maximum.integer_value = amount
            else:
                transform.increment.integer_value = amount
        return write_types.Write.wrap(raw)

    def results(self, write_result: Any) -> dict[tuple[str, ...], int]:
        # Read from the raw protobuf: proto-plus wrappers cost more than the rest of the decoding.
        raw = type(write_result).pb(write_result)
        values = [int(v.integer_value) for v in raw.transform_results]
        return dict(zip(self.paths, values, strict=True))
