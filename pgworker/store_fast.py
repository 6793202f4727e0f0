"""FastEnqueueStatements: the COPY-based insert of a batch of jobs without job keys."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import msgspec
from psycopg import sql

from .errors import JobNotCreatedError
from .job import Job
from .spec import JobSpec
from .store_base import Connection, StoreBase

__all__ = ["FastEnqueueStatements", "NewJob", "requested_job"]

#: graphile-worker's defaults for a job's options left as None.
DEFAULT_MAX_ATTEMPTS = 25
DEFAULT_PRIORITY = 0

_encode = msgspec.json.Encoder().encode


class NewJob(msgspec.Struct, frozen=True):
    """One job of a batch: its task, its payload as JSON text, and its options."""

    identifier: str
    payload: str
    spec: JobSpec


class FastEnqueueStatements(StoreBase):
    """Adds a batch of jobs without keys in one transaction (sql/fast_enqueue.sql): two
    pipelined statements make sure of the task and queue names, send the notification
    and draw the ids, then one COPY writes the rows. The result is what graphile-worker's
    ``add_jobs`` writes (tests/test_fast_enqueue.py compares the two row for row) for a
    fraction of the server's work per job: no job_spec record, no function call, no
    per-row INSERT, and nothing read back but the ids."""

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Connection | None = None) -> list[Job]:
        """Add ``jobs`` (none may have a job_key) and return them in order."""
        if not jobs:
            return []
        if any(new.spec.job_key is not None for new in jobs):
            raise ValueError("a batch with job keys goes through add_jobs, not insert_jobs")
        identifiers = list({new.identifier: None for new in jobs})
        queues = list({new.spec.queue: None for new in jobs if new.spec.queue is not None})
        params = {
            "count": len(jobs),
            "identifiers": identifiers,
            "queue_names": queues,
            "jobs_table": sql.Identifier(self.schema, "_private_jobs").as_string(),
        }
        with self.connection(conn) as c, one_transaction(c):
            with c.pipeline():
                c.execute(self.queries["fast_add_names"], params)
                cur = c.execute(self.queries["fast_add_ids"], params)
            row = cur.fetchone()
            assert row is not None
            added_at, task_ids, queue_ids, ids = row
            missing = [name for name in identifiers if name not in task_ids]
            missing += [name for name in queues if name not in queue_ids]
            if missing or len(ids) != len(jobs):
                raise JobNotCreatedError(f"the batch insert found no row for {missing}")
            columns = CopyColumns.of(jobs)
            copy = sql.Composed([self.queries.composed("fast_copy_jobs"), columns.statement()])
            with c.cursor().copy(copy) as out:
                write = out.write_row
                make_row = columns.row_maker(added_at, task_ids, queue_ids)
                for job_id, new in zip(ids, jobs, strict=True):
                    write(make_row(job_id, new))
        return [
            requested_job(job_id, added_at, new.identifier, new.spec)
            for job_id, new in zip(ids, jobs, strict=True)
        ]


class CopyColumns(msgspec.Struct, frozen=True):
    """Which optional columns a batch sets: a column that no job of the batch sets is left
    out of the COPY (it takes its default); one that some jobs set is written for every
    job, with add_jobs' default where a job leaves it unset."""

    queue: bool
    priority: bool
    run_at: bool
    max_attempts: bool
    flags: bool

    @classmethod
    def of(cls, jobs: Sequence[NewJob]) -> CopyColumns:
        """The columns that ``jobs`` set (one pass over them)."""
        queue = priority = run_at = max_attempts = flags = False
        for new in jobs:
            spec = new.spec
            queue = queue or spec.queue is not None
            priority = priority or spec.priority is not None
            run_at = run_at or spec.run_at is not None
            max_attempts = max_attempts or spec.max_attempts is not None
            flags = flags or bool(spec.flags)
        return cls(queue, priority, run_at, max_attempts, flags)

    def names(self) -> list[str]:
        """The columns of the COPY, in the order of ``row_maker``'s rows."""
        optional = [
            ("job_queue_id", self.queue),
            ("priority", self.priority),
            ("run_at", self.run_at),
            ("max_attempts", self.max_attempts),
            ("flags", self.flags),
        ]
        return ["id", "task_id", "payload", *(name for name, used in optional if used)]

    def statement(self) -> sql.Composed:
        """The column list and the rest of the COPY statement."""
        names = sql.SQL(", ").join(sql.Identifier(name) for name in self.names())
        return sql.Composed([sql.SQL(" ("), names, sql.SQL(") from stdin")])

    def row_maker(
        self, added_at: datetime, task_ids: dict[str, int], queue_ids: dict[str, int]
    ) -> Callable[[int, NewJob], tuple[Any, ...]]:
        """A function from (id, job) to the job's COPY row."""
        queue, priority, run_at, max_attempts, flags = (
            self.queue,
            self.priority,
            self.run_at,
            self.max_attempts,
            self.flags,
        )

        def row(job_id: int, new: NewJob) -> tuple[Any, ...]:
            spec = new.spec
            # add_jobs stores {} for a null payload.
            values: list[Any] = [
                job_id,
                task_ids[new.identifier],
                "{}" if new.payload == "null" else new.payload,
            ]
            if queue:
                values.append(None if spec.queue is None else queue_ids[spec.queue])
            if priority:
                values.append(DEFAULT_PRIORITY if spec.priority is None else spec.priority)
            if run_at:
                values.append(spec.run_at or added_at)
            if max_attempts:
                values.append(spec.max_attempts or DEFAULT_MAX_ATTEMPTS)
            if flags:
                values.append(flags_object(spec.flags))
            return tuple(values)

        return row


def one_transaction(conn: Connection) -> AbstractContextManager[Any]:
    """Run the statements in one transaction: the connection's own when it is not in
    autocommit (a caller's transaction, or a pool connection that commits on return), else
    a transaction of their own, so that the notification never goes out before the rows."""
    return conn.transaction() if conn.autocommit else nullcontext()


def flags_object(flags: Sequence[str] | None) -> str | None:
    """A job's flags as add_jobs stores them: a JSON object of flag -> true, or null."""
    if not flags:
        return None
    return _encode(dict.fromkeys(flags, True)).decode()


def requested_job(job_id: int, added_at: datetime, identifier: str, spec: JobSpec) -> Job:
    """The Job a batch insert or a definer function added, as far as its caller may know
    it: the id comes from the database; every other field is the request, with
    graphile-worker's defaults and the transaction's time (``added_at``) for created_at,
    updated_at and a missing run_at. That is the stored row for a job without a key; a
    keyed job may differ (see docs/permissions.md)."""
    return Job(
        id=job_id,
        task_identifier=identifier,
        queue_name=spec.queue,
        priority=DEFAULT_PRIORITY if spec.priority is None else spec.priority,
        run_at=spec.run_at or added_at,
        attempts=0,
        max_attempts=spec.max_attempts or DEFAULT_MAX_ATTEMPTS,
        last_error=None,
        created_at=added_at,
        updated_at=added_at,
        key=spec.job_key,
        locked_at=None,
        locked_by=None,
        revision=0,
        flags=sorted(set(spec.flags)) if spec.flags else None,
    )
