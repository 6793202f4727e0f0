"""Outcome: what running one job came to, and the one log line that reports it."""

from __future__ import annotations

import logging
import math
import os
import traceback
from datetime import datetime

import msgspec

from .job import Job
from .logs import SiteRecords

logger = logging.getLogger("pgworker.worker")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: graphile-worker's backoff stops growing after this many attempts (about 6 hours).
RETRY_BACKOFF_CAP_ATTEMPTS = 10
#: The error of a job whose coroutine a shutdown cancelled (it is given back, not failed).
INTERRUPTED_ERROR = "interrupted by shutdown"


def retry_delay(attempts: int) -> float:
    """The delay graphile-worker puts before the next attempt after ``attempts`` tries:
    ``exp(least(attempts, 10))`` seconds."""
    return math.exp(min(attempts, RETRY_BACKOFF_CAP_ATTEMPTS))


def describe_error(exc: BaseException) -> str:
    """The error text stored in ``last_error``: ``Type: message``. PostgreSQL text cannot
    hold NUL characters, nor UTF-8 lone surrogates (from bytes decoded with
    ``surrogateescape``: file names, argv, a subprocess's output), so they are escaped."""
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    described = described.replace("\x00", "\\x00")
    if described.isascii():
        return described
    return described.encode("utf-8", "backslashreplace").decode("utf-8")


class Outcome(msgspec.Struct, frozen=True):
    """What running one job came to; the completer writes it to the database, then logs
    it (one thread logging keeps the executors clear of the log handler's lock).

    An ``interrupted`` job (an async job cancelled by a shutdown) is neither completed nor
    failed: it goes back to the queue with its attempt refunded. Neither is a ``snoozed``
    one (its task raised Snooze): its attempt is refunded, its last_error kept (``error``
    only says why, for the log), and it runs again at its retry time.

    A failure runs again after ``retry_delay`` seconds or at ``retry_at`` when one is
    set (a task's Retry or backoff), else after graphile-worker's backoff; a batch job's
    ``payload`` (JSON text) replaces the job's, to retry only its failed items.
    """

    job: Job
    duration_ms: float
    error: str | None = None
    permanent: bool = False
    traceback: str | None = None
    interrupted: bool = False
    snoozed: bool = False
    retry_delay: float | None = None
    retry_at: datetime | None = None
    payload: str | None = None

    @property
    def is_failure(self) -> bool:
        """Whether the job failed (the attempt counts): not a success, snooze or
        interruption."""
        return self.error is not None and not (self.snoozed or self.interrupted)

    @property
    def has_retry_time(self) -> bool:
        """Whether the next attempt's time is set here rather than by the backoff."""
        return self.retry_delay is not None or self.retry_at is not None

    @classmethod
    def failure(
        cls, job: Job, duration_ms: float, exc: BaseException, *, permanent: bool = False
    ) -> Outcome:
        """The outcome of a job that raised ``exc``, with its traceback for the log."""
        return cls(job, duration_ms, describe_error(exc), permanent, _user_traceback(exc))

    @property
    def level(self) -> int:
        """INFO for a success, WARNING for a failure that will be retried, ERROR else."""
        if self.error is None or self.snoozed:
            return logging.INFO
        if self.interrupted:
            return logging.WARNING
        if self.permanent or self.job.attempts >= self.job.max_attempts:
            return logging.ERROR
        return logging.WARNING

    def log(self) -> None:
        """Write the job's one log line (plus the traceback of a failure)."""
        level = self.level
        if not logger.isEnabledFor(level):
            return
        job = self.job
        extra = {
            "job_id": job.id,
            "task_identifier": job.task_identifier,
            "queue_name": job.queue_name,
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "duration_ms": self.duration_ms,
        }
        head = f"{job.task_identifier} #{job.id} in {self.duration_ms:.1f} ms"
        attempt = f"attempt {job.attempts} of {job.max_attempts}"
        if self.error is None:
            _emit(logging.INFO, "Completed %s (%s)", (head, attempt), extra)
            return
        if self.interrupted:
            _emit(logging.WARNING, "Gave back %s (%s): %s", (head, attempt, self.error), extra)
            return
        if self.snoozed:
            _emit(
                logging.INFO, "Snoozed %s (%s refunded, %s)", (head, attempt, self.next_run), extra
            )
            return
        if self.permanent:
            fate = "permanently"
        elif level == logging.ERROR:
            fate = "no attempts left"
        else:
            fate = self.next_run
        trace = f"\n{self.traceback}" if self.traceback else ""
        _emit(level, "Failed %s (%s, %s): %s%s", (head, attempt, fate, self.error, trace), extra)

    @property
    def next_run(self) -> str:
        """When a retried or snoozed job runs again, for the log: ``retry in 2.7 s``."""
        if self.retry_at is not None:
            return f"retry at {self.retry_at.isoformat()}"
        delay = self.retry_delay
        return (
            f"retry in {format_seconds(retry_delay(self.job.attempts) if delay is None else delay)}"
        )


def _emit(level: int, msg: str, args: tuple[object, ...], extra: dict[str, object]) -> None:
    """Log a job's line, as ``logger.log(level, msg, *args, extra=extra)`` does, without
    its per-call walk of the stack for the caller (one line per job adds up): the record
    names ``Outcome.log`` in this module as where it comes from, which it always is."""
    logger.handle(_records.make(level, msg, args, extra))


#: The records of ``Outcome.log``'s lines (which name its definition's line).
_records = SiteRecords(logger, __file__, Outcome.log.__code__.co_firstlineno, "log")


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the task's own code on: pgworker's frames above it say
    nothing about the failure."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and _is_ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return "".join(lines).rstrip()


def _is_ours(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _PACKAGE_DIR


def format_seconds(seconds: float) -> str:
    """A short human duration: ``2.7 s``, ``18 min``, ``6.1 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
