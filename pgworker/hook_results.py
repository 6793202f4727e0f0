"""What plugin hooks may return to change a job's course or a defer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Skip:
    """From ``before_job_run``: don't run the job, complete it (it is deleted).
    From ``before_defer``: don't add the job (``defer`` raises DeferSkipped)."""


@dataclass(frozen=True, slots=True)
class Complete:
    """From ``after_job_run``: record the job as a success, whatever happened."""


@dataclass(frozen=True, slots=True)
class Fail:
    """From ``before_job_run`` or ``after_job_run``: record the job as failed with
    ``message``; it is retried like any failure, while attempts remain."""

    message: str


@dataclass(frozen=True, slots=True)
class RewritePayload:
    """From ``before_defer``: defer ``payload`` instead of the one given (it is then
    checked against the task's payload type as usual)."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Reject:
    """From ``before_defer``: refuse the defer; the caller gets DeferRejected(message)."""

    message: str


#: What ``before_job_run`` may return; None means "carry on".
BeforeRun = Skip | Fail | None
#: What ``after_job_run`` may return; None keeps the outcome.
AfterRun = Complete | Fail | None
#: What ``before_defer`` may return; None defers the payload as given.
BeforeDefer = RewritePayload | Skip | Reject | None
