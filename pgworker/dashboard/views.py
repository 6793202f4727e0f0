"""What the dashboard's pages show, computed from the admin API and the stats table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ..admin import JOB_STATES, JobState, StatRow
from .stats import MinuteCount, minutes_between

#: Pixels of the chart: one bar per minute.
BAR_WIDTH = 4
CHART_HEIGHT = 120


@dataclass(frozen=True)
class CountRow:
    """How many jobs of one task (or queue) are in each state."""

    name: str
    counts: dict[str, int]
    total: int


def counts_by(stats: Sequence[StatRow], key: Literal["task", "queue"]) -> list[CountRow]:
    """Job counts by state, per task or per queue ("(none)" for jobs without one)."""
    table: dict[str, dict[str, int]] = {}
    for row in stats:
        name = row.task_identifier if key == "task" else (row.queue_name or "(none)")
        counts = table.setdefault(name, dict.fromkeys(JOB_STATES, 0))
        counts[row.state] += row.count
    return [CountRow(name, counts, sum(counts.values())) for name, counts in sorted(table.items())]


@dataclass(frozen=True)
class Bar:
    """One minute of the chart, with its bar's geometry in pixels."""

    minute: datetime
    completed: int
    failed: int
    x: int
    completed_height: int
    failed_height: int


@dataclass(frozen=True)
class Chart:
    """Completed and failed jobs per minute over the last ``hours``, as SVG bars."""

    hours: int
    width: int
    height: int
    start: datetime
    end: datetime
    bars: list[Bar] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    peak: int = 0


def build_chart(minutes: Sequence[MinuteCount], *, now: datetime, hours: int) -> Chart:
    """The chart of the minutes from ``now - hours`` to ``now``; minutes without rows
    get no bar."""
    start = (now - timedelta(hours=hours)).replace(second=0, microsecond=0)
    slots = {minute: i for i, minute in enumerate(minutes_between(start, now))}
    by_minute = {m.minute: m for m in minutes if m.minute in slots}
    peak = max((m.completed + m.failed for m in by_minute.values()), default=0)
    scale = (CHART_HEIGHT - 10) / peak if peak else 0.0
    bars = [
        Bar(
            minute=minute,
            completed=m.completed,
            failed=m.failed,
            x=slots[minute] * BAR_WIDTH,
            completed_height=max(1, round(m.completed * scale)) if m.completed else 0,
            failed_height=max(1, round(m.failed * scale)) if m.failed else 0,
        )
        for minute, m in sorted(by_minute.items())
    ]
    return Chart(
        hours=hours,
        width=len(slots) * BAR_WIDTH,
        height=CHART_HEIGHT,
        start=start,
        end=now,
        bars=bars,
        completed=sum(b.completed for b in bars),
        failed=sum(b.failed for b in bars),
        peak=peak,
    )


@dataclass(frozen=True)
class JobFilters:
    """The job list's filters and page, read from a request's arguments."""

    task: str | None = None
    queue: str | None = None
    state: JobState | None = None
    job_key: str | None = None
    page: int = 1

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> JobFilters:
        """Filters from query or form arguments; empty or unknown values mean "any"."""
        state = args.get("state") or None
        try:
            page = max(1, int(args.get("page") or 1))
        except ValueError:
            page = 1
        return cls(
            task=args.get("task") or None,
            queue=args.get("queue") or None,
            state=state if state in JOB_STATES else None,
            job_key=args.get("key") or None,
            page=page,
        )

    def query(self, **changes: str | int) -> dict[str, str | int]:
        """These filters as query arguments, with ``changes`` applied."""
        values: dict[str, str | int] = {
            name: value
            for name, value in (
                ("task", self.task),
                ("queue", self.queue),
                ("state", self.state),
                ("key", self.job_key),
                ("page", self.page),
            )
            if value
        }
        values.update(changes)
        return values
