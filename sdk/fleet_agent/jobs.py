"""A training run reports its progress and final metrics to the fleet (topic ``job-progress``).

    with JobReporter.from_env() as reporter:  # FLEET_JOB_ID, FLEET_AGENT_ID, GOOGLE_CLOUD_PROJECT
        reporter.started("loading data")
        for epoch in range(1, epochs + 1):
            loss = train_one_epoch()
            reporter.progress(epoch, epochs, loss=loss)
        reporter.succeeded(accuracy=0.93, f1=0.88)
    # an exception inside the block is reported as ``failed`` and re-raised; leaving it flushes

The run may be anywhere (a GKE pod, a Cloud Run task, a local process): it only needs
``roles/pubsub.publisher`` on the topic. The job's *state* stays the backend's word; these reports
add progress and metrics to the job's record.

``seq`` is the wall clock in microseconds, bumped past the last one this process used: a restarted
attempt (a preempted pod) reports above everything its predecessor sent, so the server, which keeps
the highest seq, lets the later attempt win. ``google.cloud.pubsub_v1`` is imported only when the
reporter creates its own publisher.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from fleet_agent.client import Publisher
from fleet_agent.contracts import (
    AGENT_ID_PATTERN,
    DEFAULT_TOPICS,
    JOB_ID_PATTERN,
    MAX_JOB_METRICS,
    NAME_PATTERN,
    EventType,
    JobPhase,
    JobProgress,
    Signer,
    encode,
    utcnow,
)
from fleet_agent.identity import AgentKey
from fleet_agent.pending import PendingPublishes

log = logging.getLogger("fleet_agent")

#: Seconds :meth:`JobReporter.succeeded` and :meth:`JobReporter.failed` wait for Pub/Sub to accept.
FINAL_TIMEOUT_S = 30.0
#: Longest ``message`` the contract carries; longer ones are cut (an exception's repr can be huge).
MAX_MESSAGE_CHARS = 500

JOB_ID_ENV = "FLEET_JOB_ID"
AGENT_ID_ENV = "FLEET_AGENT_ID"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
TOPIC_ENV = "FLEET_JOB_PROGRESS_TOPIC"
ATTEMPT_ENV = "FLEET_JOB_ATTEMPT"
#: The job's own key (PKCS#8 PEM, on one line with ``\\n`` for its newlines), set by the fleet's launcher.
JOB_KEY_ENV = "FLEET_JOB_KEY"
TENANT_ENV = "FLEET_TENANT"
#: Set by Cloud Run jobs on every task: 0 on the first try, +1 per retry.
CLOUD_RUN_ATTEMPT_ENV = "CLOUD_RUN_TASK_ATTEMPT"

#: Metrics of a report naming a checkpoint (:meth:`JobReporter.checkpointed`, :meth:`JobReporter.resumed`): its
#: step, when it was saved (Unix seconds, the run's clock), and for a resumed run the step it resumed after.
CHECKPOINT_STEP, CHECKPOINT_AT, RESUMED_FROM = "checkpoint_step", "checkpoint_at", "resumed_from_step"

_TOPIC_PATH = re.compile(r"^projects/([^/]+)/topics/[^/]+$")


class _SeqClock:
    """Microseconds since the epoch, strictly increasing within the process.

    Shared by every reporter of the process, so two reporters of one run (a retry inside the same
    process) cannot hand out the same seq even within one microsecond; across processes the clock
    itself keeps a later attempt above an earlier one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            self._last = now if now > self._last else self._last + 1
            return self._last


_SEQ = _SeqClock()


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The metrics as finite floats; a ValueError naming the culprit otherwise (before anything is sent)."""
    if len(values) > MAX_JOB_METRICS:
        raise ValueError(f"at most {MAX_JOB_METRICS} metrics per report, got {len(values)}")
    out: dict[str, float] = {}
    for name, value in values.items():
        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"metric name {name!r} must match {NAME_PATTERN}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"metric {name!r} must be a number, not {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {name!r} must be finite, not {number}")
        out[name] = number
    return out


def _attempt(env: Mapping[str, str]) -> int:
    for name in (ATTEMPT_ENV, CLOUD_RUN_ATTEMPT_ENV):
        raw = env.get(name, "").strip()
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    return 0


class JobReporter:
    """One run's channel to the fleet: ``started``, ``progress``, then ``succeeded`` or ``failed``.

    Thread-safe. Progress reports do not wait (their futures are tracked; :meth:`close` waits for
    them); the final report waits until Pub/Sub accepted it, so the process may exit right after.
    After a final report the reporter refuses further reports: a run ends once.
    """

    def __init__(
        self,
        job_id: str,
        agent_id: str,
        *,
        project: str | None = None,
        topic: str | None = None,
        publisher: Publisher | None = None,
        attempt: int = 0,
        signer: Signer | None = None,
        tenant: str | None = None,
    ) -> None:
        """Check the ids and prepare the topic; nothing is published yet.

        ``project`` defaults to ``GOOGLE_CLOUD_PROJECT``. ``topic`` is a topic name (default
        ``job-progress``) or a full ``projects/<p>/topics/<t>`` path, whose project then needs no
        ``project``. ``attempt`` is which try of the run this is (0 first). ``signer`` (the job's own key,
        see :meth:`from_env`) signs every report, as the agent of ``tenant``.
        """
        if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
            raise ValueError(f"job_id {job_id!r} must match {JOB_ID_PATTERN}")
        if not isinstance(agent_id, str) or not re.fullmatch(AGENT_ID_PATTERN, agent_id):
            raise ValueError(f"agent_id {agent_id!r} must match {AGENT_ID_PATTERN}")
        if signer is not None and not tenant:
            raise ValueError("a signed reporter needs its agent's tenant")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= 1000:
            raise ValueError(f"attempt must be a whole number from 0 to 1000, not {attempt!r}")
        topic = topic or DEFAULT_TOPICS[EventType.JOB_PROGRESS]
        full_path = _TOPIC_PATH.match(topic)
        resolved = (
            project
            or (full_path.group(1) if full_path else None)
            or os.environ.get(PROJECT_ENV)
            or os.environ.get("GCLOUD_PROJECT")
        )
        if not resolved:
            raise ValueError(f"no project: pass project= or set {PROJECT_ENV}")
        self.job_id = job_id
        self.agent_id = agent_id
        self.attempt = attempt
        self._signer, self._tenant = signer, tenant
        self.project: str = resolved
        self._owns_publisher = publisher is None
        if publisher is None:
            # lazy: gRPC is heavy, and a run given a publisher needs none
            from google.cloud.pubsub_v1 import PublisherClient

            publisher = PublisherClient()
        self._publisher: Publisher = publisher
        self.topic: str = topic if full_path else publisher.topic_path(self.project, topic)
        # _send orders seq and enqueueing, so the publisher's batches carry reports in seq order.
        self._send = threading.Lock()
        self._pending = PendingPublishes()
        self._last: JobProgress | None = None
        self._final: JobPhase | None = None
        self._closed = False
        self._step: int | None = None
        self._total_steps: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, publisher: Publisher | None = None) -> JobReporter:
        """The reporter the fleet's launcher configured (``os.environ`` unless ``env`` is given).

        Reads ``FLEET_JOB_ID``, ``FLEET_AGENT_ID`` (both required), ``GOOGLE_CLOUD_PROJECT``, and
        optionally ``FLEET_JOB_PROGRESS_TOPIC`` and ``FLEET_JOB_ATTEMPT`` (else Cloud Run's
        ``CLOUD_RUN_TASK_ATTEMPT``, else 0). With ``FLEET_JOB_KEY`` (the job's own key, which the fleet's
        launcher gives the run it starts, and the only key the fleet believes for the job's reports) and
        ``FLEET_TENANT``, every report is signed.
        """
        env = os.environ if env is None else env
        missing = [name for name in (JOB_ID_ENV, AGENT_ID_ENV) if not env.get(name, "").strip()]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} not set: a training run reports for a fleet job; "
                "the fleet's launcher sets them (set them by hand to run outside the fleet)"
            )
        project = env.get(PROJECT_ENV, "").strip() or env.get("GCLOUD_PROJECT", "").strip() or None
        job_key = env.get(JOB_KEY_ENV, "").strip()
        signer = AgentKey.from_pem(job_key.replace("\\n", "\n")) if job_key else None
        return cls(
            env[JOB_ID_ENV].strip(),
            env[AGENT_ID_ENV].strip(),
            project=project,
            topic=env.get(TOPIC_ENV, "").strip() or None,
            publisher=publisher,
            attempt=_attempt(env),
            signer=signer,
            tenant=env.get(TENANT_ENV, "").strip() or None,
        )

    # -- state ----------------------------------------------------------------------------------

    @property
    def last_report(self) -> JobProgress | None:
        """The last report handed to the publisher (to log or print exactly what was sent)."""
        with self._send:
            return self._last

    @property
    def final_phase(self) -> JobPhase | None:
        """``succeeded`` or ``failed`` once the final report was sent; None before (or when it failed)."""
        with self._send:
            return self._final

    @property
    def pending(self) -> int:
        """Reports not yet confirmed by Pub/Sub."""
        return len(self._pending)

    # -- reports --------------------------------------------------------------------------------

    def started(self, message: str = "") -> Future[str]:
        """The run began (after its set-up, ideally): recorded as the job's progress (its state stays
        the backend's word). Does not wait."""
        future = self._report(JobPhase.STARTED, message=message)
        future.add_done_callback(self._log_failure)
        return future

    def progress(self, step: int, total_steps: int | None = None, **metrics: float) -> Future[str]:
        """Step ``step`` (of ``total_steps``) is done, with its metrics (loss, val_accuracy...).

        Fire-and-forget: returns the publish future; :meth:`close` waits for every one. Invalid
        metrics (NaN, inf, not a number) raise ValueError before anything is sent.
        """
        future = self._report(JobPhase.PROGRESS, step=step, total_steps=total_steps, metrics=metrics)
        future.add_done_callback(self._log_failure)
        return future

    def checkpointed(
        self, step: int, total_steps: int | None = None, *, uri: str, saved_at: float, **metrics: float
    ) -> Future[str]:
        """Like :meth:`progress`, for a step whose checkpoint was saved at ``uri`` at ``saved_at`` (Unix
        seconds): the report also carries ``checkpoint_step`` and ``checkpoint_at``, and names ``uri``."""
        values = {**metrics, CHECKPOINT_STEP: step, CHECKPOINT_AT: saved_at}
        future = self._report(
            JobPhase.PROGRESS, step=step, total_steps=total_steps, metrics=values, message=f"checkpoint {uri}"
        )
        future.add_done_callback(self._log_failure)
        return future

    def resumed(self, step: int, total_steps: int | None = None, *, uri: str, saved_at: float) -> Future[str]:
        """The run resumed from the checkpoint of ``step`` (saved at ``uri`` at ``saved_at``): a progress
        report at that step, with ``resumed_from_step`` and the checkpoint's step and time."""
        values = {RESUMED_FROM: step, CHECKPOINT_STEP: step, CHECKPOINT_AT: saved_at}
        message = f"resumed after step {step} from checkpoint {uri}"
        future = self._report(JobPhase.PROGRESS, step=step, total_steps=total_steps, metrics=values, message=message)
        future.add_done_callback(self._log_failure)
        return future

    def succeeded(self, **metrics: float) -> str:
        """The run finished well, with its final metrics; waits until Pub/Sub accepted (message id).

        Carries the last reported step and total, so the record's progress ends complete.
        """
        return self._finish(JobPhase.SUCCEEDED, "", metrics)

    def failed(self, message: str, **metrics: float) -> str:
        """The run failed (``message`` says why, cut to 500 characters); waits like :meth:`succeeded`."""
        return self._finish(JobPhase.FAILED, message, metrics)

    def _finish(self, phase: JobPhase, message: str, metrics: Mapping[str, float]) -> str:
        future = self._report(phase, message=message, metrics=metrics, final=True)
        try:
            return future.result(timeout=FINAL_TIMEOUT_S)
        except BaseException:
            with self._send:
                self._final = None  # not accepted: the caller may report again (with a new seq)
            raise

    def _report(
        self,
        phase: JobPhase,
        *,
        message: str = "",
        step: int | None = None,
        total_steps: int | None = None,
        metrics: Mapping[str, float] | None = None,
        final: bool = False,
    ) -> Future[str]:
        values = _metrics(metrics or {})
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        with self._send:
            if self._closed:
                raise RuntimeError(f"job {self.job_id}: the reporter is closed")
            if self._final is not None:
                raise RuntimeError(f"job {self.job_id}: the run already reported {self._final.value}")
            if final:  # from here on no report can overtake the final one
                step, total_steps = self._step, self._total_steps
            report = JobProgress(
                agent_id=self.agent_id,
                job_id=self.job_id,
                attempt=self.attempt,
                seq=_SEQ.next(),
                at=utcnow(),
                phase=phase,
                step=step,
                total_steps=total_steps,
                metrics=values,
                message=message,
            )
            body, attributes = encode(report, signer=self._signer, tenant=self._tenant)
            future = self._pending.track(self._publisher.publish(self.topic, body, **attributes))
            self._last = report
            if final:
                self._final = phase
            elif phase is JobPhase.PROGRESS:
                self._step, self._total_steps = step, total_steps
        return future

    def _log_failure(self, future: Future[str]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.warning("job %s: progress report failed: %s", self.job_id, exc)

    # -- shutdown -------------------------------------------------------------------------------

    def flush(self, timeout: float | None = FINAL_TIMEOUT_S) -> bool:
        """Wait up to ``timeout`` seconds for every report handed to Pub/Sub; True when none is left."""
        _, not_done = self._pending.wait(timeout)
        if not_done:
            log.warning("job %s: %d reports still pending", self.job_id, len(not_done))
            return False
        return True

    def close(self, timeout: float | None = FINAL_TIMEOUT_S) -> bool:
        """Wait for every outstanding report (see :meth:`flush`), then release a publisher this
        reporter created. Idempotent; reports after it raise RuntimeError."""
        flushed = self.flush(timeout)
        with self._send:
            if self._closed:
                return flushed
            self._closed = True
        if self._owns_publisher:
            stop = getattr(self._publisher, "stop", None)
            if callable(stop):
                stop()  # flushes the client's batches and ends its commit thread
        return flushed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """An exception that ends the block is reported as ``failed`` (unless a final report was
        sent already, or it is a clean ``sys.exit``), then the reporter closes; the exception propagates."""
        try:
            clean_exit = isinstance(exc, SystemExit) and exc.code in (0, None)
            if exc is not None and not clean_exit and self.final_phase is None:
                try:
                    self.failed(repr(exc))
                except Exception:
                    log.exception("job %s: could not report the failure", self.job_id)
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"JobReporter(job_id={self.job_id!r}, agent_id={self.agent_id!r}, attempt={self.attempt})"
