"""Retries: what a task's exception, control or batch result makes of its job."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec

from .controls import BatchResult, JobControl, PermanentFailure, Retry, Snooze
from .errors import ConfigurationError
from .job import Job
from .outcome import Outcome, describe_error

logger = logging.getLogger(__name__)

#: A task's own backoff: the attempts made so far (1 after the first failure) to the
#: wait before the next one, in seconds or as a timedelta.
Backoff = Callable[[int], float | timedelta]
#: How many failed items a batch job's last_error lists, one per line.
MAX_LISTED_BATCH_FAILURES = 20


def check_backoff(identifier: str, backoff: object) -> None:
    """Raise ConfigurationError unless ``backoff`` is a function of the attempt count
    that gives a finite, non-negative wait (tried on the first attempt)."""
    if not callable(backoff):
        raise ConfigurationError(
            f"task {identifier!r}: backoff must be a function of the attempt count, like "
            f"lambda attempts: 10 * attempts; got {backoff!r}"
        )
    try:
        first = backoff(1)
    except Exception as exc:
        raise ConfigurationError(
            f"task {identifier!r}: backoff(1) raised {describe_error(exc)}; it must take "
            "the attempt count and return seconds or a timedelta"
        ) from exc
    if _seconds(first) is None:
        raise ConfigurationError(
            f"task {identifier!r}: backoff(1) returned {first!r}; it must return seconds "
            "(an int or a float) or a timedelta, finite and >= 0"
        )


def backoff_delay(identifier: str, backoff: Backoff, attempts: int) -> float | None:
    """The task's wait after ``attempts`` tries, in seconds; None (graphile-worker's own
    backoff) if the function raised or gave something else than a wait (logged)."""
    try:
        seconds = _seconds(backoff(attempts))
    except Exception:
        logger.exception("The backoff of task %r failed; using the default one", identifier)
        return None
    if seconds is None:
        logger.error("The backoff of task %r gave no valid wait; using the default", identifier)
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def control_outcome(job: Job, duration_ms: float, control: JobControl) -> Outcome:
    """The outcome of a job whose task raised a control: Snooze, Retry or
    PermanentFailure."""
    if isinstance(control, Snooze):
        reason = f"snoozed: {control.reason}" if control.reason else "snoozed"
        return Outcome(
            job,
            duration_ms,
            reason,
            snoozed=True,
            retry_delay=_delay_seconds(control.delay),
            retry_at=control.run_at,
        )
    message = _control_message(control)
    if isinstance(control, Retry):
        return Outcome(
            job,
            duration_ms,
            message,
            retry_delay=_delay_seconds(control.delay),
            retry_at=control.run_at,
        )
    # PermanentFailure, and any other JobControl: fail for good.
    return Outcome(job, duration_ms, message, permanent=isinstance(control, PermanentFailure))


def _control_message(control: JobControl) -> str:
    """``Type: reason``, or the exception it was raised from if it gives no reason."""
    reason = str(control)
    if not reason and control.__cause__ is not None:
        reason = describe_error(control.__cause__)
    name = type(control).__name__
    return f"{name}: {reason}" if reason else name


def _delay_seconds(delay: float | timedelta | None) -> float | None:
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return None if delay is None else float(delay)


def batch_outcome(job: Job, duration_ms: float, result: BatchResult, payload: str) -> Outcome:
    """The outcome of a batch task that returned per-item results: complete if none
    failed, else fail with only the failed items (their JSON as it was) as the payload."""
    try:
        items = msgspec.json.decode(payload, type=list[msgspec.Raw])
    except msgspec.ValidationError:
        return Outcome(
            job, duration_ms, "the task returned a BatchResult, but its payload is not a list"
        )
    if len(result.results) != len(items):
        return Outcome(
            job,
            duration_ms,
            f"the task returned {len(result.results)} results for {len(items)} payload items",
        )
    failures = result.failures
    if not failures:
        return Outcome(job, duration_ms)
    lines = [f"{len(failures)} of {len(items)} batch items failed:"]
    lines += [describe_error(exc) for _, exc in failures[:MAX_LISTED_BATCH_FAILURES]]
    if len(failures) > MAX_LISTED_BATCH_FAILURES:
        lines.append(f"... and {len(failures) - MAX_LISTED_BATCH_FAILURES} more")
    kept = b"[" + b",".join(bytes(items[i]) for i, _ in failures) + b"]"
    return Outcome(job, duration_ms, "\n".join(lines), payload=kept.decode())


def returned_outcome(job: Job, duration_ms: float, returned: Any, payload: str) -> Outcome:
    """The outcome of a task that returned ``returned``: a success, unless it is a
    BatchResult with failed items."""
    if isinstance(returned, BatchResult):
        return batch_outcome(job, duration_ms, returned, payload)
    return Outcome(job, duration_ms)
