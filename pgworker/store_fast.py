"""FastEnqueueStatements: the set-based insert of a batch of jobs without job keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .errors import JobNotCreatedError
from .job import JOB_COLUMNS, Job, job_row_reader
from .spec import JobSpec
from .store_base import Connection, StoreBase

__all__ = ["FastEnqueueStatements", "NewJob"]

_encode = msgspec.json.Encoder().encode
_READER = job_row_reader(JOB_COLUMNS)


class NewJob(msgspec.Struct, frozen=True):
    """One job of a batch: its task, its payload as JSON text, and its options."""

    identifier: str
    payload: str
    spec: JobSpec


class FastEnqueueStatements(StoreBase):
    """Adds a batch of jobs without keys in two pipelined statements (sql/fast_enqueue.sql)
    that write what graphile-worker's ``add_jobs`` writes (tests/test_fast_enqueue.py
    compares the two row for row) with less work per job: no job_spec record per job, no
    function call, no lookup of names for the returned jobs."""

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Connection | None = None) -> list[Job]:
        """Add ``jobs`` (none may have a job_key) and return them in order."""
        if not jobs:
            return []
        columns = batch_columns(jobs)
        with self.connection(conn) as c:
            with c.pipeline():
                c.execute(self.queries["fast_add_names"], columns)
                cur = c.execute(self.queries["fast_add_jobs"], columns)
            rows = cur.fetchall()
        if len(rows) != len(jobs):
            raise JobNotCreatedError(f"the batch insert created {len(rows)} of {len(jobs)} jobs")
        job = _READER.job
        return [
            job(row, task_identifier=new.identifier, queue_name=new.spec.queue)
            for row, new in zip(rows, jobs, strict=True)
        ]


def batch_columns(jobs: Sequence[NewJob]) -> dict[str, Any]:
    """The parameters of the two statements: the distinct names, and the jobs as one
    JSON array of job_spec-like objects (a field left out or null takes add_jobs'
    default)."""
    if any(new.spec.job_key is not None for new in jobs):
        raise ValueError("a batch with job keys goes through add_jobs, not insert_jobs")
    identifiers = list({new.identifier: None for new in jobs})
    queues = list({new.spec.queue: None for new in jobs if new.spec.queue is not None})
    return {
        "count": len(jobs),
        "identifiers": identifiers,
        "queue_names": queues,
        "specs": _encode([spec_object(new) for new in jobs]).decode(),
    }


def spec_object(new: NewJob) -> dict[str, Any]:
    """One job of the JSON array; only the options that are set."""
    spec = new.spec
    record: dict[str, Any] = {"identifier": new.identifier, "payload": msgspec.Raw(new.payload)}
    if spec.queue is not None:
        record["queue_name"] = spec.queue
    if spec.run_at is not None:
        record["run_at"] = spec.run_at
    if spec.max_attempts is not None:
        record["max_attempts"] = spec.max_attempts
    if spec.priority is not None:
        record["priority"] = spec.priority
    if spec.flags is not None:
        record["flags"] = list(spec.flags)
    return record
