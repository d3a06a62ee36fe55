"""One document's upsert as a raw Firestore Write (shared/store/increments.py), checked on the protobuf."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1.types import document, write

from shared.store.increments import Increments

PATH = "projects/p/databases/(default)/documents/leases/a.x"


def raw(inc: Increments) -> Any:
    w = inc.to_pb(PATH)
    return type(w).pb(w)


def test_an_update_mask_is_always_set_even_without_plain_fields() -> None:
    # Without a mask an update replaces the whole document: a ledger's increments alone would wipe it.
    inc = Increments("a.x", {})
    inc.inc(("epoch", "granted", "usd_nanos"), -5)
    pb = raw(inc)
    assert pb.HasField("update_mask") and list(pb.update_mask.field_paths) == []
    assert pb.update.name == PATH and dict(pb.update.fields) == {}
    assert not pb.HasField("current_document")  # an upsert: no precondition
    assert raw(Increments("a.x", {})).HasField("update_mask")  # nothing at all: still a mask


def test_plain_fields_are_set_and_masked() -> None:
    at = datetime(2026, 12, 6, 11, 20, tzinfo=UTC)
    pb = raw(Increments("t.acme.2026-12", {"tenant": "acme", "expire_at": at, "pending": None}))
    assert list(pb.update_mask.field_paths) == ["tenant", "expire_at", "pending"]
    assert pb.update.fields["tenant"].string_value == "acme"
    assert pb.update.fields["expire_at"].HasField("timestamp_value")
    assert pb.update.fields["pending"].WhichOneof("value_type") == "null_value"


def test_counters_are_increments_and_maxima_in_the_order_given() -> None:
    inc = Increments("a.x", {"last": {"id": 1}})
    inc.inc(("h0611", "usd_nanos"), 7)
    inc.maximum(("l.aaaaaaaaaaaa", "over_nanos"), 12)
    inc.inc(("open",), -1)
    transforms = raw(inc).update_transforms
    assert [t.field_path for t in transforms] == ["h0611.usd_nanos", "`l.aaaaaaaaaaaa`.over_nanos", "open"]
    assert [t.WhichOneof("transform_type") for t in transforms] == ["increment", "maximum", "increment"]
    assert transforms[0].increment.integer_value == 7
    assert transforms[1].maximum.integer_value == 12
    assert transforms[2].increment.integer_value == -1


def test_results_map_the_transform_results_to_their_paths() -> None:
    inc = Increments("a.x", {})
    inc.inc(("m", "usd_nanos"), 5)
    inc.maximum(("m", "over"), 3)
    result = write.WriteResult(transform_results=[document.Value(integer_value=v) for v in (105, 9)])
    assert inc.results(result) == {("m", "usd_nanos"): 105, ("m", "over"): 9}


def test_unchanged_since_is_an_update_time_precondition() -> None:
    inc = Increments("a.x", {"pending": None})
    inc.inc(("epoch", "granted", "usd_nanos"), -5)
    inc.unchanged_since = DatetimeWithNanoseconds(2026, 12, 6, 11, 20, 0, 123_456, tzinfo=UTC)
    pb = raw(inc)
    assert pb.HasField("current_document") and pb.current_document.WhichOneof("condition_type") == "update_time"
    assert pb.current_document.update_time.seconds == int(datetime(2026, 12, 6, 11, 20, tzinfo=UTC).timestamp())
    assert pb.current_document.update_time.nanos == 123_456_000
    assert list(pb.update_mask.field_paths) == ["pending"] and len(pb.update_transforms) == 1  # the rest as before
    nanos = DatetimeWithNanoseconds.from_rfc3339("2026-12-06T11:20:00.123456789Z")  # a commit's own precision
    inc.unchanged_since = nanos
    assert raw(inc).current_document.update_time.nanos == 123_456_789
