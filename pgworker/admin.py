"""Admin: what an operator does to jobs (remove, complete, fail, reschedule, unlock, clean up)
and what they read (jobs by state, counts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, get_args

import msgspec

from .errors import ConfigurationError
from .job import Job
from .spec import SMALLINT_MAX, SMALLINT_MIN
from .store import Store

JobState = Literal["waiting", "scheduled", "running", "retrying", "permanently_failed"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)


class ListedJob(msgspec.Struct, frozen=True):
    """A job with its derived state, as ``Admin.jobs`` lists it."""

    job: Job
    state: JobState


class StatRow(msgspec.Struct, frozen=True):
    """How many jobs of one task, in one queue (None: no queue), are in one state."""

    task_identifier: str
    queue_name: str | None
    state: JobState
    count: int


class CleanupResult(msgspec.Struct, frozen=True):
    """How many rows each cleanup step deleted (None: the step did not run)."""

    permanently_failed_jobs: int | None = None
    job_queues: int | None = None
    task_identifiers: int | None = None


class Admin:
    """Operations on jobs for operators and scripts; ``app.admin`` on an open app.

    The functions that change jobs are graphile-worker's SQL functions, so they leave
    alone any job locked in the last 4 hours: a job that is running cannot be completed,
    failed or rescheduled from outside.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- changes ----------------------------------------------------------------------

    def remove_job(self, job_key: str) -> Job | None:
        """Delete the pending job holding ``job_key``; a running one loses its key and will
        not be retried. Returns the job, or None when no job has the key."""
        jobs = self._changed("remove_job", {"job_key": job_key})
        return jobs[0] if jobs else None

    def complete_jobs(self, job_ids: Sequence[int]) -> list[Job]:
        """Delete these jobs as if they had succeeded; returns those deleted."""
        return self._changed("admin_complete_jobs", {"job_ids": list(job_ids)})

    def permanently_fail_jobs(self, job_ids: Sequence[int], reason: str | None = None) -> list[Job]:
        """Use up every attempt of these jobs (they stay, never to run), with ``reason`` as
        ``last_error``; returns those changed."""
        return self._changed("permanently_fail_jobs", {"job_ids": list(job_ids), "reason": reason})

    def reschedule_jobs(
        self,
        job_ids: Sequence[int],
        *,
        run_at: datetime | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        max_attempts: int | None = None,
    ) -> list[Job]:
        """Change these jobs' run_at, priority, attempts or max_attempts; None keeps a
        value, and 0 is a value. Returns the jobs changed."""
        if run_at is not None and run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware")
        for name, value, low in (
            ("priority", priority, SMALLINT_MIN),
            ("attempts", attempts, 0),
            ("max_attempts", max_attempts, 1),
        ):
            if value is not None and not low <= value <= SMALLINT_MAX:
                raise ConfigurationError(
                    f"{name} must be between {low} and {SMALLINT_MAX}, got {value}"
                )
        params = {
            "job_ids": list(job_ids),
            "run_at": run_at,
            "priority": priority,
            "attempts": attempts,
            "max_attempts": max_attempts,
        }
        return self._changed("reschedule_jobs", params)

    def force_unlock_workers(self, worker_ids: Sequence[str]) -> int:
        """Release every job and queue locked by these workers; returns how many jobs they
        held. Only for dead workers: a live one would go on running jobs that others may
        now take too."""
        with self.store.connection() as conn:
            row = conn.execute(
                self.store.queries["force_unlock_workers"], {"worker_ids": list(worker_ids)}
            ).fetchone()
        return int(row[0]) if row else 0

    def cleanup(
        self,
        *,
        delete_permanently_failed_jobs: bool = False,
        gc_job_queues: bool = False,
        gc_task_identifiers: bool = False,
        task_identifiers_to_keep: Sequence[str] = (),
    ) -> CleanupResult:
        """Delete what is no longer needed, in this order: permanently failed jobs, queues
        with no jobs, task identifiers no job uses (unsafe while workers run: they cache
        task ids; keep their identifiers with ``task_identifiers_to_keep``)."""
        counts: dict[str, int] = {}
        queries = self.store.queries
        with self.store.connection() as conn:
            if delete_permanently_failed_jobs:
                cur = conn.execute(queries["delete_permanently_failed_jobs"])
                counts["permanently_failed_jobs"] = cur.rowcount
            if gc_job_queues:
                counts["job_queues"] = conn.execute(queries["gc_job_queues"]).rowcount
            if gc_task_identifiers:
                keep = list(task_identifiers_to_keep)
                counts["task_identifiers"] = conn.execute(
                    queries["gc_task_identifiers"], {"keep": keep}
                ).rowcount
        return CleanupResult(**counts)

    # -- reads ------------------------------------------------------------------------

    def jobs(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        job_key: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
    ) -> list[ListedJob]:
        """Jobs matching every filter given, oldest first, at most ``limit``."""
        if state is not None and state not in JOB_STATES:
            raise ConfigurationError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, got {limit}")
        return self._list(task=task, queue=queue, job_key=job_key, state=state, limit=limit)

    def job(self, job_id: int) -> ListedJob | None:
        """One job by id, or None."""
        found = self._list(job_id=job_id, limit=1)
        return found[0] if found else None

    def payload(self, job_id: int) -> Any:
        """The decoded JSON payload of one job, or None if there is no such job."""
        with self.store.connection() as conn:
            row = conn.execute(self.store.queries["job_payload"], {"job_id": job_id}).fetchone()
        return None if row is None else msgspec.json.decode(row[0])

    def stats(self) -> list[StatRow]:
        """Job counts by task, queue and state. Counts every job: fine for an operator,
        too heavy to poll on a large table."""
        with self.store.connection() as conn:
            rows = conn.execute(self.store.queries["job_stats"]).fetchall()
        return [StatRow(task, queue, state, count) for task, queue, state, count in rows]

    # -- helpers ----------------------------------------------------------------------

    def _changed(self, query: str, params: dict[str, Any]) -> list[Job]:
        with self.store.connection() as conn:
            rows, reader = self.store.fetch_job_rows(conn, query, params)
            return self.store.jobs_from_rows(rows, reader, conn)

    def _list(self, **filters: Any) -> list[ListedJob]:
        params = {"task": None, "queue": None, "job_key": None, "job_id": None, "state": None}
        params.update(filters)
        with self.store.connection() as conn:
            rows, reader = self.store.fetch_job_rows(conn, "list_jobs", params)
        task, queue, state = (
            reader.positions[c] for c in ("task_identifier", "queue_name", "state")
        )
        return [
            ListedJob(reader.job(row, task_identifier=row[task], queue_name=row[queue]), row[state])
            for row in rows
        ]
