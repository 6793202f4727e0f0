"""FastEnqueueStatements: the set-based insert of a batch of jobs without job keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import msgspec

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
    """Adds a batch of jobs without keys in one transaction and one round trip
    (sql/fast_enqueue.sql): a statement makes sure of the task and queue names and sends
    the notification, a second inserts the rows from one array per column. The result is
    what graphile-worker's ``add_jobs`` writes (tests/test_fast_enqueue.py compares the
    two row for row) for a fraction of the server's work per job: no job_spec record, no
    function call, no per-row INSERT, and nothing read back but the ids."""

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Connection | None = None) -> list[Job]:
        """Add ``jobs`` (none may have a job_key) and return them in order."""
        if not jobs:
            return []
        if any(new.spec.job_key is not None for new in jobs):
            raise ValueError("a batch with job keys goes through add_jobs, not insert_jobs")
        identifiers = list({new.identifier: None for new in jobs})
        queues = list({new.spec.queue: None for new in jobs if new.spec.queue is not None})
        names = {"count": len(jobs), "identifiers": identifiers, "queue_names": queues}
        rows = column_arrays(jobs)
        with self.connection(conn) as c, c.pipeline(), one_transaction(c):
            with c.pipeline():  # synced on exit: the answer is read before the commit
                c.execute(self.queries["fast_add_names"], names)
                cur = c.execute(self.queries["fast_insert_jobs"], rows)
            row = cur.fetchone()
            assert row is not None
            added_at, ids = row
            if len(ids) != len(jobs):  # a name's row went missing meanwhile: roll back
                raise JobNotCreatedError(f"the batch insert wrote {len(ids)} of {len(jobs)} jobs")
        return [
            requested_job(job_id, added_at, new.identifier, new.spec)
            for job_id, new in zip(ids, jobs, strict=True)
        ]


def column_arrays(jobs: Sequence[NewJob]) -> dict[str, str | None]:
    """The parameters of ``fast_insert_jobs``: each column of the batch as PostgreSQL's
    text form of an array, one element per job (None where no job sets that option, so
    every job takes add_jobs' default). One string per column costs psycopg one value to
    send instead of a list it would inspect item by item."""
    specs = [new.spec for new in jobs]
    queues = [spec.queue for spec in specs]
    priorities = [spec.priority for spec in specs]
    run_ats = [spec.run_at for spec in specs]
    max_attempts = [spec.max_attempts for spec in specs]
    flags = [flags_object(spec.flags) for spec in specs]
    return {
        # add_jobs stores {} for a null payload.
        "payloads": text_array("{}" if new.payload == "null" else new.payload for new in jobs),
        "identifiers": text_array(new.identifier for new in jobs),
        "queue_names": text_array(queues) if any(queues) else None,
        "priorities": number_array(priorities),
        "run_ats": text_array(None if at is None else at.isoformat() for at in run_ats)
        if any(run_ats)
        else None,
        "max_attempts": number_array(max_attempts),
        "flags": text_array(flags) if any(flags) else None,
    }


def text_array(values: Iterable[str | None]) -> str:
    """``values`` as the text form of an array: each one quoted, backslashes and quotes
    escaped; None as NULL."""
    return "{" + ",".join(_quoted(value) for value in values) + "}"


def _quoted(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def number_array(values: Sequence[int | None]) -> str | None:
    """``values`` as the text form of an array of numbers (None as NULL); None when every
    one is None."""
    if all(value is None for value in values):
        return None
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


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
