"""FastEnqueueStatements: the set-based insert of a batch of jobs without job keys."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import msgspec

from .errors import JobNotCreatedError, PayloadError
from .job import Job
from .payload import count_values
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
    the notification, a second inserts the rows from the payloads' JSON array and, for
    each other column, one value for the whole batch or an array of one per job. The
    result is what graphile-worker's ``add_jobs`` writes (tests/test_fast_enqueue.py
    compares the two row for row) for a fraction of the server's work per job: no
    job_spec record, no function call, no per-row INSERT, and nothing read back but the
    ids."""

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Connection | None = None) -> list[Job]:
        """Add ``jobs`` (none may have a job_key) and return them in order."""
        if not jobs:
            return []
        if any(new.spec.job_key is not None for new in jobs):
            raise ValueError("a batch with job keys goes through add_jobs, not insert_jobs")
        payloads = (
            "[" + ",".join("{}" if new.payload == "null" else new.payload for new in jobs) + "]"
        )
        values = count_values(payloads)
        if values is not None and values != len(jobs):  # no JSON: the server says where
            raise PayloadError(
                f"the batch's {len(jobs)} payloads hold {values} JSON values: a payload must "
                "be exactly one (a msgspec.Raw holding several?)"
            )
        identifiers = list({new.identifier: None for new in jobs})
        queues = list({new.spec.queue: None for new in jobs if new.spec.queue is not None})
        params = {"payloads": payloads, **batch_columns(jobs)}
        added_at, ids = self._insert(
            "fast_insert_jobs", params, identifiers, queues, len(jobs), conn
        )
        return [
            requested_job(job_id, added_at, new.identifier, new.spec)
            for job_id, new in zip(ids, jobs, strict=True)
        ]

    def insert_uniform(
        self,
        identifier: str,
        spec: JobSpec,
        payloads: str,
        count: int,
        *,
        conn: Connection | None = None,
    ) -> list[Job]:
        """Add ``count`` jobs of task ``identifier``, all with the options ``spec`` (no
        job_key), whose payloads are the elements of ``payloads``, a JSON array text
        (none of them null); return them in order. What ``defer_many`` adds: nothing
        per job is sent but its payload."""
        if spec.job_key is not None:
            raise ValueError("a batch with job keys goes through add_jobs, not insert_uniform")
        if not count:
            return []
        params = {
            "payloads": payloads,
            "identifier": identifier,
            "queue_name": spec.queue,
            "priority": spec.priority,
            "run_at": spec.run_at,
            "max_attempts": spec.max_attempts,
            "flags": flags_object(spec.flags),
        }
        queues = [] if spec.queue is None else [spec.queue]
        added_at, ids = self._insert(
            "fast_insert_uniform", params, [identifier], queues, count, conn
        )
        return [requested_job(job_id, added_at, identifier, spec) for job_id in ids]

    def _insert(
        self,
        statement: str,
        params: Mapping[str, object],
        identifiers: list[str],
        queues: list[str],
        count: int,
        conn: Connection | None,
    ) -> tuple[datetime, list[int]]:
        """Run the names statement and ``statement`` (an insert) in one transaction;
        return its now() and the ids."""
        names = {"count": count, "identifiers": identifiers, "queue_names": queues}
        with self.connection(conn) as c, c.pipeline(), one_transaction(c):
            with c.pipeline():  # synced on exit: the answer is read before the commit
                c.execute(self.queries["fast_add_names"], names)
                cur = c.execute(self.queries[statement], params)
            row = cur.fetchone()
            assert row is not None
            added_at, ids = row
            if len(ids) != count:  # a name's row went missing meanwhile: roll back
                raise JobNotCreatedError(f"the batch insert wrote {len(ids)} of {count} jobs")
        return added_at, ids


#: The columns of ``fast_insert_jobs`` besides the payload, each sent as one value for
#: the whole batch (``name``) or as an array of one per job (``name_each``).
_COLUMNS = ("identifier", "queue_name", "priority", "run_at", "max_attempts", "flags")


def batch_columns(jobs: Sequence[NewJob]) -> dict[str, object]:
    """The column parameters of ``fast_insert_jobs`` for ``jobs``: a column whose value
    every job shares goes as that one value, any other as PostgreSQL's text form of an
    array with one element per job (None as NULL: that job takes add_jobs' default)."""
    specs = [new.spec for new in jobs]
    columns: list[tuple[list[Any], Callable[[list[Any]], str]]] = [
        ([new.identifier for new in jobs], text_array),
        ([spec.queue for spec in specs], text_array),
        ([spec.priority for spec in specs], number_array),
        ([spec.run_at for spec in specs], timestamp_array),
        ([spec.max_attempts for spec in specs], number_array),
        ([flags_object(spec.flags) for spec in specs], text_array),
    ]
    params: dict[str, object] = {}
    for name, (values, as_array) in zip(_COLUMNS, columns, strict=True):
        first = values[0]
        shared = all(value == first for value in values)
        params[name] = first if shared else None
        params[f"{name}_each"] = None if shared else as_array(values)
    return params


def text_array(values: Iterable[str | None]) -> str:
    """``values`` as the text form of an array: each one quoted, backslashes and quotes
    escaped; None as NULL."""
    return "{" + ",".join(_quoted(value) for value in values) + "}"


def _quoted(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def number_array(values: Iterable[int | None]) -> str:
    """``values`` as the text form of an array of numbers (None as NULL)."""
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def timestamp_array(values: Iterable[datetime | None]) -> str:
    """``values`` as the text form of an array of timestamps (ISO 8601; None as NULL)."""
    return text_array(None if at is None else at.isoformat() for at in values)


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
