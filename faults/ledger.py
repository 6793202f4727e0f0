"""The ledger table (one row per job start and finish, outside the worker schema) and
the counts made from it: jobs lost, duplicate runs, throughput over time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[tuple[Any, ...]]

TABLE = "faults_ledger"

CREATE = sql.SQL(
    """create table if not exists {table} (
        job_id bigint not null,
        event text not null check (event in ('start', 'finish')),
        worker text not null,
        at double precision not null default extract(epoch from clock_timestamp())
    )"""
).format(table=sql.Identifier(TABLE))


def create(conn: Conn) -> None:
    """Create the ledger table if needed, and empty it."""
    conn.execute(CREATE)
    conn.execute(sql.SQL("truncate {}").format(sql.Identifier(TABLE)))


def record(conn: Conn, job_id: int, event: str, worker: str) -> None:
    """One row: ``job_id`` started or finished on ``worker``, now (the server's clock)."""
    conn.execute(
        sql.SQL("insert into {} (job_id, event, worker) values (%s, %s, %s)").format(
            sql.Identifier(TABLE)
        ),
        (job_id, event, worker),
    )


@dataclass(frozen=True)
class Event:
    """One ledger row."""

    job_id: int
    event: str
    worker: str
    at: float


def events(conn: Conn, since: float = 0.0) -> list[Event]:
    """The ledger rows at or after ``since`` (unix time), in time order."""
    rows = conn.execute(
        sql.SQL("select job_id, event, worker, at from {} where at >= %s order by at").format(
            sql.Identifier(TABLE)
        ),
        (since,),
    ).fetchall()
    return [Event(*row) for row in rows]


def queued(conn: Conn, schema: str, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` still have a row in the worker schema's jobs table."""
    rows = conn.execute(
        sql.SQL("select id from {}._private_jobs where id = any(%s)").format(
            sql.Identifier(schema)
        ),
        (list(ids),),
    ).fetchall()
    return {row[0] for row in rows}


def finished(conn: Conn) -> set[int]:
    """Every job id with a finish in the ledger."""
    rows = conn.execute(
        sql.SQL("select distinct job_id from {} where event = 'finish'").format(
            sql.Identifier(TABLE)
        )
    ).fetchall()
    return {row[0] for row in rows}


def lockers(conn: Conn, schema: str, ids: Iterable[int]) -> list[tuple[int, str | None]]:
    """(job id, locked_by) of ``ids`` still in the queue."""
    rows = conn.execute(
        sql.SQL("select id, locked_by from {}._private_jobs where id = any(%s) order by id").format(
            sql.Identifier(schema)
        ),
        (list(ids),),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def running_at(all_events: Iterable[Event], moment: float) -> set[int]:
    """Jobs with a start and no finish at ``moment``: those in flight then."""
    open_runs: Counter[int] = Counter()
    for event in all_events:
        if event.at > moment:
            break
        open_runs[event.job_id] += 1 if event.event == "start" else -1
    return {job_id for job_id, count in open_runs.items() if count > 0}


@dataclass(frozen=True)
class Tally:
    """What became of a set of added jobs."""

    added: int
    finished: int
    lost: list[int]
    still_queued: list[int]
    duplicated: dict[int, int]

    @property
    def duplicate_runs(self) -> int:
        """Finishes beyond the first, over all jobs."""
        return sum(count - 1 for count in self.duplicated.values())


def tally(added: Iterable[int], all_events: Iterable[Event], still_queued: set[int]) -> Tally:
    """Lost: added, never finished and not in the queue any more. Duplicated: finished
    more than once (job id: number of finishes)."""
    finishes = Counter(e.job_id for e in all_events if e.event == "finish")
    ids = list(added)
    return Tally(
        added=len(ids),
        finished=sum(1 for i in ids if finishes[i]),
        lost=sorted(i for i in ids if not finishes[i] and i not in still_queued),
        still_queued=sorted(i for i in ids if not finishes[i] and i in still_queued),
        duplicated={i: finishes[i] for i in ids if finishes[i] > 1},
    )


def rate(finish_times: Iterable[float], start: float, end: float) -> float:
    """Finishes per second in [start, end)."""
    if end <= start:
        return 0.0
    return sum(1 for t in finish_times if start <= t < end) / (end - start)


def first_second_at(
    finish_times: Iterable[float], after: float, until: float, threshold: float
) -> float | None:
    """Seconds from ``after`` to the end of the first whole second (sliding in 0.1 s
    steps) whose finish count reaches ``threshold``; None if none does before ``until``."""
    times = sorted(t for t in finish_times if after <= t < until)
    low = 0
    for high, t in enumerate(times):
        while times[low] <= t - 1.0:
            low += 1
        if high - low + 1 >= threshold:
            return max(1.0, t - after)
    return None


def summary(counts: Mapping[str, Any]) -> str:
    """A one-line rendering of a mapping (for assertion messages)."""
    return ", ".join(f"{key}={value}" for key, value in counts.items())
