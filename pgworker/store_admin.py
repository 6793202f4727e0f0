"""AdminStatements: the store's statements behind the admin API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .admin import CleanupResult, JobState, ListedJob, StatRow
from .job import Job
from .store_base import StoreBase


class AdminStatements(StoreBase):
    """The statements ``Admin`` runs: graphile-worker's admin functions, cleanup, and the
    reads of jobs, payloads and counts. ``Admin`` checks the arguments first."""

    def remove_job(self, job_key: str) -> Job | None:
        """Delete the pending job holding ``job_key`` (a running one loses its key instead);
        the job, or None when no job has the key."""
        jobs = self._changed_jobs("remove_job", {"job_key": job_key})
        return jobs[0] if jobs else None

    def admin_complete_jobs(self, job_ids: Sequence[int]) -> list[Job]:
        """Delete these jobs through ``complete_jobs``, unless locked in the last 4 hours;
        the jobs deleted."""
        return self._changed_jobs("admin_complete_jobs", {"job_ids": list(job_ids)})

    def permanently_fail_jobs(self, job_ids: Sequence[int], reason: str | None) -> list[Job]:
        """Use up every attempt of these jobs with ``reason`` as last_error, unless locked in
        the last 4 hours; the jobs changed."""
        params = {"job_ids": list(job_ids), "reason": reason}
        return self._changed_jobs("permanently_fail_jobs", params)

    def reschedule_jobs(
        self,
        job_ids: Sequence[int],
        *,
        run_at: datetime | None,
        priority: int | None,
        attempts: int | None,
        max_attempts: int | None,
    ) -> list[Job]:
        """Change these jobs' run_at, priority, attempts or max_attempts (None keeps a
        value), unless locked in the last 4 hours; the jobs changed."""
        params = {
            "job_ids": list(job_ids),
            "run_at": run_at,
            "priority": priority,
            "attempts": attempts,
            "max_attempts": max_attempts,
        }
        return self._changed_jobs("reschedule_jobs", params)

    def existing_job_ids(self, job_ids: Sequence[int]) -> set[int]:
        """Those of these ids that name a job."""
        with self.connection() as conn:
            rows = conn.execute(
                self.queries["existing_job_ids"], {"job_ids": list(job_ids)}
            ).fetchall()
        return {row[0] for row in rows}

    def force_unlock_workers(self, worker_ids: Sequence[str]) -> int:
        """Release every job and queue locked by these workers; how many jobs they held."""
        with self.connection() as conn:
            row = conn.execute(
                self.queries["force_unlock_workers"], {"worker_ids": list(worker_ids)}
            ).fetchone()
        return int(row[0]) if row else 0

    def cleanup(
        self,
        *,
        delete_permanently_failed_jobs: bool,
        gc_job_queues: bool,
        gc_task_identifiers: bool,
        task_identifiers_to_keep: Sequence[str],
    ) -> CleanupResult:
        """Run the cleanup steps asked for, in order, in one transaction; how many rows
        each deleted."""
        counts: dict[str, int] = {}
        with self.connection() as conn:
            if delete_permanently_failed_jobs:
                cur = conn.execute(self.queries["delete_permanently_failed_jobs"])
                counts["permanently_failed_jobs"] = cur.rowcount
            if gc_job_queues:
                counts["job_queues"] = conn.execute(self.queries["gc_job_queues"]).rowcount
            if gc_task_identifiers:
                keep = list(task_identifiers_to_keep)
                counts["task_identifiers"] = conn.execute(
                    self.queries["gc_task_identifiers"], {"keep": keep}
                ).rowcount
        return CleanupResult(**counts)

    def list_jobs(
        self,
        *,
        task: str | None = None,
        queue: str | None = None,
        job_key: str | None = None,
        job_id: int | None = None,
        state: JobState | None = None,
        limit: int,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[ListedJob]:
        """Jobs matching every filter given, with their derived state, oldest first (or
        newest first), ``limit`` of them from ``offset`` on."""
        params = {
            "task": task,
            "queue": queue,
            "job_key": job_key,
            "job_id": job_id,
            "state": state,
            "limit": limit,
            "offset": offset,
            "newest_first": newest_first,
        }
        with self.connection() as conn:
            rows, reader = self._fetch_job_rows(conn, "list_jobs", params)
        task_name, queue_name, state_name = (
            reader.positions[column] for column in ("task_identifier", "queue_name", "state")
        )
        return [
            ListedJob(
                reader.job(row, task_identifier=row[task_name], queue_name=row[queue_name]),
                row[state_name],
            )
            for row in rows
        ]

    def job_payload(self, job_id: int) -> str | None:
        """The payload of one job as JSON text, or None if there is no such job."""
        with self.connection() as conn:
            row = conn.execute(self.queries["job_payload"], {"job_id": job_id}).fetchone()
        return None if row is None else str(row[0])

    def job_payloads(self, job_ids: Sequence[int]) -> dict[int, str]:
        """The payloads of these jobs as JSON text, by id (missing ids left out)."""
        with self.connection() as conn:
            rows = conn.execute(self.queries["job_payloads"], {"job_ids": list(job_ids)})
            return {int(job_id): str(payload) for job_id, payload in rows}

    def drop_schema(self) -> None:
        """Drop the worker schema and everything in it (for throwaway test schemas)."""
        with self.connection() as conn:
            conn.execute(self.queries["drop_schema"])

    def job_stats(self) -> list[StatRow]:
        """Job counts by task, queue and state (every job is counted)."""
        with self.connection() as conn:
            rows = conn.execute(self.queries["job_stats"]).fetchall()
        return [StatRow(task, queue, state, count) for task, queue, state, count in rows]

    def _changed_jobs(self, query: str, params: dict[str, Any]) -> list[Job]:
        """Run one of the admin functions that return the jobs they changed."""
        with self.connection() as conn:
            rows, reader = self._fetch_job_rows(conn, query, params)
            return self._jobs_from_rows(rows, reader, conn)
