"""Where a training run keeps its checkpoints: ``gs://<checkpoints bucket>/<tenant>/<job id>/``.

The bucket is the models bucket's sibling, ``<project>-fleet-checkpoints`` (``FLEET_CHECKPOINTS_BUCKET``
overrides it; the local stack serves it from its storage stand-in). The run gets the location as
``FLEET_CHECKPOINT_URI`` from every launcher (shared/training/launch.py puts it in the run's environment,
which the local process, the GKE Job's container and the Cloud Run job's container all receive), the same on
every attempt, so a relaunched or retried run finds what its predecessor saved (jobs/checkpoints.py).
"""

from __future__ import annotations

import os

from shared.platform import settings

ENV = "FLEET_CHECKPOINT_URI"
BUCKET_ENV = "FLEET_CHECKPOINTS_BUCKET"


def bucket() -> str:
    return os.environ.get(BUCKET_ENV) or f"{settings.get().project}-fleet-checkpoints"


def uri(tenant: str, job_id: str) -> str:
    """The job's checkpoint location (a prefix, ending in ``/``)."""
    return f"gs://{bucket()}/{tenant}/{job_id}/"
