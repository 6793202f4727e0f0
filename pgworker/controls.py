"""Task controls: what a task raises or returns to decide what becomes of its job."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from .errors import ConfigurationError
from .spec import check_delay, check_run_at


class JobControl(Exception):
    """Base of the exceptions a task raises to decide its job's fate, rather than fail
    it with the usual backoff. Raise one from a sync or an async task alike.

    A job that was cancelled, or that ran out of its timeout, stays cancelled or timed
    out whatever the task raises as it unwinds.
    """


class PermanentFailure(JobControl):
    """Fail the job now, for good: its attempts are used up (``max_attempts`` is not
    waited for), ``last_error`` is ``"PermanentFailure: <reason>"`` and the plugins hear
    ``on_job_permanently_failed``. Without a reason, the exception it was raised
    ``from`` is described instead."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(JobControl):
    """Fail this attempt and run the job again after ``delay`` (seconds or a timedelta)
    or at ``run_at`` (timezone-aware), instead of after the task's backoff. The attempt
    counts: on the last one, the job is permanently failed as with any failure.
    ``last_error`` is ``"Retry: <reason>"`` (or the exception it was raised ``from``)."""

    def __init__(
        self,
        reason: str = "",
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
    ) -> None:
        _check_when(type(self).__name__, delay, run_at)
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.run_at = run_at


class Snooze(JobControl):
    """Run the job again after ``delay`` (seconds or a timedelta) or at ``run_at``
    (timezone-aware) without counting this attempt: a snooze is not a failure. The
    attempt is refunded, ``last_error`` keeps what it held (the last real failure) and
    no failure hook is called; ``reason`` is only logged. A task that always snoozes
    waits forever: give it a deadline of its own."""

    def __init__(
        self,
        delay: float | timedelta | None = None,
        *,
        run_at: datetime | None = None,
        reason: str = "",
    ) -> None:
        _check_when(type(self).__name__, delay, run_at)
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.run_at = run_at


class BatchResult:
    """What a batch task (one whose payload is a JSON array) returns to report each
    item: one entry per item, in order, None for a success and an exception for a
    failure.

    If any item failed, the job fails (the attempt counts) with a payload rewritten to
    the failed items only, and ``last_error`` sums them up (``"2 of 4 batch items
    failed"`` and one line per failure); so only those are retried, as graphile-worker
    does with a task's array of results. If none failed, the job completes. A result of
    another length than the payload fails the whole job, payload untouched (as the Rust
    port does; Node would count it a success).
    """

    __slots__ = ("results",)

    def __init__(self, results: Iterable[BaseException | None]) -> None:
        self.results: tuple[BaseException | None, ...] = tuple(results)
        for result in self.results:
            if result is not None and not isinstance(result, BaseException):
                raise TypeError(
                    "BatchResult takes one entry per item: None for a success, an exception "
                    f"for a failure; got {result!r}"
                )

    @property
    def failures(self) -> list[tuple[int, BaseException]]:
        """The failed items: (index in the payload, exception)."""
        return [(i, exc) for i, exc in enumerate(self.results) if exc is not None]

    def __repr__(self) -> str:
        return f"<BatchResult {len(self.failures)} of {len(self.results)} failed>"


def _check_when(name: str, delay: float | timedelta | None, run_at: datetime | None) -> None:
    if (delay is None) == (run_at is None):
        raise ConfigurationError(f"{name} needs a delay or a run_at (one of them)")
    if delay is not None:
        check_delay(f"{name} delay", delay)
    if run_at is not None:
        check_run_at(run_at)
