"""Job: one row of the jobs table as a frozen value, and the one mapping from a row."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
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


def job_from_row(row: Sequence[Any], *, task_identifier: str, queue_name: str | None) -> Job:
    """Build a Job from the columns ``id, priority, run_at, attempts, max_attempts,
    last_error, created_at, updated_at, key, locked_at, locked_by, revision, flags``."""
    (id_, priority, run_at, attempts, max_attempts, last_error, created_at, updated_at, key,
     locked_at, locked_by, revision, flags) = row[:13]  # fmt: skip
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
        flags=sorted(flags) if flags else None,
    )
