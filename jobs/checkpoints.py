"""A training run's checkpoints: one object per epoch under ``FLEET_CHECKPOINT_URI``, the latest read back.

    store = CheckpointStore.from_uri(os.environ["FLEET_CHECKPOINT_URI"])   # gs://bucket/tenant/job/ or a path
    store.save(Checkpoint(epoch=3, model=model, metrics=[...]))            # <uri>epoch-000003.npz
    latest = store.latest(trusted=frozenset(...))                          # the highest epoch that loads

A checkpoint is the models' one storage format (shared/ml/storage.py): an ``.npz`` read with pickles
disabled, its JSON metadata (epoch, the metrics so far, when it was saved, the run's attempt) and the
scikit-learn estimator as skops bytes, loaded only if it holds nothing but the types the caller trusts.
Nothing is ever unpickled.

Writes are all-or-nothing: Cloud Storage shows an object only once its upload completed, and a local
checkpoint is written to a temporary name and renamed. A run killed while saving leaves the previous
epoch's checkpoint as the latest; one that cannot be read (or holds an untrusted type) is skipped for the
one before it. Each epoch has its own object name, written once: the runs' account may create and read
objects, not overwrite or delete them (terraform/storage.tf); the bucket's lifecycle deletes them.

**Integrity.** The bucket is shared, and the runs' one account may write under every job's prefix, so one
tenant's run could plant an object in another's. With the job's own key (``FLEET_JOB_KEY``, given to its
run alone, the same on every attempt) each object starts with :data:`MAGIC` and an HMAC-SHA256 of the job
id, the epoch and the bytes, keyed with a hash of that key; :meth:`CheckpointStore.load` rejects an object
without a valid one (so :meth:`~CheckpointStore.latest` skips it). A run without a key writes and reads
plain objects.

``google.cloud.storage`` is imported only for a ``gs://`` location, numpy and skops when a checkpoint is
saved or read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Where the run keeps its checkpoints (``gs://<bucket>/<tenant>/<job id>/``), set by the fleet's launchers.
ENV = "FLEET_CHECKPOINT_URI"
#: Object names: ``epoch-000003.npz`` (zero-padded, so names sort by epoch too).
_NAME = re.compile(r"epoch-(\d{6})\.npz$")


def object_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}.npz"


@dataclass(frozen=True)
class Checkpoint:
    """What a run needs to go on after ``epoch``: the estimator as it was, the metrics so far."""

    epoch: int
    model: Any
    #: The per-epoch metrics reported so far (one dict per epoch, oldest first).
    metrics: list[dict[str, float]] = field(default_factory=list)
    #: When it was saved (Unix seconds, the run's clock); set by :meth:`CheckpointStore.save`.
    saved_at: float = 0.0
    attempt: int = 0
    #: Where it is stored (set on save and on load).
    uri: str = ""


class _Blobs(Protocol):
    def put(self, name: str, data: bytes) -> str: ...
    def get(self, name: str) -> bytes: ...
    def names(self) -> list[str]: ...


class _Directory:
    """Checkpoints in a local directory (the local backend, tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, name: str, data: bytes) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.path / name)  # atomic: a reader sees the whole checkpoint or none
        return str(self.path / name)

    def get(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def names(self) -> list[str]:
        return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []


class _Bucket:
    """Checkpoints in Cloud Storage under ``gs://bucket/prefix`` (locally: the stack's stand-in, reached
    through ``STORAGE_EMULATOR_HOST``, which the client honours)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        # lazy: the Cloud Storage client loads only for a gs:// location
        from google.cloud import storage  # type: ignore[attr-defined]

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT") or None
        self.bucket = storage.Client(project=project).bucket(bucket)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def put(self, name: str, data: bytes) -> str:
        blob = self.bucket.blob(self.prefix + name)
        blob.upload_from_string(data, content_type="application/octet-stream")
        return f"gs://{self.bucket.name}/{self.prefix}{name}"

    def get(self, name: str) -> bytes:
        data: bytes = self.bucket.blob(self.prefix + name).download_as_bytes()
        return data

    def names(self) -> list[str]:
        return [
            blob.name[len(self.prefix) :] for blob in self.bucket.client.list_blobs(self.bucket, prefix=self.prefix)
        ]


#: The start of an object signed with the job's key, before its 32-byte HMAC.
MAGIC = b"FLEETCK1"


class CheckpointStore:
    """The run's checkpoints at one location; see the module's docstring."""

    def __init__(self, blobs: _Blobs, uri: str, *, job_key: str | None = None, job_id: str = "") -> None:
        self._blobs = blobs
        self.uri = uri
        self._mac_key = hashlib.sha256(b"fleet-checkpoint\0" + job_key.encode()).digest() if job_key else None
        self._job_id = job_id

    @classmethod
    def from_uri(cls, uri: str, *, job_key: str | None = None, job_id: str = "") -> CheckpointStore:
        """``gs://bucket/prefix/`` (Cloud Storage) or a local directory (a path or ``file://`` URI); with
        ``job_key`` (``FLEET_JOB_KEY``) its objects are signed for ``job_id`` and checked on load."""
        if uri.startswith("gs://"):
            bucket, _, prefix = uri[5:].partition("/")
            if not bucket:
                raise ValueError(f"FLEET_CHECKPOINT_URI {uri!r} names no bucket")
            return cls(_Bucket(bucket, prefix), uri, job_key=job_key, job_id=job_id)
        path = Path(uri.removeprefix("file://"))
        return cls(_Directory(path), uri, job_key=job_key, job_id=job_id)

    def _tag(self, epoch: int, data: bytes) -> bytes:
        assert self._mac_key is not None
        bound = self._job_id.encode() + b"\0" + str(epoch).encode() + b"\0"
        return hmac.new(self._mac_key, bound + data, hashlib.sha256).digest()

    def _sealed(self, epoch: int, data: bytes) -> bytes:
        return data if self._mac_key is None else MAGIC + self._tag(epoch, data) + data

    def _opened(self, epoch: int, stored: bytes) -> bytes:
        """The checkpoint's bytes; raises ValueError when they are not signed for this job and epoch."""
        if self._mac_key is None:
            return stored
        tag, data = stored[len(MAGIC) : len(MAGIC) + 32], stored[len(MAGIC) + 32 :]
        if not stored.startswith(MAGIC) or not hmac.compare_digest(tag, self._tag(epoch, data)):
            raise ValueError(f"checkpoint of epoch {epoch} is not signed with this job's key")
        return data

    def epochs(self) -> list[int]:
        """The epochs saved here, oldest first."""
        found = (_NAME.search(name) for name in self._blobs.names() if "/" not in name)
        return sorted(int(match.group(1)) for match in found if match)

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store ``checkpoint`` (as epoch ``checkpoint.epoch``); returns it with ``saved_at`` and ``uri``."""
        # lazy: numpy and skops load when a checkpoint is written, not with the module
        from shared.ml import storage

        saved_at = time.time()
        meta = {
            "epoch": checkpoint.epoch,
            "metrics": checkpoint.metrics,
            "saved_at": saved_at,
            "attempt": checkpoint.attempt,
        }
        try:
            # lazy: checked before packing, which would silently leave the model out without skops
            import skops.io  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("skops is not installed: a checkpoint cannot hold the model") from exc
        data = storage.pack({}, meta, sklearn_object=checkpoint.model)
        uri = self._blobs.put(object_name(checkpoint.epoch), self._sealed(checkpoint.epoch, data))
        return Checkpoint(
            checkpoint.epoch, checkpoint.model, list(checkpoint.metrics), saved_at, checkpoint.attempt, uri
        )

    def load(self, epoch: int, trusted: frozenset[str]) -> Checkpoint:
        # lazy: numpy and skops load when a checkpoint is read, not with the module
        from shared.ml import storage

        arrays, meta = storage.unpack(self._opened(epoch, self._blobs.get(object_name(epoch))))
        model = storage.sklearn_object(arrays, trusted)
        if model is None:
            raise ValueError(f"checkpoint of epoch {epoch} holds no model")
        return Checkpoint(
            epoch=int(meta["epoch"]),
            model=model,
            metrics=[dict(m) for m in meta.get("metrics", [])],
            saved_at=float(meta.get("saved_at", 0.0)),
            attempt=int(meta.get("attempt", 0)),
            uri=self.uri.rstrip("/") + "/" + object_name(epoch),
        )

    def latest(self, trusted: frozenset[str], *, at_most: int | None = None) -> tuple[Checkpoint | None, list[str]]:
        """The newest checkpoint that loads (of an epoch up to ``at_most``), and why newer ones were skipped."""
        skipped: list[str] = []
        for epoch in reversed(self.epochs()):
            if at_most is not None and epoch > at_most:
                continue
            try:
                return self.load(epoch, trusted), skipped
            except Exception as exc:  # unreadable, untrusted, truncated: the one before it
                skipped.append(f"epoch {epoch}: {type(exc).__name__}: {exc}")
        return None, skipped
