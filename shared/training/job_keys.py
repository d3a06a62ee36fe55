"""Each training job's own signing key: its run signs its ``job-progress`` reports with it.

The key is derived from the fleet key and the job id (HMAC-SHA256 of the job id under the fleet key's
private bytes, as an Ed25519 seed), not drawn at random: a launch is retried after a crash and must give
the run it finds (started by the first attempt) the same key, and nothing but the public half is ever
stored. Whoever holds the fleet key could sign for any job; they can already sign commands and job
settlements, so this adds nothing to that secret's worth. The public half is written on the job
(``job_key``) before the run starts, and the report path checks reports against it alone
(shared/domain/identity.py ``check_job``): no agent document is read.

The private half reaches the run only, as ``FLEET_JOB_KEY`` (PKCS#8 PEM on one line, newlines written
``\\n``, as the fleet's own key in FLEET_COMMAND_KEY): the process environment locally, a Kubernetes
Secret owned by the Job on GKE, the job's environment on Cloud Run (docs/jobs.md says who can read it).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_agent.identity import AgentKey

from shared.platform import fleet_key

ENV = "FLEET_JOB_KEY"
_CONTEXT = b"agent-fleet-manager/job-key/v1\x00"


def derive(secret: bytes, job_id: str) -> AgentKey:
    """The key of job ``job_id`` under ``secret`` (the fleet key's PEM). Pure."""
    seed = hmac.new(secret, _CONTEXT + job_id.encode(), hashlib.sha256).digest()
    return AgentKey(Ed25519PrivateKey.from_private_bytes(seed))


def for_job(job_id: str) -> AgentKey:
    """The job's key. Raises MissingFleetKey when the function has no fleet key: a run launched without
    its key would have every report refused, so the launch fails (and is retried) instead."""
    return derive(fleet_key.get().to_pem(), job_id)


def env_value(key: AgentKey) -> str:
    """``FLEET_JOB_KEY``'s value: the PEM on one line."""
    return key.to_pem().decode().strip().replace("\n", "\\n")
