"""Cron time expressions: five fields parsed into sets of values, matched in UTC."""

from __future__ import annotations

import re
from bisect import bisect_left
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

from .errors import ConfigurationError

#: Cron's unit of time: items are due at whole minutes.
MINUTE = timedelta(minutes=1)
#: How far ``next_after`` looks ahead: the longest gap between two matches is 8 years
#: (29 February, 2096 to 2104).
_LOOKAHEAD_DAYS = 9 * 366

#: One term of a field's comma list: ``*``, ``N`` or ``A-B``, each optionally ``/STEP``.
_TERM = re.compile(r"^(?:(\*)|([0-9]+)(?:-([0-9]+))?)(?:/([0-9]+))?$")


class CronExpressionError(ConfigurationError):
    """A cron time expression is malformed; ``problem`` says what is wrong in which field."""

    def __init__(self, expression: str, problem: str) -> None:
        super().__init__(f"invalid cron expression '{expression}': {problem}")
        self.expression = expression
        self.problem = problem


class _Field(NamedTuple):
    name: str
    low: int
    high: int


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12),
    _Field("day-of-week", 0, 6),
)
_WEEKDAY = _FIELDS[4]


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    """The values one field's comma list selects; raises ValueError naming the problem."""
    # 7 is Sunday too (as in graphile-worker); the step then counts on up to 7.
    high = 7 if field is _WEEKDAY else field.high
    values: set[int] = set()
    for term in text.split(","):
        match = _TERM.fullmatch(term)
        if match is None:
            raise ValueError(
                f"unsupported syntax '{term}' in the {field.name} field: expected a number N, "
                "a range A-B, *, or one of these followed by /STEP"
            )
        star, first, last, step_text = match.groups()
        if star:
            start, end = field.low, field.high
        else:
            start = _bounded(field, high, int(first))
            if last is not None:
                end = _bounded(field, high, int(last))
                if end < start:
                    raise ValueError(
                        f"invalid range '{term}' in the {field.name} field: "
                        f"{end} is smaller than {start}"
                    )
            else:  # N/STEP counts from N to the field's end, as in most crons
                end = max(start, field.high) if step_text is not None else start
        step = 1 if step_text is None else int(step_text)
        if step < 1:
            raise ValueError(
                f"invalid step '{term}' in the {field.name} field: "
                f"the step '{step_text}' must be greater than zero"
            )
        values.update(range(start, end + 1, step))
    if field is _WEEKDAY and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _bounded(field: _Field, high: int, value: int) -> int:
    if field.low <= value <= high:
        return value
    size = "large" if value > high else "small"
    sunday = " (7 also means Sunday)" if field is _WEEKDAY else ""
    raise ValueError(
        f"too {size} value '{value}' in the {field.name} field: "
        f"expected values in the range {field.low}-{field.high}{sunday}"
    )


class CronExpression(msgspec.Struct, frozen=True):
    """A parsed five-field cron time expression, matched in UTC.

    Fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6 (0 or
    7 is Sunday). Each field is a comma list of ``N``, ``A-B``, ``*``, ``*/S`` and, beyond
    what graphile-worker accepts, ``A-B/S`` and ``N/S`` (N up to the field's end, step S).
    No names (``MON``, ``JAN``) and no ``@daily``. When both day fields are restricted
    (not every value), a time matches if either day field does, as in every cron.
    """

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``text``; raises CronExpressionError naming the field and the problem."""
        fields = text.split()
        if len(fields) != 5:
            raise CronExpressionError(
                text.strip(),
                "expected 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(fields)}",
            )
        try:
            sets = [_parse_field(field, part) for field, part in zip(_FIELDS, fields, strict=True)]
        except ValueError as exc:
            raise CronExpressionError(" ".join(fields), str(exc)) from None
        return cls(" ".join(fields), *sets)

    def __repr__(self) -> str:
        return f"CronExpression({self.text!r})"

    def __str__(self) -> str:
        return self.text

    def matches(self, ts: datetime) -> bool:
        """Whether the minute of ``ts`` (timezone-aware, compared in UTC) matches."""
        if ts.tzinfo is not UTC:
            if ts.tzinfo is None:
                raise ValueError(f"cron matching needs a timezone-aware datetime, got {ts}")
            ts = ts.astimezone(UTC)
        return (
            ts.minute in self.minutes
            and ts.hour in self.hours
            and ts.month in self.months
            and self._day_matches(ts.day, ts.isoweekday() % 7)
        )

    def _day_matches(self, day: int, weekday: int) -> bool:
        # "Restricted" means not every value, counted as graphile-worker counts it, so
        # that a Node worker and pgworker pick the same minutes.
        days_restricted = len(self.days) != 31
        weekdays_restricted = len(self.weekdays) != 7
        if days_restricted and weekdays_restricted:
            return day in self.days or weekday in self.weekdays
        if days_restricted:
            return day in self.days
        if weekdays_restricted:
            return weekday in self.weekdays
        return True

    def next_after(self, ts: datetime) -> datetime | None:
        """The first matching minute strictly after ``ts``, in UTC; None if there is none
        (``0 0 30 2 *`` never matches)."""
        if ts.tzinfo is None:
            raise ValueError(f"cron matching needs a timezone-aware datetime, got {ts}")
        first = floor_minute(ts.astimezone(UTC)) + MINUTE
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = first.replace(hour=0, minute=0)
        earliest_hour, earliest_minute = first.hour, first.minute  # on the first day only
        for _ in range(_LOOKAHEAD_DAYS):
            if day.month in self.months and self._day_matches(day.day, day.isoweekday() % 7):
                for hour in hours[bisect_left(hours, earliest_hour) :]:
                    index = bisect_left(minutes, earliest_minute if hour == earliest_hour else 0)
                    if index < len(minutes):
                        return day.replace(hour=hour, minute=minutes[index])
            day += timedelta(days=1)
            earliest_hour = earliest_minute = 0
        return None


def floor_minute(ts: datetime) -> datetime:
    """``ts`` without its seconds and microseconds."""
    return ts.replace(second=0, microsecond=0)


def ceil_minute(ts: datetime) -> datetime:
    """``ts`` rounded up to a whole minute (unchanged if it is one)."""
    floored = floor_minute(ts)
    return floored if floored == ts else floored + MINUTE


def format_cron_ts(ts: datetime) -> str:
    """``ts`` as graphile-worker writes ``_cron.ts``: ISO 8601 UTC with milliseconds and Z."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
