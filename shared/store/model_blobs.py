"""Model bytes in Cloud Storage (``gs://<FLEET_MODELS_BUCKET>/<kind>/<version>.npz``).

Through the real ``google-cloud-storage`` client; locally it talks to the stack's stand-in
(gcp-storage-emulator) because ``STORAGE_EMULATOR_HOST`` is set. A version's object is written once
(its name carries the content hash), so a retried upload writes the same bytes again and a reader
checks the hash it was promised in the registry.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from shared.platform import settings

_client: Any = None
_lock = threading.Lock()


class CorruptModel(RuntimeError):
    """The bytes read are not those the registry recorded (hash mismatch)."""


def client() -> Any:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                from google.cloud import storage  # type: ignore[attr-defined]

                _client = storage.Client(project=settings.get().project)
    return _client


def object_name(kind: str, version: str) -> str:
    return f"{kind}/{version}.npz"


def put(kind: str, version: str, data: bytes) -> str:
    """Upload a version's bytes; returns its ``gs://`` URI."""
    bucket = settings.get().models_bucket
    blob = client().bucket(bucket).blob(object_name(kind, version))
    blob.upload_from_string(data, content_type="application/octet-stream")
    return f"gs://{bucket}/{object_name(kind, version)}"


def get(uri: str, sha256: str | None = None) -> bytes:
    """Download ``gs://bucket/name`` and check its hash when one is given."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    data: bytes = client().bucket(bucket).blob(name).download_as_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptModel(f"{uri}: content hash differs from the registry's")
    return data
