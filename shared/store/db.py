"""The Firestore client (one per instance, built on first use) and the errors that decide retries.

The client is imported and built lazily so a function's module import stays cheap (cold start);
every document read and write is counted by shared.platform.metering.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.platform import metering, settings

if TYPE_CHECKING:
    from google.cloud.firestore import Client

T = TypeVar("T")
_client: Client | None = None
_lock = threading.Lock()


def client() -> Client:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                from google.cloud import firestore

                _client = firestore.Client(project=settings.get().project)
    return _client


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which Pub/Sub should redeliver (the function fails instead of acknowledging)."""
    from google.api_core import exceptions

    return (
        exceptions.ServiceUnavailable,
        exceptions.DeadlineExceeded,
        exceptions.InternalServerError,
        exceptions.TooManyRequests,
        exceptions.Aborted,
        exceptions.RetryError,
    )


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors a write of this data will always meet (the client cannot encode it, Firestore refuses it)."""
    from google.api_core import exceptions

    return (exceptions.InvalidArgument, OverflowError, ValueError)


def is_conflict(exc: BaseException) -> bool:
    """A failed precondition: someone else wrote the document since we read it."""
    from google.api_core import exceptions

    return isinstance(exc, exceptions.FailedPrecondition | exceptions.Conflict | exceptions.NotFound)


def unless_changed(write: Callable[[], T], *, writes: int = 1) -> T | None:
    """Run a write that carries a precondition (or a create): its result, or None when another writer
    got there first. That is counted as a conflict, not a write; any other error is raised."""
    from google.api_core import exceptions

    try:
        result = write()
    except Exception as exc:
        if not (is_conflict(exc) or isinstance(exc, exceptions.AlreadyExists)):
            raise
        metering.count(conflicts=1)
        return None
    metering.count(writes=writes)
    return result


_call_options: dict[str, Any] | None = None


def call_options() -> dict[str, Any]:
    """Retry transient errors briefly, then fail: Pub/Sub's redelivery is the long-term retry.

    The client's default would retry for up to 60 s, as long as a push's ack deadline.
    """
    global _call_options
    if _call_options is None:
        from google.api_core import retry as retries

        policy = retries.Retry(
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=CALL_TIMEOUT_S,
            predicate=retries.if_transient_error,
        )
        _call_options = {"retry": policy, "timeout": CALL_TIMEOUT_S}
    return _call_options


CALL_TIMEOUT_S = 5.0


def doc_id(key: str, limit: int = 1500) -> str:
    """A key as a Firestore document id: ``/`` (which model names may hold) escaped, like ``%`` so the
    escape stays unambiguous; cut to ``limit`` bytes' worth of ASCII (ids may be 1,500 bytes)."""
    return key.replace("%", "%25").replace("/", "%2F")[:limit]


def get(ref: Any) -> Any:
    metering.count(reads=1)
    return ref.get(**call_options())


INT64 = (-(2**63), 2**63 - 1)


def unstorable(value: Any, path: str = "") -> str | None:
    """What Firestore would refuse in a value about to be written (an integer outside int64, an empty
    map key), as ``path: problem``; None when it can be stored. Lets a caller answer 400 instead of
    failing on the write."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if INT64[0] <= value <= INT64[1] else f"{path or 'value'}: {value} is outside a 64-bit integer"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key == "":
                return f"{path or 'value'}: a map key must be a non-empty string"
            found = unstorable(item, f"{path}.{key}" if path else key)
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


def get_fields(ref: Any) -> tuple[dict[str, Any] | None, Any]:
    """One document's fields (None when it does not exist) and update time, by the unary ``GetDocument``
    call: ``DocumentReference.get`` streams ``BatchGetDocuments``, and grpc's Python client starts a
    channel thread for every streaming call (about a sixth of a heartbeat's time without the agent cache).
    Decoded as ``get`` decodes them, without the snapshot's deep copy."""
    # lazy: the Firestore client libraries, as in client()
    from google.api_core import exceptions
    from google.cloud.firestore_v1 import _helpers

    metering.count(reads=1)
    owner = ref._client
    try:
        found = owner._firestore_api.get_document(
            request={"name": ref._document_path}, metadata=owner._rpc_metadata, **call_options()
        )
    except exceptions.NotFound:
        return None, None
    fields: dict[str, Any] = _helpers.decode_dict(found.fields, owner)  # type: ignore[assignment]
    return fields, found.update_time
