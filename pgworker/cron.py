"""Recurring jobs: the Cron builder (the scheduler is in scheduler.py, the crontab text
format in crontab.py, time expressions in cron_expr.py; all re-exported here)."""

from __future__ import annotations

import copy
import enum
import json
from datetime import timedelta
from typing import Any, Protocol

import msgspec

from .cron_expr import CronExpression, CronExpressionError
from .crontab import (
    CRON_ID,
    CRON_JOB_KEY_MODES,
    CronItem,
    CronJobKeyMode,
    CrontabError,
    parse_crontab,
)
from .errors import ConfigurationError
from .payload import PayloadCodec
from .scheduler import CronScheduler, utc_now
from .spec import JobSpec

__all__ = [
    "Cron",
    "CronExpression",
    "CronExpressionError",
    "CronItem",
    "CronJobKeyMode",
    "CronScheduler",
    "CrontabError",
    "TaskLike",
    "Weekday",
    "parse_crontab",
    "utc_now",
]

_ANY_CODEC: PayloadCodec[Any] = PayloadCodec(Any)


class Weekday(enum.IntEnum):
    """Days of the week numbered as cron numbers them: Sunday is 0 (unlike
    ``datetime.weekday()``, where Monday is 0)."""

    SUNDAY = 0
    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6


class TaskLike(Protocol):
    """What the builder needs of a task: its identifier. (A pgworker ``Task`` also has a
    ``codec``, which the builder uses to check payloads.)"""

    @property
    def identifier(self) -> str:
        """The task identifier."""
        ...


class _Options(msgspec.Struct, frozen=True, kw_only=True):
    """A builder's options, each already checked on its own."""

    id: str | None
    fill: timedelta
    queue: str | None
    priority: int | None
    max_attempts: int | None
    job_key: str | None
    job_key_mode: CronJobKeyMode | None
    payload: dict[str, Any] | None


class Cron:
    """Builds a CronItem: a task, a five-field UTC cron expression and options.

    ``Cron("0 4 * * 1-5", report, id="weekday-report", queue="reports")`` or a named
    constructor such as ``Cron.daily_at(report, 4, 0)``, refined by chaining (each call
    returns a new builder) and finished with ``build()``:

        Cron.every_n_minutes(say_hello, 2).fill(timedelta(minutes=10)).payload(hello)

    ``task`` is a task identifier or a ``Task``; with a Task, payloads are checked
    against its payload type, ``_cron`` field included, and errors raise PayloadError.
    """

    def __init__(
        self,
        expression: str,
        task: str | TaskLike,
        *,
        id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        fill: timedelta | None = None,
        job_key: str | None = None,
        job_key_mode: CronJobKeyMode | None = None,
        payload: object = None,
    ) -> None:
        self._expression = CronExpression.parse(expression)
        if isinstance(task, str):
            self._task, codec = task, None
        else:
            self._task, codec = task.identifier, getattr(task, "codec", None)
        self._codec: PayloadCodec[Any] | None = codec if isinstance(codec, PayloadCodec) else None
        self._options = _Options(
            id=None if id is None else _check_id(id),
            fill=timedelta(0) if fill is None else _check_fill(fill),
            queue=JobSpec(queue=queue).validate().queue,
            priority=JobSpec(priority=priority).validate().priority,
            max_attempts=JobSpec(max_attempts=max_attempts).validate().max_attempts,
            job_key=JobSpec(job_key=job_key).validate().job_key,
            job_key_mode=_check_mode(job_key_mode),
            payload=None if payload is None else self._encode_payload(payload),
        )

    # -- named constructors -----------------------------------------------------------

    @classmethod
    def every_minute(cls, task: str | TaskLike) -> Cron:
        """Every minute: ``* * * * *``."""
        return cls("* * * * *", task)

    @classmethod
    def every_n_minutes(cls, task: str | TaskLike, n: int) -> Cron:
        """Minutes 0, n, 2n... of every hour: ``*/n * * * *`` (1 <= n <= 59; an n that does
        not divide 60 gives a shorter gap at the top of the hour)."""
        return cls(f"*/{_check('n', n, 1, 59)} * * * *", task)

    @classmethod
    def hourly_at(cls, task: str | TaskLike, minute: int) -> Cron:
        """Every hour at ``minute``: ``M * * * *``."""
        return cls(f"{_check('minute', minute, 0, 59)} * * * *", task)

    @classmethod
    def daily_at(cls, task: str | TaskLike, hour: int, minute: int) -> Cron:
        """Every day at ``hour:minute`` UTC: ``M H * * *``."""
        return cls(f"{_check('minute', minute, 0, 59)} {_check('hour', hour, 0, 23)} * * *", task)

    @classmethod
    def weekly_on(
        cls, task: str | TaskLike, weekday: Weekday | int, hour: int, minute: int
    ) -> Cron:
        """Every week on ``weekday`` (cron numbering: 0 or 7 is Sunday, or a Weekday) at
        ``hour:minute`` UTC: ``M H * * D``."""
        day = _check("weekday", weekday, 0, 7) % 7
        return cls(
            f"{_check('minute', minute, 0, 59)} {_check('hour', hour, 0, 23)} * * {day}", task
        )

    @classmethod
    def monthly_on(cls, task: str | TaskLike, day: int, hour: int, minute: int) -> Cron:
        """Every month on ``day`` at ``hour:minute`` UTC: ``M H D * *`` (months without that
        day are skipped)."""
        time = f"{_check('minute', minute, 0, 59)} {_check('hour', hour, 0, 23)}"
        return cls(f"{time} {_check('day', day, 1, 31)} * *", task)

    @classmethod
    def yearly_on(cls, task: str | TaskLike, month: int, day: int, hour: int, minute: int) -> Cron:
        """Every year on ``month``/``day`` at ``hour:minute`` UTC: ``M H D MON *``."""
        time = f"{_check('minute', minute, 0, 59)} {_check('hour', hour, 0, 23)}"
        date = f"{_check('day', day, 1, 31)} {_check('month', month, 1, 12)}"
        return cls(f"{time} {date} *", task)

    # -- options (each returns a new builder) ----------------------------------------

    def id(self, identifier: str) -> Cron:
        """The item's identifier in ``_private_known_crontabs`` (default: the task's).
        Give one when a cron table holds the same task twice."""
        return self._with(id=_check_id(identifier))

    def fill(self, period: timedelta) -> Cron:
        """Backfill: after downtime, make the jobs of missed minutes this recent."""
        return self._with(fill=_check_fill(period))

    def queue(self, name: str) -> Cron:
        """Put the jobs in this named queue."""
        return self._with(queue=JobSpec(queue=name).validate().queue)

    def priority(self, priority: int) -> Cron:
        """The jobs' priority (lower runs first)."""
        return self._with(priority=JobSpec(priority=priority).validate().priority)

    def max_attempts(self, max_attempts: int) -> Cron:
        """The jobs' max_attempts."""
        checked = JobSpec(max_attempts=max_attempts).validate().max_attempts
        return self._with(max_attempts=checked)

    def job_key(self, job_key: str) -> Cron:
        """A job key: a job not yet run is replaced by the next minute's (``replace``)."""
        return self._with(job_key=JobSpec(job_key=job_key).validate().job_key)

    def job_key_mode(self, mode: CronJobKeyMode) -> Cron:
        """``replace`` (default) or ``preserve_run_at``: a pending job keeps its run_at
        while its payload is updated. Needs a ``job_key``."""
        return self._with(job_key_mode=_check_mode(mode))

    def payload(self, value: object) -> Cron:
        """The jobs' payload: a JSON object (a dict, or a Struct or dataclass of the
        task's payload type); each job gets it plus a ``_cron`` field."""
        return self._with(payload=self._encode_payload(value))

    def build(self) -> CronItem:
        """The CronItem; with a Task, raises PayloadError if its payload type does not
        accept the jobs' payload."""
        options = self._options
        item = CronItem(
            identifier=options.id or self._task,
            task=self._task,
            expression=self._expression,
            backfill_period=options.fill,
            max_attempts=options.max_attempts,
            queue=options.queue,
            priority=options.priority,
            job_key=options.job_key,
            job_key_mode=(options.job_key_mode or "replace")
            if options.job_key is not None
            else options.job_key_mode,
            payload=options.payload,
        )
        if self._codec is not None:
            item.check_payload(self._codec)
        return item

    def __repr__(self) -> str:
        return f"<Cron {self._expression.text!r} {self._options.id or self._task!r}>"

    # -- helpers ----------------------------------------------------------------------

    def _with(self, **changes: Any) -> Cron:
        built = copy.copy(self)
        built._options = msgspec.structs.replace(self._options, **changes)
        return built

    def _encode_payload(self, value: object) -> dict[str, Any]:
        encoded = (self._codec or _ANY_CODEC).encode(value)
        payload = json.loads(encoded)
        if not isinstance(payload, dict):
            raise ConfigurationError(
                "a cron payload must be a JSON object (each job gets a _cron field added), "
                f"got {encoded[:80]}"
            )
        return payload


def _check_id(identifier: str) -> str:
    if not isinstance(identifier, str) or not CRON_ID.fullmatch(identifier):
        raise ConfigurationError(
            f"cron id {identifier!r} must start with a letter or _ and hold only "
            "letters, digits, _ and -"
        )
    return identifier


def _check_fill(period: timedelta) -> timedelta:
    if not isinstance(period, timedelta) or period < timedelta(0):
        raise ConfigurationError(f"fill takes a timedelta of 0 or more, got {period!r}")
    return period


def _check_mode(mode: CronJobKeyMode | None) -> CronJobKeyMode | None:
    if mode is not None and mode not in CRON_JOB_KEY_MODES:
        raise ConfigurationError(
            f"a cron job_key_mode is 'replace' or 'preserve_run_at', got {mode!r}"
        )
    return mode


def _check(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(
            f"{name} must be a whole number from {low} to {high}, got {value!r}"
        )
    return value
