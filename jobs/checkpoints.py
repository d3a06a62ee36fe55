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

``google.cloud.storage`` is imported only for a ``gs://`` location, numpy and skops when a checkpoint is
saved or read.
"""

from __future__ import annotations

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


class CheckpointStore:
    """The run's checkpoints at one location; see the module's docstring."""

    def __init__(self, blobs: _Blobs, uri: str) -> None:
        self._blobs = blobs
        self.uri = uri

    @classmethod
    def from_uri(cls, uri: str) -> CheckpointStore:
        """``gs://bucket/prefix/`` (Cloud Storage) or a local directory (a path or ``file://`` URI)."""
        if uri.startswith("gs://"):
            bucket, _, prefix = uri[5:].partition("/")
            if not bucket:
                raise ValueError(f"FLEET_CHECKPOINT_URI {uri!r} names no bucket")
            return cls(_Bucket(bucket, prefix), uri)
        path = Path(uri.removeprefix("file://"))
        return cls(_Directory(path), uri)

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
        uri = self._blobs.put(object_name(checkpoint.epoch), data)
        return Checkpoint(
            checkpoint.epoch, checkpoint.model, list(checkpoint.metrics), saved_at, checkpoint.attempt, uri
        )

    def load(self, epoch: int, trusted: frozenset[str]) -> Checkpoint:
        # lazy: numpy and skops load when a checkpoint is read, not with the module
        from shared.ml import storage

        arrays, meta = storage.unpack(self._blobs.get(object_name(epoch)))
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
