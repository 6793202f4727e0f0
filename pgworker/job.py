"""Job: one row of the jobs table as a frozen value, and the one mapping from a row."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from operator import itemgetter
from typing import Any

import msgspec


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as stored in the database (the columns of the public ``jobs`` view).

    The payload is not part of it, as in the view: a running task receives its payload
    decoded, as its first argument.
    """

    id: int
    task_identifier: str
    queue_name: str | None
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    key: str | None
    locked_at: datetime | None
    locked_by: str | None
    revision: int
    flags: list[str] | None

    @property
    def is_permanently_failed(self) -> bool:
        """True when every attempt is used up: the job stays, but is never fetched again."""
        return self.attempts >= self.max_attempts


#: The columns a Job is read from, named as in ``_private_jobs`` and the ``jobs`` view, in
#: the order of Job's fields. Its task and queue names come apart: a statement returns them
#: as names, or as ``task_id`` and ``job_queue_id`` for the store to name.
JOB_COLUMNS: tuple[str, ...] = (
    "id",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
    "key",
    "locked_at",
    "locked_by",
    "revision",
    "flags",
)


class JobRowReader:
    """Reads the rows of one statement's result by column name: where each column sits is
    found once, from the result's column names, not once per row."""

    __slots__ = ("_job_columns", "positions")

    def __init__(self, columns: Sequence[str]) -> None:
        #: The position of each column in a row, by name.
        self.positions: dict[str, int] = {name: i for i, name in enumerate(columns)}
        if len(self.positions) != len(columns):
            raise ValueError(f"job rows name a column twice: {list(columns)}")
        missing = [name for name in JOB_COLUMNS if name not in self.positions]
        if missing:
            raise ValueError(f"job rows lack the columns {missing} (they have {list(columns)})")
        self._job_columns = itemgetter(*(self.positions[name] for name in JOB_COLUMNS))

    def job(self, row: Sequence[Any], *, task_identifier: str, queue_name: str | None) -> Job:
        """The Job in ``row``: the one mapping from a row to a Job."""
        (id_, priority, run_at, attempts, max_attempts, last_error, created_at, updated_at, key,
         locked_at, locked_by, revision, flags) = self._job_columns(row)  # fmt: skip
        return Job(
            id=id_,
            task_identifier=task_identifier,
            queue_name=queue_name,
            priority=priority,
            run_at=run_at,
            attempts=attempts,
            max_attempts=max_attempts,
            last_error=last_error,
            created_at=created_at,
            updated_at=updated_at,
            key=key,
            locked_at=locked_at,
            locked_by=locked_by,
            revision=revision,
            flags=flag_names(flags),
        )


def flag_names(flags: object) -> list[str] | None:
    """The flags column as a sorted list: graphile-worker stores an object of flag ->
    true; a hand-written array counts its strings; anything else (a scalar) holds none."""
    if isinstance(flags, dict):
        names = list(flags)
    elif isinstance(flags, list):
        names = [name for name in flags if isinstance(name, str)]
    else:
        return None
    return sorted(names) or None


@cache
def job_row_reader(columns: tuple[str, ...]) -> JobRowReader:
    """The reader of rows with these columns, built once per distinct list of columns."""
    return JobRowReader(columns)
